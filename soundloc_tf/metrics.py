"""Localisation metrics as the follow-up work computes them (cIoU, AUC, pointing game).

Ground truth (Flickr-SoundNet convention): each annotator's boxes become a
binary mask in the evaluation frame; masks are summed over annotators,
divided by min(annotators, 2) and clipped to 1, so with three annotators a
pixel is 0, 0.5 or 1 and with one annotator the map is binary.

Prediction: the heat map is resized bilinearly (half-pixel centres) to the
evaluation frame, min-max normalised, then binarised by one of three rules:
  "fixed":  pixels above a threshold (default 0.5);
  "median": pixels above the map's median (LVS);
  "top50":  the top 50% of pixels (EZ-VSL).

cIoU = sum(pred * gt) / (sum(gt) + sum(pred * [gt == 0])).
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
