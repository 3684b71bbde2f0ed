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

import json
import os
import sys

import numpy as np
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

_ROW = "{:30s} {:>9s} {:>10s} {:>7s} {:>9s}"


def _row(name: str, r: dict) -> str:
    return _ROW.format(name, f"{r['ciou_at_0_5']:.3f}", f"{r['mean_ciou']:.3f}",
                       f"{r['auc']:.3f}", f"{r['pointing_game']:.3f}")


def _table(result: dict) -> str:
    rows = [(f"model ({result['map']} map)", result)]
    if "mismatched_sound" in result:
        rows.append(("  with mismatched sound", result["mismatched_sound"]))
    rows += [("  raw cosine map", result["cosine_map"]),
             ("baseline: whole image", result["baselines"]["whole_image"]),
             ("baseline: centre box", result["baselines"]["center_box"]),
             (f"baseline: random box (seed {result['random_baseline']['seed']})",
              result["random_baseline"])]
    lines = [_ROW.format("", "cIoU@0.5", "mean cIoU", "AUC", "pointing")]
    lines += [_row(name, r) for name, r in rows]
    if "audio_dependence_gap" in result:
        gap = result["audio_dependence_gap"]
        lines.append(_ROW.format("audio-dependence gap", *(f"{gap[k]:+.3f}" for k in (
            "ciou_at_0_5", "mean_ciou", "auc", "pointing_game"))) +
            f"   (peak moved in {gap['peak_moved']:.1%} of images)")
    for rule, r in result.get("by_rule", {}).items():
        lines.append(_row(f"rule {rule}", r))
    for name, r in result.get("by_protocol", {}).items():
        lines.append(_row(f"protocol {name}", r))
    if "peak_location" in result:
        where = result["peak_location"]
        lines.append("map peak on: " + ", ".join(
            f"{k} {v['rate']:.3f}" for k, v in where.items() if v["rate"] is not None))
    if "negatives" in result:
        lines.append(f"\n{'negative audio':30s} {'confidence':>10s} {'AP':>7s} {'max-F1':>7s} "
                     f"{'loc. AP':>8s} {'loc. F1':>8s}")
        report = result["negatives"]
        for kind, by_confidence in [*report["kinds"].items(), ("all kinds pooled",
                                                                report["pooled"])]:
            for confidence, s in by_confidence.items():
                lines.append(f"{kind:30s} {confidence:>10s} {s['ap']:7.3f} {s['max_f1']:7.3f} "
                             f"{s['localized_ap']:8.3f} {s['localized_max_f1']:8.3f}")
    peers = result.get("negatives_by_protocol", {})
    if "slavc" in peers:
        lines.append(f"\n{'protocol slavc (cIoU >= 0.5)':30s} {'precision':>10s} {'AP':>7s} "
                     f"{'max-F1':>7s} {'AUC':>7s}")
        for kind, stats in peers["slavc"].items():
            s = stats["all@50"]
            lines.append(f"{'positives + ' + kind:30s} {s['precision']:10.3f} {s['ap']:7.3f} "
                         f"{s['max_f1']:7.3f} {s['auc']:7.3f}")
    if "vssl_eval" in peers:
        lines.append(f"\n{'protocol vssl_eval':30s} {'pIA':>10s} {'AOC':>7s}")
        for kind, s in peers["vssl_eval"].items():
            lines.append(f"{kind:30s} {s['pia']:10.3f} {s['aoc']:7.3f}")
    return "\n".join(lines)


def _records_dataset(config, pattern: str):
    """The records as an evaluation dataset, their class groups and class names (or None)."""
    from soundloc_tf.dataloaders import records
    from soundloc_tf.eval.evaluation import group_ids

    extra = records.resolve(pattern).manifest.get("extra", {})
    classes = extra.get("classes") or []
    groups = group_ids(classes, extra.get("groups"))
    names = {str(i): name for i, name in enumerate(classes)} or None
    return records.read_records(config, pattern, training=False), groups, names


def _read_list_ids(path: str) -> list[str]:
    """A test list's ids: the "file" names of a vggss.json, else one id per line / first column."""
    if path.endswith(".json"):
        from soundloc_tf.dataloaders.importers import parse_vggss

        return [str(entry["file"]) for entry in parse_vggss(path)]
    from soundloc_tf.dataloaders.importers import read_id_list

    return read_id_list(path)


def _select_test_list(scenes, name: str, ids_path: str | None):
    """The records of the named list (kept in order) and the list's count report."""
    import tensorflow as tf

    from soundloc_tf import protocols

    ids = [i.decode() for i in scenes.map(lambda e: e["id"]).as_numpy_iterator()]
    keep, report = protocols.select_test_list(
        name, ids, _read_list_ids(ids_path) if ids_path else None)
    if not keep.any():
        raise ValueError(f"no record belongs to the test list {name}. Received: {len(ids)} "
                         f"records, list {ids_path or '(record ids)'}")
    wanted = tf.constant(sorted({i for i, k in zip(ids, keep) if k}))
    return scenes.filter(lambda e: tf.reduce_any(tf.equal(e["id"], wanted))), report


