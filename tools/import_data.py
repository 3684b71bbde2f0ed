"""Imports a data set, the user's videos or composite scenes into soundloc records.

  python -m tools.import_data --format=flickr --input=/data/Flickr-SoundNet \
      --ids=/data/flickr_test.csv --output=records/flickr_test
  python -m tools.import_data --format=videos --input=~/my_videos --output=records/mine \
      --pairs_per_clip=3
  python -m tools.import_data --format=composites --input=../shared/realsets/stamps \
      --output=records/composites --count=5000
  python -m tools.import_data --format=mosaics --input=../shared/realsets/photos \
      --output=records/mosaics_val0 --folds=3 --fold=0 --split=validation --count=200

Audio is stored at --sample_rate for --clip_seconds (defaults: the paper's
22,050 Hz and 20 s; the reader resamples and crops for other presets).  A
progress bar goes to stderr; the summary (imported, skipped by reason, and
every skipped path) is printed and stored in the manifest.  See docs/DATA.md.

With --runner the import runs as an Apache Beam pipeline (videos, composites, mosaics,
photos; `pip install -e .[beam]`), and every --flag=value this tool does not define goes to
Beam's pipeline options (docs/BEAM.md):

  python -m tools.import_data --format=videos --input=~/my_videos --output=records/mine \
      --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from . import common

flags.DEFINE_enum("format", None, ["flickr", "vggss", "avsbench_s4", "videos", "composites",
                                   "mosaics", "photos"],
                  "Input layout (docs/DATA.md).")
flags.DEFINE_string("input", None, "The data set's root folder (or the videos/stamps folder).")
flags.DEFINE_string("output", None, "New record directory (must not hold records yet).")
flags.DEFINE_integer("sample_rate", 22050, "Audio rate stored in the records (Hz).",
                     lower_bound=4000, upper_bound=192000)
flags.DEFINE_float("clip_seconds", 20.0, "Audio length stored per sample (cropped around the "
                   "centre or the frame's time, zero-padded).")
flags.DEFINE_integer("samples_per_shard", 1000, "Records per TFRecord shard.")
flags.DEFINE_string("ids", None, "flickr: id list (.txt one per line, or .csv first column).")
flags.DEFINE_boolean("require_annotation", False, "flickr: skip ids without an XML.")
flags.DEFINE_string("annotation", None, "vggss: the vggss.json path (default <input>/vggss.json).")
flags.DEFINE_integer("pairs_per_clip", 1, "videos: frame/sound pairs per clip, evenly spaced.")
flags.DEFINE_integer("count", 1000, "composites, mosaics, photos: number of scenes.")
flags.DEFINE_integer("image_size", 256, "composites, mosaics, photos: side of the square "
                     "scenes.")
flags.DEFINE_integer("seed", 0, "composites, mosaics, photos: scene stream (use another seed "
                     "for a test split).")
flags.DEFINE_float("label_fraction", 1.0, "composites, mosaics, photos: fraction of scenes "
                   "marked labeled.")
flags.DEFINE_integer("max_objects", 3, "composites: objects per scene, at most.")
flags.DEFINE_boolean("blend_edges", False, "composites: paste with a feathered matte and the "
                     "background's colour and sharpness, so a seam does not give the object "
                     "away (the plain paste is the default).")
flags.DEFINE_integer("grid", 2, "mosaics: tiles per side (2: four photos).")
flags.DEFINE_integer("folds", 0, "mosaics, photos: leave-photos-out folds (0: every photo); "
                     "composites: with --holdout_photos, leave out that fold's recordings.")
flags.DEFINE_integer("fold", 0, "mosaics, photos, composites: which fold (0-based).")
flags.DEFINE_enum("split", "train", ["train", "validation"], "mosaics, photos: the fold's "
                  "validation photos and recordings, or every other (augmented).")
flags.DEFINE_string("holdout_photos", None, "composites: a photos folder whose --fold's "
                    "validation recordings must not appear in these scenes.")
flags.DEFINE_string("report", None, "Also write the import report as JSON here.")
flags.DEFINE_string("runner", None, "Run as an Apache Beam pipeline on this runner "
                    "(DirectRunner here; DataflowRunner, FlinkRunner, SparkRunner elsewhere); "
                    "unset: one process, as always.")
flags.mark_flags_as_required(["format", "input", "output"])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    from soundloc_tf.dataloaders import importers  # after flag parsing: TF start-up is slow

    options = {"flickr": {"ids": FLAGS.ids, "require_annotation": FLAGS.require_annotation},
               "vggss": {"annotation": FLAGS.annotation},
               "avsbench_s4": {},
               "videos": {"pairs_per_clip": FLAGS.pairs_per_clip},
               "composites": {"count": FLAGS.count, "image_size": FLAGS.image_size,
                              "seed": FLAGS.seed, "label_fraction": FLAGS.label_fraction,
                              "max_objects": FLAGS.max_objects,
                              "blend_edges": FLAGS.blend_edges,
                              "holdout_photos": FLAGS.holdout_photos, "folds": FLAGS.folds,
                              "fold": FLAGS.fold}}.get(FLAGS.format)
    if options is None:  # mosaics, photos
        options = {"count": FLAGS.count, "image_size": FLAGS.image_size, "seed": FLAGS.seed,
                   "label_fraction": FLAGS.label_fraction, "grid": FLAGS.grid,
                   "folds": FLAGS.folds, "fold": FLAGS.fold, "split": FLAGS.split}
    source = os.path.expanduser(FLAGS.input)
    report = importers.ImportReport(FLAGS.format)
    try:
        if FLAGS.runner:
            from soundloc_tf.pipelines import beam_import, elements

            settings = elements.ImportSettings(FLAGS.format, source, FLAGS.sample_rate,
                                               FLAGS.clip_seconds, options)
            report, summary = beam_import.run_beam_import(
                settings, FLAGS.output, [f"--runner={FLAGS.runner}", *BEAM_ARGS],
                samples_per_shard=FLAGS.samples_per_shard)
        else:
            report, summary = importers.run_import(
                FLAGS.format, source, FLAGS.output, sample_rate=FLAGS.sample_rate,
                clip_seconds=FLAGS.clip_seconds, samples_per_shard=FLAGS.samples_per_shard,
                report=report, **options)
    except ValueError:
        if report.imported or report.skipped:
            print(report.summary(), file=sys.stderr)
        raise
    print(report.summary())
    print(f"Wrote {summary.count} samples ({summary.labeled} labeled) in {len(summary.shards)} "
          f"shard(s), {summary.bytes / 1e6:.1f} MB ({summary.bytes / summary.count / 1e3:.1f} "
          f"kB/sample), to {FLAGS.output}")
    if FLAGS.report:
        with open(FLAGS.report, "w") as f:
            json.dump(report.as_dict(), f, indent=1)


# Beam's own options (--direct_num_workers=2, --project=...), taken off the command line
# before absl parses it.
BEAM_ARGS: list[str] = []


def _split_beam_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """With --runner, the --name=value arguments this tool does not define go to Beam."""
    if not any(arg.startswith("--runner") for arg in argv):
        return argv, []
    ours, beam = argv[:1], []
    for arg in argv[1:]:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        known = name is not None and (name in FLAGS or name.removeprefix("no") in FLAGS)
        (beam if name and not known and "=" in arg else ours).append(arg)
    return ours, beam


def run() -> None:
    sys.argv, BEAM_ARGS[:] = _split_beam_args(sys.argv)
    common.run_tool(main)


if __name__ == "__main__":
    run()
