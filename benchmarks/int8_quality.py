"""Does the int8 image tower change results? Cached training with a float32 and an int8 cache build.

  python -m benchmarks.int8_quality [--output=benchmarks/int8_quality.json] [--train_steps=800]

The tiny preset with both towers frozen (random weights: nothing to download)
trains from a feature cache of the same scenes, built once by the float32
image tower and once by `int8_tower` (`tools/train.py --cache_image_tower=int8`).
Both runs start from the same seed; both are evaluated the same way, through
the float32 model, as export and serving run it. Prints cIoU@0.5, mean cIoU,
AUC, pointing and the cache build rate of each, their differences, and writes
them as JSON. About 2 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from benchmarks.comparison import comparison_table


def train_and_evaluate(image_tower: str, train_steps: int, cache_samples: int, workdir: str,
                       num_eval_samples: int) -> dict:
    import keras
    import tensorflow as tf

    from soundloc_tf.config import get_config
    from soundloc_tf.dataloaders import data
    from soundloc_tf.eval.evaluation import evaluate
    from soundloc_tf.tasks import localization

    config = get_config("tiny", train_steps=train_steps, num_summary_images=0,
                        eval_every=train_steps, num_eval_samples=num_eval_samples,
                        freeze_image_tower=True, freeze_audio_tower=True)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.train_seed)
    strategy = tf.distribute.OneDeviceStrategy(tf.config.list_logical_devices("CPU")[0].name)
    directory = os.path.join(workdir, f"cache_{image_tower}")
    # The cache as `soundloc-train --tower_mode=cached --cache_image_tower=...` builds it.
    task = localization.LocalizationTask(config, localization.DataConfig(
        tower_mode="cached", feature_cache=directory, cache_image_tower=image_tower,
        cache_in_memory="true", cache_samples=cache_samples), log=lambda _: None)
    trainer = task.build_trainer(os.path.join(workdir, image_tower), strategy)
    trainer.train()
    manifest = task.feature_caches[directory]
    scenes = data.synthetic_dataset(config, config.eval_seed, count=config.num_eval_samples)
    result = evaluate(trainer.model, config, scenes)
    return {"ciou_at_0_5": result["ciou_at_0_5"], "mean_ciou": result["mean_ciou"],
            "auc": result["auc"], "pointing_game": result["pointing_game"],
            "cache_build_images_per_s": manifest["count"] / max(manifest["seconds"], 1e-9)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/int8_quality.json")
    parser.add_argument("--train_steps", type=int, default=800)
    parser.add_argument("--cache_samples", type=int, default=4000)
    parser.add_argument("--num_eval_samples", type=int, default=500)
    args = parser.parse_args(argv)
    if min(args.train_steps, args.cache_samples, args.num_eval_samples) < 1:
        parser.error("--train_steps, --cache_samples and --num_eval_samples must be >= 1. "
                     f"Received: {args.train_steps}, {args.cache_samples}, "
                     f"{args.num_eval_samples}")
    runs = {}
    with tempfile.TemporaryDirectory() as workdir:
        for image_tower in ("model", "int8"):
            print(f"caching {args.cache_samples} scenes with the {image_tower} image tower, "
                  f"training {args.train_steps} steps, evaluating ...", flush=True)
            runs[image_tower] = train_and_evaluate(image_tower, args.train_steps,
                                                   args.cache_samples, workdir,
                                                   args.num_eval_samples)
    keys = ("ciou_at_0_5", "mean_ciou", "auc", "pointing_game", "cache_build_images_per_s")
    table, difference = comparison_table(keys, ("float32 tower", runs["model"]),
                                         ("int8 tower", runs["int8"]))
    print("\n" + table)
    with open(args.output, "w") as f:
        json.dump({"preset": "tiny", "towers": "frozen, random weights",
                   "train_steps": args.train_steps, "cache_samples": args.cache_samples,
                   "num_eval_samples": args.num_eval_samples, "runs": runs,
                   "int8_minus_float32": difference}, f, indent=1)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