def _write_overlay_grid(model, dataset, count: int, path: str) -> None:
    from PIL import Image

    from soundloc_tf.eval.evaluation import predict_maps
    from soundloc_tf.visualize import draw_boxes, overlay

    batch = next(iter(dataset.batch(count)))
    maps = predict_maps(model, [batch])
    tiles = draw_boxes(overlay(batch["image"], maps["attention"]), batch["boxes"][:, 0]).numpy()
    columns = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    pad = np.ones([rows * columns - len(tiles), *tiles.shape[1:]], tiles.dtype)
    grid = np.concatenate([tiles, pad]).reshape(rows, columns, *tiles.shape[1:])
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * tiles.shape[1],
                                                 columns * tiles.shape[2], 3)
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)


def main(argv: list[str]) -> None:
    from soundloc_tf.dataloaders import data
    from soundloc_tf.eval import plots
    from soundloc_tf.eval.evaluation import evaluate_detailed
    from soundloc_tf.train.run_dir import restore_model

    config, model, step = restore_model(FLAGS.workdir)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, "eval")
    os.makedirs(output_dir, exist_ok=True)
    groups = class_names = test_list = None
    annotation = FLAGS.annotation or "flickr"
    if FLAGS.test_list and not FLAGS.records:
        raise ValueError("--test_list selects records by id, so it needs --records. Received: "
                         f"--test_list={FLAGS.test_list}")
    if FLAGS.records:
        scenes, groups, class_names = _records_dataset(config, FLAGS.records)
        if FLAGS.annotation is None:
            from soundloc_tf.dataloaders import records

            if records.resolve(FLAGS.records).manifest.get("source") == "vggss":
                annotation = "vggss"
        if FLAGS.test_list:
            scenes, test_list = _select_test_list(scenes, FLAGS.test_list, FLAGS.test_list_ids)
        if FLAGS.num_samples:
            scenes = scenes.take(FLAGS.num_samples)
        source = f"TFRecords {FLAGS.records}"
    else:
        count = FLAGS.num_samples or config.num_eval_samples
        scenes = data.synthetic_dataset(config, config.eval_seed, count=count, with_extras=True)
        source = f"held-out synthetic scenes (seed {config.eval_seed})"
    total = FLAGS.num_samples or (None if FLAGS.records else config.num_eval_samples)

    def progress(done: int) -> None:
        print(f"\rscored {done}/{total or '?'}", end="", file=sys.stderr, flush=True)

    result, details = evaluate_detailed(model, config, scenes, FLAGS.rule, progress,
                                        all_rules=True, with_negatives=FLAGS.negatives,
                                        random_seed=FLAGS.random_seed,
                                        noise_seed=FLAGS.noise_seed, class_groups=groups,
                                        protocol=FLAGS.protocol, annotation=annotation)
    print(file=sys.stderr)
    result.update(step=step, workdir=os.path.abspath(FLAGS.workdir), source=source,
                  eval_seed=None if FLAGS.records else config.eval_seed,
                  records=FLAGS.records, test_list=test_list)
    metrics_path = os.path.join(output_dir, "metrics.json")
    with open(metrics_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(metrics_path + ".tmp", metrics_path)

    paths = [metrics_path]
    if FLAGS.num_overlays:
        overlay_path = os.path.join(output_dir, "overlays.png")
        _write_overlay_grid(model, scenes, FLAGS.num_overlays, overlay_path)
        paths.append(overlay_path)
    if FLAGS.plots:
        written = plots.write_evaluation_plots(
            result, details, scenes, output_dir, FLAGS.num_cases,
            tensorboard_dir=os.path.join(output_dir, "tensorboard"), step=step,
            class_names=class_names)
        paths += list(written.values())

    rule = FLAGS.rule if FLAGS.rule != "fixed" else f"fixed threshold {config.ciou_threshold}"
    if FLAGS.protocol != "fixed":
        rule = f"protocol {FLAGS.protocol} ({result['protocol']['source']})"
    print(f"{source}: {result['n']} pairs, step {step}, protocol {FLAGS.protocol}, binarising "
          f"rule: {rule}, frame {result['eval_size']}x{result['eval_size']}, annotation "
          f"{annotation}")
    if test_list:
        print(f"Test list {test_list['name']}: {test_list['found']} of {test_list['expected']} "
              "ids found" + (f" (missing e.g. {', '.join(test_list['missing'][:5])})"
                             if test_list["missing"] else ""))
    if result["skipped_without_boxes"]:
        print(f"Skipped {result['skipped_without_boxes']} pairs without an annotated box "
              "(nothing to score them against)")
    print(_table(result))
    print("Wrote " + ", ".join(paths))


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
