"""soundloc-studio: label imported pairs and see where the model hears the sound, in a browser.

  soundloc-studio --records=records/my_videos [--server=http://localhost:8501]

`app` is the WSGI application and its waitress server; `pairs` reads a record
directory for the page (frames and sounds, no re-encoding of the records);
`localize` asks a TF Serving REST endpoint (the real server or
soundloc-dev-server) for heat maps: it knows the model only through the
SavedModel's `serving_default` signature.  The labels go to the annotation
layer (`soundloc_tf.dataloaders.annotations`) that `soundloc-train --annotations` reads.
The page itself is plain HTML/JS/CSS under static/, served as is.
"""
