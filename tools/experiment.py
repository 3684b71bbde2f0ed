"""Experiments, one command each: train every run (Trainer), evaluate, write JSON + markdown.

  python -m tools.experiment --name=label_sweep  --output_dir=results/label_sweep  [--quick]
  python -m tools.experiment --name=superstition --output_dir=results/superstition [--quick]
      [--confound=1.0 --object_identity=0.25 --max_objects=1 --cue_size=0.25]
  python -m tools.experiment --name=real_material --output_dir=results/real_material [--quick]

  python -m tools.experiment --name=real_photos --output_dir=results/real_photos [--quick]
  python -m tools.experiment --name=within_category --output_dir=results/within_category \
      [--photos=DIR,DIR] [--quick]

Each experiment's settings (preset, scales, seeds, runs), with what it measures, its command
and its cost, are a small file in soundloc_tf/experiments/; the library runs them
(soundloc_tf/experiments/launch.py: the sweeps, photo_folds, within_category), this tool only
parses the flags.

Writes <output_dir>/<name>.json and <name>.md (refreshed after every run),
plots, and one directory per run under <output_dir>/runs/ (checkpoints,
TensorBoard, metrics.json, evaluation plots). Re-running the same command
resumes: finished runs (metrics.json present) are skipped and an interrupted
run continues from its last checkpoint, so a long sweep can run in the
background (nohup ... &) and be restarted at will. Every config field is also
a flag (e.g. --train_steps, --batch_size); the scale (--quick or full) and
the run's own settings are applied on top of the preset, flags on top of
the scale, and the run's swept fields last.
"""

from __future__ import annotations

import shlex
import sys
import typing
from typing import Any

from absl import flags

from soundloc_tf.experiments import launch

from . import common

flags.DEFINE_enum("name", None, list(launch.EXPERIMENTS), "Which experiment.", required=True)
flags.DEFINE_string("output_dir", None, "Where the runs, the JSON and the markdown go.",
                    required=True)
flags.DEFINE_boolean("quick", False, "Quick scale, seed 0 (minutes: the pipeline runs). "
                     "Default: full scale, the seeds of the experiment's settings "
                     "(soundloc_tf/experiments/<name>.py).")
flags.DEFINE_list("seeds", None, "Seeds (model initialisation and training scenes); each run "
                  "is repeated per seed and tables give mean ± sd. Default: by scale.")
flags.DEFINE_list("runs", None, "Only these runs (keys as in the tables' JSON, e.g. "
                  "semi_infonce@0.1); default: all of the experiment's runs.")
flags.DEFINE_string("train_records", None, "real_material: training records (directory or "
                    "shard pattern); default: composites built into <output_dir>/data/train.")
flags.DEFINE_string("test_records", None, "real_material: test records; default: composites "
                    "built into <output_dir>/data/test.")
flags.DEFINE_string("stamps", launch.sweeps.STAMPS_DIR, "real_material: the stamps folder "
                    "(objects, sounds, backgrounds) the composites are built from.")
flags.DEFINE_list("photos", [launch.sweeps.PHOTOS_DIR], "real_photos, within_category: "
                  "the whole photos with boxes and their recordings (photos/, sounds/, "
                  "manifest.json); within_category merges several, comma-separated.")
flags.DEFINE_boolean("summarize_only", False, "Train nothing: rewrite the JSON, markdown and "
                     "plots from the runs that finished (e.g. after the code or the preset "
                     "changed); the tables then state the finished runs' own configuration.")
flags.DEFINE_integer("num_cases", 8, "Best and worst cases each in every run's overlay plot "
                     "(0: no per-run plots).", lower_bound=0)
common.define_config_flags()
FLAGS = flags.FLAGS


def _explicit_overrides() -> dict[str, Any]:
    """Config fields given on the command line, parsed like tools/common.config_from_flags."""
    from soundloc_tf import config as config_lib

    hints = typing.get_type_hints(config_lib.Config)
    overrides = {}
    for name in common.overridden_fields():
        value = FLAGS[name].value
        if hints[name] not in (bool, int, float, str):
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise ValueError(f"--{name} takes comma-separated integers. "
                                 f"Received: {','.join(value)}") from None
        overrides[name] = value
    return overrides


def main(argv: list[str]) -> None:
    try:
        seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else None
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers. Received: "
                         f"{','.join(FLAGS.seeds)}") from None
    print(launch.run_named(launch.Launch(
        FLAGS.name, FLAGS.output_dir,
        "python -m tools.experiment " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        quick=FLAGS.quick, preset=FLAGS.preset if FLAGS["preset"].present else None,
        overrides=_explicit_overrides(), seeds=seeds, runs=FLAGS.runs,
        photos=tuple(FLAGS.photos), stamps=FLAGS.stamps, train_records=FLAGS.train_records,
        test_records=FLAGS.test_records, summarize_only=FLAGS.summarize_only,
        num_cases=FLAGS.num_cases)))


def run() -> None:
    common.run_tool(main, interrupted=common.INTERRUPTED_RESUMABLE)


if __name__ == "__main__":
    run()
