"""Localisation metrics as the follow-up work computes them (cIoU, AUC, pointing game).

Ground truth (Flickr-SoundNet convention): each annotator's boxes become a
binary mask in the evaluation frame; masks are summed over annotators,
divided by min(annotators, 2) and clipped to 1, so with three annotators a
pixel is 0, 0.5 or 1 and with one annotator the map is binary.

Prediction: the heat map is resized bilinearly (half-pixel centres) to the
evaluation frame, min-max normalised, then binarised by one of three rules:
  "fixed":  pixels above a threshold (default 0.5);
  "median": pixels above the map's median (LVS-like);
  "top50":  the top 50% of pixels (EZ-VSL-like).
The peers' own rules, exact to their code (their ground truth divides by 2
whatever the number of boxes, their resizes and ties differ), are the
protocols of `soundloc_tf.protocols`; this module is soundloc's `fixed` one.

cIoU = sum(pred * gt) / (sum(gt) + sum(pred * [gt == 0])).

Beyond those: a seeded random-box baseline beside the whole-image and
centre-box ones, the audio-dependence gap (matched minus mismatched sound),
where the map peak falls (object, context cue, distractors), per-class
summaries, and AP / max-F1 for telling positive from negative audio.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

BINARIZE_RULES = ("fixed", "median", "top50")
AUC_THRESHOLDS = np.linspace(0.0, 1.0, 21)  # 0, 0.05, ..., 1.0
CENTER_BOX_SIDE = 0.5  # the centre-box baseline: a centred box of half the side


def box_masks(boxes: tf.Tensor, size: int) -> tf.Tensor:
    """Boxes [..., 4] normalised -> binary masks [..., size, size].

    Pixel j lies in [x1, x2) when floor(x1 * size) <= j < floor(x2 * size),
    i.e. integer box coordinates sliced as mask[y1:y2, x1:x2]; an all-zero
    (padding) box gives an empty mask.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    edges = tf.floor(boxes * size)
    pixels = tf.range(size, dtype=tf.float32)
    x1, y1, x2, y2 = [edges[..., i, None] for i in range(4)]
    in_x = (pixels >= x1) & (pixels < x2)
    in_y = (pixels >= y1) & (pixels < y2)
    return tf.cast(in_y[..., :, None] & in_x[..., None, :], tf.float32)


def consensus_map(boxes: tf.Tensor, size: int) -> tf.Tensor:
    """Boxes [N, annotators, boxes, 4] -> ground-truth maps [N, size, size] in {0, .5, 1}."""
    per_annotator = tf.reduce_max(box_masks(boxes, size), axis=-3)  # union of boxes
    areas = tf.reduce_prod(boxes[..., 2:] - boxes[..., :2], axis=-1)
    annotators = tf.reduce_sum(tf.cast(tf.reduce_any(areas > 0, axis=-1), tf.float32), axis=-1)
    divisor = tf.clip_by_value(annotators, 1.0, 2.0)[:, None, None]
    return tf.minimum(tf.reduce_sum(per_annotator, axis=-3) / divisor, 1.0)


