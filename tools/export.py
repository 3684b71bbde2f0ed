"""Exports a trained run as a TensorFlow Serving SavedModel.

  soundloc-export --workdir=runs/tiny --export_base=exports [--model_name=soundloc]
                  [--version=N] [--heatmap_size=224]

Writes <export_base>/<model_name>/<version>/ (version: the next integer by
default) with the signatures `serving_default` (JPEG/PNG + WAV bytes) and
`serving_tensors` (decoded arrays); see soundloc_tf/inference/export.py and
serving/README.md.  Serve it with:

  docker run -p 8501:8501 --mount type=bind,source=$PWD/exports/soundloc,target=/models/soundloc \
      -e MODEL_NAME=soundloc -t tensorflow/serving
"""

from __future__ import annotations

import os
import time

from absl import flags

from . import common

flags.DEFINE_string("workdir", None, "Run directory written by soundloc-train.", required=True)
flags.DEFINE_string("export_base", "exports", "Base directory; the model goes to "
                    "<export_base>/<model_name>/<version>/.")
flags.DEFINE_string("model_name", "soundloc", "Model name: the directory under --export_base "
                    "and the name in TF Serving URLs.")
flags.DEFINE_integer("version", None, "Version number (default: one more than the largest "
                     "existing version, or 1); at most 2**63 - 1, the int64 TF Serving "
                     "addresses versions with (gRPC's Int64Value).", lower_bound=1,
                     upper_bound=2 ** 63 - 1)
flags.DEFINE_integer("heatmap_size", None, "Side of the returned heat map (default: the run's "
                     "eval_size).", lower_bound=8, upper_bound=1024)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if not os.path.isfile(os.path.join(FLAGS.workdir, "config.json")):
        raise ValueError(f"no training run found (config.json is missing). Received: "
                         f"workdir={FLAGS.workdir!r}")
    from soundloc_tf.inference import export  # after the checks: TF start-up is slow

    started = time.perf_counter()
    path = export.export_run(FLAGS.workdir, FLAGS.export_base, FLAGS.model_name, FLAGS.version,
                             FLAGS.heatmap_size)
    info = export.read_export_info(path)
    print(f"Exported step {info.get('step')} of {FLAGS.workdir} to {path} in "
          f"{time.perf_counter() - started:.1f} s")
    for name, signature in info["signatures"].items():
        inputs = ", ".join(f"{k} {d}{s}" for k, (d, s) in signature["inputs"].items())
        outputs = ", ".join(f"{k} {d}{s}" for k, (d, s) in signature["outputs"].items())
        print(f"  {name}: {inputs} -> {outputs}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
