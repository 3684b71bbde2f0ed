"""Data preparation past one process: the import and the feature cache as Beam pipelines.

  elements.py    one input -> its samples, with the importers' own functions (no Beam)
  shards.py      sharded TFRecords written per key, committed by one manifest (no Beam)
  beam_import.py `soundloc-import --runner=...`: list, import per element, write, commit
  beam_cache.py  the frozen towers once per worker over batched records, the cache layout

Apache Beam is an optional extra (`pip install -e .[beam]`): only beam_import.py and
beam_cache.py import it, and only when a pipeline is built. docs/BEAM.md says when to
reach for it and how to run it.
"""