def normalize_heatmaps(heatmaps: tf.Tensor, size: int) -> tf.Tensor:
    """Heat maps [N, h, w] -> bilinear resize to [N, size, size], min-max to [0, 1]."""
    maps = tf.image.resize(tf.convert_to_tensor(heatmaps, tf.float32)[..., None], [size, size],
                           method="bilinear")[..., 0]
    low = tf.reduce_min(maps, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    return (maps - low) / tf.maximum(high - low, 1e-12)


def binarize(maps: np.ndarray, rule: str = "fixed", threshold: float = 0.5) -> np.ndarray:
    """Normalised maps [N, S, S] -> binary predictions by `rule` (see module doc)."""
    if rule not in BINARIZE_RULES:
        raise ValueError(f"rule must be one of {BINARIZE_RULES}. Received: rule={rule!r}")
    maps = np.asarray(maps, np.float32)
    if rule == "fixed":
        return (maps > threshold).astype(np.float32)
    flat = maps.reshape(len(maps), -1)
    if rule == "median":
        return (maps > np.median(flat, axis=1)[:, None, None]).astype(np.float32)
    order = np.argsort(-flat, axis=1, kind="stable")
    keep = np.zeros_like(flat)
    np.put_along_axis(keep, order[:, : flat.shape[1] // 2], 1.0, axis=1)
    return keep.reshape(maps.shape)


def ciou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image cIoU of binary predictions [N, S, S] against consensus maps [N, S, S]."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    hit = (pred * gt).sum(axis=(1, 2))
    false_alarm = (pred * (gt == 0)).sum(axis=(1, 2))
    denom = gt.sum(axis=(1, 2)) + false_alarm
    return np.where(denom > 0, hit / np.maximum(denom, 1e-12), 0.0)


def success_curve(cious: np.ndarray) -> np.ndarray:
    """Fraction of images with cIoU >= t for each t in AUC_THRESHOLDS."""
    cious = np.asarray(cious, np.float64)
    return np.array([(cious >= t).mean() for t in AUC_THRESHOLDS])


def auc(cious: np.ndarray) -> float:
    """Area under the success curve over thresholds 0..1 step 0.05 (trapezoid)."""
    curve = success_curve(cious)
    widths = np.diff(AUC_THRESHOLDS)
    return float(np.sum(widths * (curve[1:] + curve[:-1]) / 2.0))


def pointing_hits(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """1 where the map's peak (first maximum) falls on a ground-truth pixel."""
    maps, gt = np.asarray(maps), np.asarray(gt)
    flat_peak = maps.reshape(len(maps), -1).argmax(axis=1)
    return (gt.reshape(len(gt), -1)[np.arange(len(gt)), flat_peak] > 0).astype(np.float64)


def summarize(cious: np.ndarray, pointing: np.ndarray) -> dict[str, float]:
    cious = np.asarray(cious, np.float64)
    return {
        "ciou_at_0_5": float((cious >= 0.5).mean()),
        "mean_ciou": float(cious.mean()),
        "auc": auc(cious),
        "pointing_game": float(np.mean(pointing)),
        "n": int(len(cious)),
    }


def center_box_prediction(size: int) -> np.ndarray:
    lo = int(np.floor(size * (1 - CENTER_BOX_SIDE) / 2))
    hi = int(np.floor(size * (1 + CENTER_BOX_SIDE) / 2))
    pred = np.zeros([size, size], np.float32)
    pred[lo:hi, lo:hi] = 1.0
    return pred


def baselines(gt: np.ndarray) -> dict[str, dict[str, float]]:
    """Whole-image and centre-box predictions scored like a model.

    Their pointing game: the centre box points at the image centre; a flat
    whole-image map has no peak, so it scores the chance of a uniformly
    random point landing on the ground truth.
    """
    gt = np.asarray(gt, np.float32)
    n, size = gt.shape[0], gt.shape[1]
    whole = np.ones_like(gt)
    centre = np.broadcast_to(center_box_prediction(size), gt.shape)
    centre_hit = (gt[:, size // 2, size // 2] > 0).astype(np.float64)
    random_point = (gt > 0).reshape(n, -1).mean(axis=1)
    return {
        "whole_image": summarize(ciou(whole, gt), random_point),
        "center_box": summarize(ciou(centre, gt), centre_hit),
    }


def score_heatmaps(heatmaps: np.ndarray, boxes: np.ndarray, size: int, rule: str = "fixed",
                   threshold: float = 0.5) -> tuple[dict, np.ndarray]:
    """Metrics of heat maps [N, h, w] against boxes [N, A, B, 4].

    Returns the summary (with baselines, rule and threshold) and per-image cIoU.
    """
    if len(heatmaps) != len(boxes) or len(heatmaps) == 0:
        raise ValueError("need the same, non-zero number of heat maps and box sets. "
                         f"Received: {len(heatmaps)} maps, {len(boxes)} box sets")
    gt = consensus_map(boxes, size).numpy()
    maps = normalize_heatmaps(heatmaps, size).numpy()
    per_image = ciou(binarize(maps, rule, threshold), gt)
    result = summarize(per_image, pointing_hits(maps, gt))
    result.update(rule=rule, threshold=threshold if rule == "fixed" else None,
                  eval_size=size, baselines=baselines(gt))
    return result, per_image


# ---------------------------------------------------------------------------
# Beyond the follow-up papers' numbers: a random baseline, the audio-dependence
# gap, detection of negative audio, per-class results and "where is the peak".

SUMMARY_KEYS = ("ciou_at_0_5", "mean_ciou", "auc", "pointing_game")
RANDOM_BOX_SIDES = (0.25, 0.75)  # each side of the random box, a fraction of the image
RANDOM_BOX_DEFINITION = (
    "per image, a box whose width and height are drawn independently and uniformly from "
    f"[{RANDOM_BOX_SIDES[0]}, {RANDOM_BOX_SIDES[1]}] of the image side (mean 0.5, the centre "
    "box's side), placed uniformly at random inside the image; numpy default_rng(seed); its "
    "pointing game uses the box centre")


def random_box_predictions(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random boxes as binary masks [count, size, size] and their centres [count, 2].

    The centre-box baseline without its central prior: if a model only
    learned "objects are somewhere", it should beat this clearly.
    """
    if count < 1 or size < 1:
        raise ValueError(f"need count >= 1 and size >= 1. Received: count={count}, size={size}")
    rng = np.random.default_rng(seed)
    sides = rng.uniform(*RANDOM_BOX_SIDES, size=[count, 2])  # width, height
    corners = rng.uniform(size=[count, 2]) * (1.0 - sides)
    boxes = np.concatenate([corners, corners + sides], axis=1).astype(np.float32)
    masks = box_masks(boxes, size).numpy()
    centres = np.minimum(np.floor((corners + sides / 2) * size), size - 1).astype(np.int64)
    return masks, centres  # centres as (x, y) pixel indices


def random_baseline(gt: np.ndarray, seed: int) -> tuple[dict, np.ndarray]:
    """The random-box baseline scored like a model: (summary with seed, per-image cIoU)."""
    gt = np.asarray(gt, np.float32)
    masks, centres = random_box_predictions(len(gt), gt.shape[1], seed)
    per_image = ciou(masks, gt)
    hits = (gt[np.arange(len(gt)), centres[:, 1], centres[:, 0]] > 0).astype(np.float64)
    summary = summarize(per_image, hits)
    summary.update(seed=int(seed), definition=RANDOM_BOX_DEFINITION)
    return summary, per_image


def baseline_cious(gt: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per-image cIoU of the whole-image, centre-box and random-box predictions."""
    gt = np.asarray(gt, np.float32)
    centre = np.broadcast_to(center_box_prediction(gt.shape[1]), gt.shape)
    return {"whole_image": ciou(np.ones_like(gt), gt), "center_box": ciou(centre, gt),
            "random_box": random_baseline(gt, seed)[1]}


def peak_indices(heatmaps: np.ndarray, size: int | None = None) -> np.ndarray:
    """Flat index of each map's first maximum, on the map itself or resized to `size`."""
    maps = np.asarray(heatmaps, np.float32)
    if size is not None:
        maps = normalize_heatmaps(maps, size).numpy()
    return maps.reshape(len(maps), -1).argmax(axis=1)


def audio_dependence_gap(matched: dict, mismatched: dict,
                         peak_moved: float | None = None) -> dict:
    """matched - mismatched for each summary metric (0 for a map that ignores the audio).

    `peak_moved`, when given, is the fraction of images whose map peak moved
    when the sound was swapped: also 0 for a map that ignores the audio.
    """
    gap = {k: float(matched[k]) - float(mismatched[k]) for k in SUMMARY_KEYS}
    if peak_moved is not None:
        gap["peak_moved"] = float(peak_moved)
    return gap


def peak_in_boxes(heatmaps: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Whether each map's peak (at `size`, as the pointing game) lies in its box.

    `boxes` is one box per map [N, 4] or several [N, B, 4] (their union);
    images without a box (all rows zero) give NaN.
    """
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim == 2:
        boxes = boxes[:, None]
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or len(boxes) != len(heatmaps):
        raise ValueError("need [x1, y1, x2, y2] boxes [N, 4] or [N, B, 4] for N maps. "
                         f"Received: boxes of shape {boxes.shape} for {len(heatmaps)} maps")
    if boxes.shape[1] == 0:  # e.g. the distractors of scenes that hold one object
        return np.full(len(boxes), np.nan)
    peaks = peak_indices(heatmaps, size)
    masks = box_masks(boxes, size).numpy().max(axis=1).reshape(len(boxes), -1)
    inside = masks[np.arange(len(boxes)), peaks].astype(np.float64)
    empty = masks.sum(axis=1) == 0
    return np.where(empty, np.nan, inside)


def peak_region_rates(heatmaps: np.ndarray, regions: dict[str, np.ndarray],
                      size: int) -> dict[str, dict]:
    """How often the map's peak falls in each named region (e.g. the object vs a context cue).

    Per region: `rate` over the images that have that region, and `n`. A
    region may overlap another (a peak there counts for both); `elsewhere`
    is the fraction of images whose peak is in none of them.
    """
    if not regions:
        raise ValueError("need at least one region. Received: regions={}")
    result, inside_any = {}, np.zeros(len(heatmaps), bool)
    for name, boxes in regions.items():
        inside = peak_in_boxes(heatmaps, boxes, size)
        valid = ~np.isnan(inside)
        result[name] = {"rate": float(inside[valid].mean()) if valid.any() else None,
                        "n": int(valid.sum())}
        inside_any |= np.nan_to_num(inside) > 0
    result["elsewhere"] = {"rate": float(1.0 - inside_any.mean()), "n": int(len(heatmaps))}
    return result


def peak_box_distance(heatmaps: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Distance from each map's peak (pixel centre at `size`) to its box [N, 4], in image sides.

    0 inside the box. A map's peak can sit just beside what it attends to (a
    receptive field is wider than its cell), which `peak_in_boxes` counts as a
    miss; comparing distances to two regions says which one the map is on.
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or len(boxes) != len(heatmaps):
        raise ValueError("need one [x1, y1, x2, y2] box per map. Received: boxes of shape "
                         f"{boxes.shape} for {len(heatmaps)} maps")
    rows, cols = np.divmod(peak_indices(heatmaps, size), size)
    y, x = (rows + 0.5) / size, (cols + 0.5) / size
    dx = np.maximum.reduce([boxes[:, 0] - x, np.zeros_like(x), x - boxes[:, 2]])
    dy = np.maximum.reduce([boxes[:, 1] - y, np.zeros_like(y), y - boxes[:, 3]])
    return np.hypot(dx, dy)


def per_class_summary(cious: np.ndarray, pointing: np.ndarray,
                      class_ids: np.ndarray) -> dict[str, dict[str, float]]:
    """`summarize` per sounding class (keys are class ids as strings; -1, unknown, is left out)."""
    cious, pointing, class_ids = (np.asarray(cious), np.asarray(pointing),
                                  np.asarray(class_ids).astype(np.int64))
    if not len(cious) == len(pointing) == len(class_ids):
        raise ValueError(f"need one class id per image. Received: {len(cious)} cIoU values, "
                         f"{len(pointing)} pointing hits, {len(class_ids)} class ids")
    return {str(c): summarize(cious[class_ids == c], pointing[class_ids == c])
            for c in np.unique(class_ids) if c >= 0}


def precision_recall(confidence: np.ndarray, positive: np.ndarray,
                     correct: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Precision and recall at every distinct confidence threshold (detect when c >= t).

    Counting as SLAVC (Mo & Morgado, 2022) does, positives and negatives
    together: a detected negative is a false positive; a detected positive
    is a true positive when `correct` (e.g. cIoU >= 0.5), else a false
    positive; an undetected positive is a false negative. With `correct`
    None every positive counts as correct: plain positive-vs-negative
    detection. Thresholds run from the highest confidence down.
    """
    confidence = np.asarray(confidence, np.float64)
    positive = np.asarray(positive, bool)
    correct = positive if correct is None else (np.asarray(correct, bool) & positive)
    if not len(confidence) == len(positive) == len(correct) or len(confidence) == 0:
        raise ValueError("need the same, non-zero number of confidences, labels and "
                         f"correctness flags. Received: {len(confidence)}, {len(positive)}, "
                         f"{len(correct)}")
    if not np.isfinite(confidence).all():
        raise ValueError("confidences must be finite. Received: "
                         f"{confidence[~np.isfinite(confidence)][:3]}")
    if not positive.any():
        raise ValueError("need at least one positive sample. Received: 0 positives")
    order = np.argsort(-confidence, kind="stable")
    c, pos, hit = confidence[order], positive[order], correct[order]
    last_of_tie = np.r_[c[1:] != c[:-1], True]  # a threshold detects a whole tie group
    tp = np.cumsum(hit)[last_of_tie]
    detected = np.arange(1, len(c) + 1)[last_of_tie]
    missed = pos.sum() - np.cumsum(pos)[last_of_tie]  # positives below the threshold
    precision = tp / detected
    recall = np.where(tp + missed > 0, tp / np.maximum(tp + missed, 1), 1.0)
    return {"threshold": c[last_of_tie], "precision": precision, "recall": recall}


def average_precision(confidence: np.ndarray, positive: np.ndarray,
                      correct: np.ndarray | None = None) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over the thresholds of `precision_recall` (R_0 = 0).

    The step-wise (non-interpolated) area, as sklearn's average_precision_score.
    """
    curve = precision_recall(confidence, positive, correct)
    steps = np.diff(np.r_[0.0, curve["recall"]])
    return float(np.sum(steps * curve["precision"]))


def max_f1(confidence: np.ndarray, positive: np.ndarray,
           correct: np.ndarray | None = None) -> dict[str, float]:
    """The best F1 over thresholds, with the threshold, precision and recall that reach it."""
    curve = precision_recall(confidence, positive, correct)
    p, r = curve["precision"], curve["recall"]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    best = int(np.argmax(f1))
    return {"max_f1": float(f1[best]), "threshold": float(curve["threshold"][best]),
            "precision": float(p[best]), "recall": float(r[best])}
