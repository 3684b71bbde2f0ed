"""Runs a model over a dataset and scores its maps (cIoU, AUC, pointing game)."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf import metrics
from soundloc_tf.config import Config

EVAL_BATCH = 32


def predict_maps(model: keras.Model, dataset: tf.data.Dataset, mismatched: bool = False,
                 progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Collects attention/cosine maps, scores and boxes over a batched dataset.

    With `mismatched`, image i is paired with the sound of image i+1 of the
    same batch, to check that the map follows the audio.
    """
    @tf.function
    def run(batch):
        waveform = batch["waveform"]
        if mismatched:
            waveform = tf.roll(waveform, shift=-1, axis=0)
        out = model({"image": batch["image"], "waveform": waveform}, training=False)
        return out["attention"], out["cosine"], out["score"]

    collected: dict[str, list] = {"attention": [], "cosine": [], "score": [], "boxes": [],
                                  "class_id": []}
    done = 0
    for batch in dataset:
        attention, cosine, score = run(batch)
        for key, value in (("attention", attention), ("cosine", cosine), ("score", score),
                           ("boxes", batch["boxes"]), ("class_id", batch["class_id"])):
            collected[key].append(value.numpy())
        done += len(score)
        if progress:
            progress(done)
    if done == 0:
        raise ValueError("the evaluation dataset is empty")
    return {k: np.concatenate(v) for k, v in collected.items()}


def evaluate(model: keras.Model, config: Config, dataset: tf.data.Dataset,
             rule: str = "fixed", progress: Callable[[int], None] | None = None) -> dict:
    """Scores `model` on an unbatched dataset of the common element spec.

    The headline numbers are on the attention map alpha; the raw cosine map
    and the mismatched-sound run are reported beside them.
    """
    batched = dataset.batch(EVAL_BATCH).prefetch(tf.data.AUTOTUNE)
    maps = predict_maps(model, batched, progress=progress)
    result, _ = metrics.score_heatmaps(maps["attention"], maps["boxes"], config.eval_size, rule,
                                       config.ciou_threshold)
    result["map"] = "attention"
    cosine, _ = metrics.score_heatmaps(maps["cosine"], maps["boxes"], config.eval_size, rule,
                                       config.ciou_threshold)
    result["cosine_map"] = {k: v for k, v in cosine.items() if k != "baselines"}
    wrong = predict_maps(model, batched, mismatched=True)
    mismatched, _ = metrics.score_heatmaps(wrong["attention"], maps["boxes"], config.eval_size,
                                           rule, config.ciou_threshold)
    result["mismatched_sound"] = {k: v for k, v in mismatched.items() if k != "baselines"}
    return result
