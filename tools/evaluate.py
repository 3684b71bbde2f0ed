"""Evaluates a trained run on held-out scenes (a seed never used in training) or TFRecords.

  soundloc-evaluate --workdir=runs/tiny [--rule=fixed|median|top50] [--negatives] [--plots]
                    [--protocol=fixed|lvs|ezvsl|slavc|vssl_eval] [--annotation=flickr|vggss]
                    [--records='data/test-*.tfrecord' [--test_list=flickr250|flickr249|vggss
                     [--test_list_ids=metadata/flickr_test.csv]]]

Writes <output_dir>/metrics.json (default <workdir>/eval): cIoU@0.5, mean
cIoU, AUC and pointing game on the attention map under the chosen binarising
rule, the same under all three rules (`by_rule`), the whole-image, centre-box
and random-box baselines, the mismatched-sound run and the audio-dependence
gap, per-class results when class ids are known, where the map peak falls
when scenes carry a context cue, and with --negatives the separation of
positives from silence, white noise and off-screen sounds (AP, max-F1).
The headline numbers follow --protocol (soundloc's `fixed` rule or a peer's
evaluation code, docs/PROTOCOLS.md), named in the JSON (`protocol`) and the
table; every protocol's numbers are under `by_protocol`, and with --negatives
SLAVC's AP/F1/precision and vssl_eval's pIA/AOC under `negatives_by_protocol`.
Also an overlay grid PNG, with --plots the success-rate curve, best/worst
cases, per-class bars and score distributions (also as TensorBoard images
under <output_dir>/tensorboard), and prints a table.
"""

from __future__ import annotations

import sys

from absl import flags

from . import common

flags.DEFINE_string("workdir", None, "Run directory written by soundloc-train.", required=True)
flags.DEFINE_enum("rule", "fixed", ["fixed", "median", "top50"],
                  "Binarising rule of the headline numbers: fixed threshold "
                  "(config.ciou_threshold), LVS median, EZ-VSL top 50%. All three are always "
                  "reported under by_rule.")
flags.DEFINE_enum("protocol", "fixed", ["fixed", "lvs", "ezvsl", "slavc", "vssl_eval"],
                  "Scoring protocol of the headline numbers: soundloc's fixed rule or a peer's "
                  "evaluation code (docs/PROTOCOLS.md). All are reported under by_protocol.")
flags.DEFINE_enum("annotation", None, ["flickr", "vggss"], "Box format the peers' loaders "
                  "assume (Flickr consensus or VGG-SS boxes). Default: vggss for records "
                  "imported from vggss, else flickr.")
flags.DEFINE_enum("test_list", None, ["flickr250", "flickr249", "vggss"], "Score only this "
                  "named test list (with --records); its expected and found counts are "
                  "reported. flickr249 is flickr250 without id 3908875357.")
flags.DEFINE_string("test_list_ids", None, "The list's own ids (.txt/.csv, first column; or a "
                    "vggss.json): ids outside it are left out. Default: every record's id.")
flags.DEFINE_integer("num_samples", None, "Scenes/records to score (default: config for "
                     "synthetic scenes, all records with --records).", lower_bound=1)
flags.DEFINE_integer("num_overlays", 16, "Scenes in the overlay grid PNG.", lower_bound=0)
flags.DEFINE_string("output_dir", None, "Default: <workdir>/eval.")
flags.DEFINE_boolean("negatives", False, "Also pair every image with silence, white noise and "
                     "an off-screen sound, and report how well the model's score and map peak "
                     "separate positives from them (AP, max-F1).")
flags.DEFINE_boolean("plots", False, "Write the success-rate curve, best/worst overlays, "
                     "per-class bars (and score distributions with --negatives) as PNGs and "
                     "TensorBoard images.")
flags.DEFINE_string("records", None, "Evaluate on these records (a record directory or a "
                    "shard pattern, read by soundloc_tf.dataloaders.records.read_records) "
                    "instead of synthetic scenes.")
flags.DEFINE_integer("random_seed", 0, "Seed of the random-box baseline.")
flags.DEFINE_integer("noise_seed", 0, "Seed of the white-noise negatives.")
flags.DEFINE_integer("num_cases", 8, "Best and worst cases each in the --plots grid.",
                     lower_bound=1)
FLAGS = flags.FLAGS

SETTINGS = ("rule", "protocol", "annotation", "records", "test_list", "test_list_ids",
            "num_samples", "num_overlays", "output_dir", "negatives", "plots", "random_seed",
            "noise_seed", "num_cases")


def main(argv: list[str]) -> None:
    from soundloc_tf.tasks import evaluation  # after flag parsing: slow

    settings = evaluation.EvaluationSettings(**{name: FLAGS[name].value for name in SETTINGS})

    def progress(done: int, total: int | None) -> None:
        print(f"\rscored {done}/{total or '?'}", end="", file=sys.stderr, flush=True)

    result, paths = evaluation.evaluate_run(FLAGS.workdir, settings, progress)
    print(file=sys.stderr)
    print("\n".join(evaluation.report_lines(result, settings)))
    print("Wrote " + ", ".join(paths))


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
