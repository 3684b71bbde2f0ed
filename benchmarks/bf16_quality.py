"""Does bf16 change results? The tiny preset trained and evaluated with a float32 and a
bfloat16 image tower.

  python -m benchmarks.bf16_quality [--output=benchmarks/bf16_quality.json] [--train_steps=800]

Both runs start from the same seed and see the same scenes; bf16 is the
product's flag `image_tower_precision="bfloat16"` (the image tower's
convolutions in bf16, the localiser and losses in float32). Prints cIoU@0.5, mean cIoU, AUC, pointing and
the training rate of each, and their differences, and writes them as JSON.
About 3 minutes on 2 idle cores at the default 800 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.comparison import comparison_table


def train_and_evaluate(dtype: str, train_steps: int, workdir: str,
                       num_eval_samples: int = 500) -> dict:
    import keras

    from soundloc_tf.config import get_config
    from soundloc_tf.dataloaders import data
    from soundloc_tf.eval.evaluation import evaluate
    from soundloc_tf.tasks import localization

    config = get_config("tiny", train_steps=train_steps, num_summary_images=0,
                        eval_every=train_steps, num_eval_samples=num_eval_samples,
                        image_tower_precision={"fp32": "float32", "bf16": "bfloat16"}[dtype])
    keras.backend.clear_session()
    trainer = localization.LocalizationTask(config, log=lambda _: None).build_trainer(
        os.path.join(workdir, dtype))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    scenes = data.synthetic_dataset(config, config.eval_seed, count=config.num_eval_samples)
    result = evaluate(trainer.model, config, scenes)
    return {"ciou_at_0_5": result["ciou_at_0_5"], "mean_ciou": result["mean_ciou"],
            "auc": result["auc"], "pointing_game": result["pointing_game"],
            "train_pairs_per_s": train_steps * config.batch_size / seconds,
            "train_seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/bf16_quality.json")
    parser.add_argument("--train_steps", type=int, default=800)
    parser.add_argument("--num_eval_samples", type=int, default=500)
    args = parser.parse_args(argv)
    if args.train_steps < 1 or args.num_eval_samples < 1:
        parser.error(f"--train_steps and --num_eval_samples must be >= 1. Received: "
                     f"{args.train_steps}, {args.num_eval_samples}")
    with tempfile.TemporaryDirectory() as workdir:
        runs = {}
        for dtype in ("fp32", "bf16"):
            print(f"training and evaluating {dtype} ({args.train_steps} steps) ...", flush=True)
            runs[dtype] = train_and_evaluate(dtype, args.train_steps, workdir,
                                             args.num_eval_samples)
    keys = ("ciou_at_0_5", "mean_ciou", "auc", "pointing_game", "train_pairs_per_s")
    table, difference = comparison_table(keys, ("fp32", runs["fp32"]), ("bf16", runs["bf16"]))
    print("\n" + table)
    with open(args.output, "w") as f:
        json.dump({"preset": "tiny", "train_steps": args.train_steps,
                   "num_eval_samples": args.num_eval_samples, "runs": runs,
                   "bf16_minus_fp32": difference}, f, indent=1)
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
