"""Label imported pairs and see where the model hears the sound, in the browser.

  soundloc-studio --records=records/my_videos [--server=http://localhost:8501] [--port=8600]

Serves a page on 127.0.0.1.  Annotate: the record directory's frames and
sounds, boxes drawn with the mouse, saved to <records>/annotations.json (the
records are never rewritten), which `soundloc-train --records=...
--annotations=<records>/annotations.json` trains on.  Localise: an image and a
sound, or a video, sent to the model served at --server (TF Serving's REST
API, or soundloc-dev-server), with the heat map, box and score drawn over it.
"""

from __future__ import annotations

from absl import flags

from . import common

flags.DEFINE_string("records", None, "The record directory whose pairs are labelled.")
flags.DEFINE_string("server", "http://localhost:8501", "TF Serving's REST address (or "
                    "soundloc-dev-server's) for the localise page.")
flags.DEFINE_string("model_name", "soundloc", "The served model's name.")
flags.DEFINE_string("annotations", None, "The annotation layer file. Default: "
                    "annotations.json beside the records.")
flags.DEFINE_integer("port", 8600, "Port on 127.0.0.1 (0: any free one).", lower_bound=0,
                     upper_bound=65535)
flags.DEFINE_boolean("quiet", False, "No request log on stderr.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if not FLAGS.records:
        raise ValueError("--records is required: the record directory to label (made by "
                         "soundloc-import). Received: no --records")
    # Imported after flag parsing: it imports TensorFlow.
    from soundloc_tf.serving.studio.app import StudioServer

    studio = StudioServer(FLAGS.records, FLAGS.server, FLAGS.annotations, FLAGS.model_name,
                          port=FLAGS.port, quiet=FLAGS.quiet)
    app = studio.app
    print(f"soundloc-studio at {studio.url}  ({len(app.pairs)} pairs in {app.pairs.directory}; "
          f"labels in {app.annotations_path}; model at {app.localizer.server})", flush=True)
    try:
        studio.serve_forever()
    finally:
        studio.stop()


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
