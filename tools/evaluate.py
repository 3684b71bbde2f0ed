"""Evaluates a trained run on held-out synthetic scenes (a seed never used in training).

  soundloc-evaluate --workdir=runs/tiny [--rule=fixed|median|top50]

Writes <workdir>/eval/metrics.json (cIoU@0.5, mean cIoU, AUC, pointing
game, with the whole-image and centre-box baselines and the same numbers
for mismatched sound) and an overlay grid PNG, and prints a table.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags

from tools import common

flags.DEFINE_string("workdir", None, "Run directory written by soundloc-train.", required=True)
flags.DEFINE_enum("rule", "fixed", ["fixed", "median", "top50"],
                  "Binarising rule: fixed threshold (config.ciou_threshold), LVS median, "
                  "EZ-VSL top 50%.")
flags.DEFINE_integer("num_samples", None, "Held-out scenes to score (default: config).",
                     lower_bound=1)
flags.DEFINE_integer("num_overlays", 16, "Scenes in the overlay grid PNG.", lower_bound=0)
flags.DEFINE_string("output_dir", None, "Default: <workdir>/eval.")
FLAGS = flags.FLAGS


def _table(result: dict) -> str:
    rows = [("model (attention map)", result), ("  with mismatched sound", result["mismatched_sound"]),
            ("  raw cosine map", result["cosine_map"]),
            ("baseline: whole image", result["baselines"]["whole_image"]),
            ("baseline: centre box", result["baselines"]["center_box"])]
    lines = [f"{'':26s} {'cIoU@0.5':>9s} {'mean cIoU':>10s} {'AUC':>7s} {'pointing':>9s}"]
    for name, r in rows:
        lines.append(f"{name:26s} {r['ciou_at_0_5']:9.3f} {r['mean_ciou']:10.3f} {r['auc']:7.3f} "
                     f"{r['pointing_game']:9.3f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from PIL import Image

    from soundloc_tf import data
    from soundloc_tf.evaluation import evaluate, predict_maps
    from soundloc_tf.training import restore_model
    from soundloc_tf.visualize import draw_boxes, overlay

    config, model, step = restore_model(FLAGS.workdir)
    count = FLAGS.num_samples or config.num_eval_samples
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, "eval")
    os.makedirs(output_dir, exist_ok=True)
    scenes = data.synthetic_dataset(config, config.eval_seed, count=count)

    def progress(done: int) -> None:
        print(f"\rscored {done}/{count} scenes", end="", file=sys.stderr, flush=True)

    result = evaluate(model, config, scenes, rule=FLAGS.rule, progress=progress)
    print(file=sys.stderr)
    result.update(step=step, eval_seed=config.eval_seed, workdir=os.path.abspath(FLAGS.workdir))
    metrics_path = os.path.join(output_dir, "metrics.json")
    with open(metrics_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(metrics_path + ".tmp", metrics_path)

    paths = [metrics_path]
    if FLAGS.num_overlays:
        batch = next(iter(scenes.batch(FLAGS.num_overlays)))
        maps = predict_maps(model, [batch])
        tiles = draw_boxes(overlay(batch["image"], maps["attention"]), batch["boxes"][:, 0]).numpy()
        columns = int(np.ceil(np.sqrt(len(tiles))))
        rows = int(np.ceil(len(tiles) / columns))
        pad = np.ones([rows * columns - len(tiles), *tiles.shape[1:]], tiles.dtype)
        grid = np.concatenate([tiles, pad]).reshape(rows, columns, *tiles.shape[1:])
        grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * tiles.shape[1],
                                                     columns * tiles.shape[2], 3)
        overlay_path = os.path.join(output_dir, "overlays.png")
        Image.fromarray((grid * 255).round().astype(np.uint8)).save(overlay_path)
        paths.append(overlay_path)

    rule = FLAGS.rule if FLAGS.rule != "fixed" else f"fixed threshold {config.ciou_threshold}"
    print(f"Held-out synthetic scenes: {result['n']} (seed {config.eval_seed}), step {step}, "
          f"binarising rule: {rule}, frame {config.eval_size}x{config.eval_size}")
    print(_table(result))
    print("Wrote " + ", ".join(paths))


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
