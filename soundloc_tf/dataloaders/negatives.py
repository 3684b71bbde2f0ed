"""Negative audio: does the model notice when nothing in the image makes the sound?

Published cIoU/AUC only ever pair an image with its own sound, so a model
that highlights "the most salient object" whatever it hears scores well.
Following SLAVC (Mo & Morgado, NeurIPS 2022) and "A Critical Assessment of
VSSL Models Including Negative Audio" (2024), every evaluation image is also
paired with three negative sounds:

  silence      an all-zero waveform;
  white_noise  Gaussian noise at the clips' RMS level, seeded per image;
  offscreen    the clip of another evaluation scene whose sounding class is
               absent from the image (known object classes when the data
               has them, else only the image's sounding class is avoided).

Two confidences per pair should separate positives from negatives: the
model's `score` (the largest cosine between the sound and any location) and
`map_peak` (the largest attention weight alpha, high when the map is
concentrated). Reported over positives and negatives together: AP and
max-F1 of plain detection, and the SLAVC variant where a detected positive
only counts when it is also localised (cIoU >= 0.5).
"""

from __future__ import annotations

import numpy as np

from soundloc_tf import metrics
from soundloc_tf.dataloaders import data

NEGATIVE_KINDS = ("silence", "white_noise", "offscreen")
CONFIDENCES = ("score", "map_peak")
LOCALIZED_CIOU = 0.5
DEFINITIONS = {
    "silence": "an all-zero waveform",
    "white_noise": (f"Gaussian white noise at RMS {data.CLIP_RMS} (the level every clip is "
                    "scaled to), numpy default_rng([noise_seed, image index])"),
    "offscreen": ("the clip of the first later scene (cyclically, in evaluation order) whose "
                  "sounding class is absent from the image: not among its object classes when "
                  "the data gives them, else not its sounding class (compared by class group "
                  "when groups are known); images without such a scene, or of unknown class, "
                  "are left out"),
    "score": "max over locations of cos(v_i, h), the model's 'score' output",
    "map_peak": "max over locations of the attention alpha",
    "ap": ("sum_k (R_k - R_{k-1}) P_k over the distinct confidence thresholds (detect when "
           "confidence >= t), positives and negatives pooled; a detected negative is a false "
           "positive"),
    "localized": (f"as SLAVC: a detected positive is a true positive only if its cIoU >= "
                  f"{LOCALIZED_CIOU}, else a false positive; an undetected positive is a false "
                  "negative"),
}


def silence(num_samples: int) -> np.ndarray:
    """One silent clip [1, num_samples]."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1. Received: num_samples={num_samples}")
    return np.zeros([1, num_samples], np.float32)


def white_noise(indices: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """White noise clips [len(indices), num_samples]; clip i depends only on (seed, index i)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1. Received: num_samples={num_samples}")
    clips = [np.random.default_rng([int(seed), int(i)]).standard_normal(num_samples)
             for i in np.asarray(indices)]
    return (np.stack(clips) * data.CLIP_RMS).astype(np.float32) if clips else \
        np.zeros([0, num_samples], np.float32)


def partner_indices(sound_classes: np.ndarray,
                    forbidden_classes: np.ndarray | None = None) -> np.ndarray:
    """For each image i, the first later scene j (cyclically) whose sounding class is allowed.

    Allowed: not image i's sounding class and, when `forbidden_classes`
    [N, K] is given (-1 padding), none of the classes in that row either.
    Returns -1 where no scene qualifies or image i's class is unknown (< 0).
    """
    sound = np.asarray(sound_classes, np.int64).reshape(-1)
    n = len(sound)
    forbidden = sound[:, None] if forbidden_classes is None else \
        np.concatenate([sound[:, None], np.asarray(forbidden_classes, np.int64).reshape(n, -1)], 1)
    best_distance = np.full(n, n, np.int64)
    partners = np.full(n, -1, np.int64)
    positions = np.arange(n)
    for c in np.unique(sound[sound >= 0]):
        members = np.flatnonzero(sound == c)
        following = members[np.searchsorted(members, positions, side="right") % len(members)]
        distance = (following - positions) % n
        usable = (distance > 0) & ~(forbidden == c).any(axis=1) & (distance < best_distance)
        best_distance = np.where(usable, distance, best_distance)
        partners = np.where(usable, following, partners)
    return np.where(sound >= 0, partners, -1)


def map_peak(attention: np.ndarray) -> np.ndarray:
    """The largest attention weight of each map [N, h, w] -> [N]."""
    attention = np.asarray(attention)
    return attention.reshape(len(attention), -1).max(axis=1)


def separation(positive: np.ndarray, negative: np.ndarray,
               positive_ciou: np.ndarray | None = None) -> dict:
    """AP and max-F1 of one confidence over positives and negatives pooled.

    With `positive_ciou`, also the SLAVC "localized" numbers (a detected
    positive must have cIoU >= 0.5).
    """
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("need at least one positive and one negative. Received: "
                         f"{len(positive)} positives, {len(negative)} negatives")
    confidence = np.concatenate([positive, negative])
    is_positive = np.r_[np.ones(len(positive), bool), np.zeros(len(negative), bool)]
    best = metrics.max_f1(confidence, is_positive)
    result = {"ap": metrics.average_precision(confidence, is_positive), "max_f1": best["max_f1"],
              "max_f1_threshold": best["threshold"],
              "positive_mean": float(positive.mean()), "negative_mean": float(negative.mean()),
              "n_positive": int(len(positive)), "n_negative": int(len(negative))}
    if positive_ciou is not None:
        correct = np.r_[np.asarray(positive_ciou) >= LOCALIZED_CIOU, np.zeros(len(negative), bool)]
        result["localized_ap"] = metrics.average_precision(confidence, is_positive, correct)
        result["localized_max_f1"] = metrics.max_f1(confidence, is_positive, correct)["max_f1"]
    return result


def separation_report(positive: dict[str, np.ndarray],
                      negatives: dict[str, dict[str, np.ndarray]],
                      positive_ciou: np.ndarray | None = None) -> dict:
    """Per confidence: separation from each negative kind and from all kinds pooled.

    `positive[confidence]` holds the positives' values; `negatives[kind][confidence]`
    each kind's values (images without a negative of that kind already left out).
    """
    report: dict = {"definitions": DEFINITIONS, "kinds": {}, "pooled": {}}
    for confidence in CONFIDENCES:
        for kind, values in negatives.items():
            report["kinds"].setdefault(kind, {})[confidence] = separation(
                positive[confidence], values[confidence], positive_ciou)
        pooled = np.concatenate([values[confidence] for values in negatives.values()])
        report["pooled"][confidence] = separation(positive[confidence], pooled, positive_ciou)
    return report
