"""Evaluation protocols named after their source, each re-stating that source's scoring rules.

Published cIoU/AUC tables come from the peers' own evaluation scripts, which
differ in small ways that move the numbers: how boxes become a ground-truth
map, how the map is resized, how it is binarised. Each protocol here follows
one script image by image (docs/PROTOCOLS.md cites the file of every rule):

  fixed      soundloc's own rule (`metrics`): consensus divided by
             min(annotators, 2), half-pixel bilinear resize, min-max, a fixed
             threshold (or the `rule` chosen beside it).
  lvs        hche11/Localizing-Visual-Sounds-the-Hard-Way: boxes summed and
             halved whatever their number, cv2 INTER_LINEAR, the element
             sort(pred)[224*224/2] as threshold, pixels strictly above it.
  ezvsl      stoneMo/EZ-VSL: bilinear with align_corners=True, min-max,
             pixels >= sort(pred)[int(224*224*0.5)].
  slavc      stoneMo/SLAVC: bicubic with align_corners=True, scores from the
             similarity's fixed range, confidence = mean of the top quarter,
             AP / F1 / precision over positives and negative pairs.
  vssl_eval  xavijuanola/vssl_eval: the raw map (no min-max), median threshold
             for cIoU, and pIA / AOC of negative audio at a fixed threshold.

Computations are in float64 (the peers use float32 maps); the binarisation
matches wherever the float32 ordering of the pixels does.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from soundloc_tf import metrics

FRAME = 224  # every peer script scores in a 224x224 frame
AUC_STEPS = [0.05 * i for i in range(21)]  # as the peers build them (0.05*i, not linspace)
ANNOTATIONS = ("flickr", "vggss")
TEST_LISTS = {"flickr250": 250, "flickr249": 249, "vggss": 5158}
FLICKR_MISSING_ID = "3908875357"  # in the 250-id list, absent from the Flickr-SoundNet release
SLAVC_IOU_THRESHOLDS = (0.5, 0.75)
SLAVC_AREA_SUBSETS = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 144**2),
                      "huge": (144**2, 10000**2)}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One scoring protocol: where it comes from and which of its rules apply."""

    name: str
    source: str  # repository and files whose rules it re-states
    resize: str  # "half_pixel" (cv2 INTER_LINEAR), "align_corners", "bicubic_align_corners"
    map: str  # the model output it scores: "attention" or "cosine"
    definition: str


PROTOCOLS = {
    "fixed": Protocol(
        "fixed", "soundloc_tf/metrics.py", "half_pixel", "attention",
        "ground truth: annotators' box unions summed, divided by min(annotators, 2), clipped "
        "to 1; map: bilinear (half-pixel) resize, min-max; binarised by `rule` (fixed "
        "threshold by default)"),
    "lvs": Protocol(
        "lvs", "hche11/Localizing-Visual-Sounds-the-Hard-Way test.py, utils.py",
        "half_pixel", "attention",
        "ground truth: every box (int(224*v/256)) summed, halved, clipped to 1 whatever the "
        "number of boxes (VGG-SS: union); map: cv2 INTER_LINEAR resize, 1 - minmax(-map); "
        "pixels above sort(map)[224*224/2] (and pixels equal to 1) predicted"),
    "ezvsl": Protocol(
        "ezvsl", "stoneMo/EZ-VSL test.py, utils.py, datasets.py",
        "align_corners", "attention",
        "ground truth: every box summed, halved, clipped to 1 (VGG-SS too: datasets.py calls "
        "bbox2gtmap without its format); map: bilinear align_corners=True resize, min-max; "
        "pixels >= sort(map)[int(224*224*0.5)] predicted"),
    "slavc": Protocol(
        "slavc", "stoneMo/SLAVC test.py, utils.py, datasets.py",
        "bicubic_align_corners", "cosine",
        "ground truth: Flickr boxes summed and halved, VGG-SS boxes united; map: the cosine "
        "map, bicubic align_corners=True resize, scores (cos + 1) / 2 (SLAVC's fixed range "
        "[-1/tau, 1/tau] of cos/tau); pixels with score >= 0.5, or with relative_prediction "
        ">= sort(minmax(scores))[int(n*0.5)]; confidence = mean of the top quarter of scores"),
    "vssl_eval": Protocol(
        "vssl_eval", "xavijuanola/vssl_eval eval.py, utils_dir/eval_utils.py",
        "half_pixel", "cosine",
        "ground truth as slavc; map: the raw cosine map, cv2 INTER_LINEAR resize (VGG-SS; "
        "Flickr: bilinear align_corners=True), no min-max; pixels >= sort(map)[224*224/2] "
        "predicted; negatives: pIA = fraction of pixels > 0.5, AOC = area over its curve"),
}
NAMES = tuple(PROTOCOLS)


def get(name: str) -> Protocol:
    """The protocol called `name`, or a ValueError listing the known ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {NAMES}. Received: protocol={name!r}")
    return PROTOCOLS[name]


def describe(name: str) -> dict[str, str]:
    """The protocol as JSON: name, source files and definition."""
    return dataclasses.asdict(get(name))


# ---------------------------------------------------------------------------
# Resizing: separable interpolation matrices, so every rule is one formula.


def _cubic(t: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 (PyTorch's bicubic, A = -0.75)."""
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def interpolation_matrix(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """[size_out, size_in] weights resizing one axis.

    "half_pixel": bilinear with pixel centres at i + 0.5, sources clamped to
    the edge (cv2 INTER_LINEAR when upsampling, tf.image.resize bilinear);
    "align_corners": bilinear with the corner pixels aligned (PyTorch
    align_corners=True); "bicubic_align_corners": PyTorch's bicubic with
    align_corners=True, indices clamped at the border.
    """
    out = np.arange(size_out, dtype=np.float64)
    if mode == "half_pixel":
        src = np.clip((out + 0.5) * size_in / size_out - 0.5, 0.0, size_in - 1)
    elif mode in ("align_corners", "bicubic_align_corners"):
        scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        src = out * scale
    else:
        raise ValueError("mode must be 'half_pixel', 'align_corners' or "
                         f"'bicubic_align_corners'. Received: mode={mode!r}")
    low = np.floor(src).astype(np.int64)
    frac = src - low
    weights = np.zeros([size_out, size_in])
    rows = np.arange(size_out)
    if mode == "bicubic_align_corners":
        for offset, w in zip(range(-1, 3), _cubic(frac)):
            np.add.at(weights, (rows, np.clip(low + offset, 0, size_in - 1)), w)
    else:
        np.add.at(weights, (rows, np.clip(low, 0, size_in - 1)), 1.0 - frac)
        np.add.at(weights, (rows, np.clip(low + 1, 0, size_in - 1)), frac)
    return weights


def resize(maps: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Maps [N, h, w] -> [N, size, size] in float64 by `interpolation_matrix`."""
    maps = np.asarray(maps, np.float64)
    rows = interpolation_matrix(maps.shape[1], size, mode)
    cols = interpolation_matrix(maps.shape[2], size, mode)
    # Two matrix products; a three-operand einsum without a contraction path loops over
    # every (o, h, w, p) and took minutes for 224x224 maps.
    return rows @ (maps @ cols.T)


def _minmax(maps: np.ndarray) -> np.ndarray:
    """The peers' normalize_img per map: (x - min) / (max - min), a constant map left as is."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span != 0, (maps - low) / np.where(span != 0, span, 1.0), maps)


def _sorted_element(maps: np.ndarray, fraction: float) -> np.ndarray:
    """sort(map.flatten())[int(n * fraction)] per map, [N, 1, 1]."""
    flat = np.sort(maps.reshape(len(maps), -1), axis=1)
    return flat[:, int(flat.shape[1] * fraction)][:, None, None]


# ---------------------------------------------------------------------------
# Ground truth.


def box_pixels(boxes: np.ndarray, size: int = FRAME) -> np.ndarray:
    """Normalised boxes [..., 4] -> integer pixel edges int(size * v), v clipped to [0, 1].

    For Flickr XML values t (normalised as t/256 by the importer) this is
    the peers' int(224 * t / 256) exactly: t/256 and 224*t/256 are exact in
    floating point.
    """
    return np.floor(np.clip(np.asarray(boxes, np.float64), 0.0, 1.0) * size).astype(np.int64)


def ground_truth(boxes: np.ndarray, protocol: str, size: int = FRAME,
                 annotation: str = "flickr") -> np.ndarray:
    """Boxes [N, annotators, boxes, 4] (normalised, zero rows = padding) -> maps [N, size, size].

    Args:
        boxes: the records' boxes.
        protocol: a name in `NAMES`.
        size: the frame; the peers' protocols always use 224.
        annotation: "flickr" (several annotators, consensus) or "vggss" (one
            annotator, several boxes), the format the peer's loader assumes.
    """
    get(protocol)
    if annotation not in ANNOTATIONS:
        raise ValueError(f"annotation must be one of {ANNOTATIONS}. Received: "
                         f"annotation={annotation!r}")
    boxes = np.asarray(boxes, np.float32)
    if protocol == "fixed":
        return metrics.consensus_map(boxes, size).numpy().astype(np.float64)
    edges = box_pixels(boxes.reshape(len(boxes), -1, 4), size)
    pixels = np.arange(size)
    in_x = (pixels >= edges[..., 0, None]) & (pixels < edges[..., 2, None])
    in_y = (pixels >= edges[..., 1, None]) & (pixels < edges[..., 3, None])
    summed = (in_y[..., :, None] & in_x[..., None, :]).sum(axis=1).astype(np.float64)
    if annotation == "vggss" and protocol != "ezvsl":
        return (summed > 0).astype(np.float64)
    return np.minimum(summed / 2.0, 1.0)


# ---------------------------------------------------------------------------
# Predictions.


def prepare(heatmaps: np.ndarray, protocol: str, size: int = FRAME,
            annotation: str = "flickr") -> np.ndarray:
    """Model maps [N, h, w] -> the protocol's continuous map [N, size, size] before binarising.

    fixed: `metrics.normalize_heatmaps`; lvs: 1 - minmax(-resized) as LVS
    writes it; ezvsl: minmax(resized); slavc: (cos + 1) / 2; vssl_eval: the
    resized map itself.
    """
    spec = get(protocol)
    if protocol == "fixed":
        return metrics.normalize_heatmaps(heatmaps, size).numpy().astype(np.float64)
    mode = spec.resize
    if protocol == "vssl_eval" and annotation == "flickr":
        mode = "align_corners"
    maps = resize(heatmaps, size, mode)
    if protocol == "lvs":
        return 1.0 - _minmax(-maps)
    if protocol == "ezvsl":
        return _minmax(maps)
    if protocol == "slavc":
        return (maps + 1.0) / 2.0
    return maps


def binarize(prepared: np.ndarray, protocol: str, rule: str = "fixed", threshold: float = 0.5,
             relative_prediction: bool = False) -> np.ndarray:
    """The protocol's binary prediction [N, S, S] from `prepare`'s maps.

    Args:
        prepared: maps from `prepare`.
        protocol: a name in `NAMES`.
        rule, threshold: the `fixed` protocol's rule (`metrics.binarize`).
        relative_prediction: slavc's --relative_prediction: min-max the
            scores and keep the top half instead of scores >= 0.5.
    """
    get(protocol)
    maps = np.asarray(prepared, np.float64)
    if protocol == "fixed":
        return metrics.binarize(maps, rule, threshold).astype(np.float64)
    if protocol == "lvs":
        # pred[pred > thr] = 1; pred[pred < 1] = 0; then cal_CIOU keeps pred >= 0.5.
        return ((maps > _sorted_element(maps, 0.5)) | (maps >= 1.0)).astype(np.float64)
    if protocol == "slavc":
        if not relative_prediction:
            return (maps >= 0.5).astype(np.float64)
        maps = _minmax(maps)
    return (maps >= _sorted_element(maps, 0.5)).astype(np.float64)


def peer_ciou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """cal_CIOU: sum(pred*gt) / (sum(gt) + sum(pred*(gt==0))); NaN where that is 0/0."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    hit = (pred * gt).sum(axis=(1, 2))
    denom = gt.sum(axis=(1, 2)) + (pred * (gt == 0)).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return hit / denom


def peer_auc(cious: np.ndarray) -> float:
    """sklearn.metrics.auc over (0.05*i, share of cIoU >= 0.05*i), i = 0..20: a trapezoid."""
    cious = np.asarray(cious, np.float64)
    curve = np.array([np.sum(cious >= t) / len(cious) for t in AUC_STEPS])
    return float(np.trapezoid(curve, AUC_STEPS))


def summarize(cious: np.ndarray, pointing: np.ndarray) -> dict[str, float]:
    """The peers' cIoU@0.5 (AP50), mean cIoU and AUC, with soundloc's pointing game and n."""
    cious = np.asarray(cious, np.float64)
    return {"ciou_at_0_5": float(np.mean(cious >= 0.5)), "mean_ciou": float(np.mean(cious)),
            "auc": peer_auc(cious), "pointing_game": float(np.mean(pointing)),
            "n": int(len(cious))}


def score_heatmaps(heatmaps: np.ndarray, boxes: np.ndarray, protocol: str,
                   annotation: str = "flickr", rule: str = "fixed", threshold: float = 0.5,
                   size: int = FRAME) -> tuple[dict, np.ndarray]:
    """Summary and per-image cIoU of maps [N, h, w] against boxes [N, A, B, 4] under `protocol`.

    Args:
        heatmaps: the protocol's map (`Protocol.map`) of each image.
        boxes: normalised boxes, zero rows padding.
        protocol: a name in `NAMES`.
        annotation: "flickr" or "vggss" (`ground_truth`).
        rule, threshold: the fixed protocol's binarising rule.
        size: the frame of the fixed protocol (the peers' is always 224).
    """
    size = size if protocol == "fixed" else FRAME
    gt = ground_truth(boxes, protocol, size, annotation)
    maps = prepare(heatmaps, protocol, size, annotation)
    per_image = peer_ciou(binarize(maps, protocol, rule, threshold), gt)
    result = summarize(np.nan_to_num(per_image), metrics.pointing_hits(maps, gt))
    result.update(protocol=describe(protocol), annotation=annotation)
    return result, per_image


# ---------------------------------------------------------------------------
# Negative audio: SLAVC's extended sets and vssl_eval's pIA.


def slavc_confidence(scores: np.ndarray) -> np.ndarray:
    """Mean of the top quarter of each score map: np.sort(s.flatten())[-n//4:].mean()."""
    flat = np.sort(np.asarray(scores, np.float64).reshape(len(scores), -1), axis=1)
    return flat[:, (-flat.shape[1]) // 4:].mean(axis=1)


def slavc_precision_recall(boxes_count: np.ndarray, cious: np.ndarray, confidence: np.ndarray,
                           confidence_thr: float, ciou_thr: float = 0.5) -> tuple[float, float]:
    """calc_precision_recall: a detected pair without boxes is a false positive, etc."""
    detected = confidence >= confidence_thr
    visible = boxes_count > 0
    correct = np.nan_to_num(cious) >= ciou_thr
    true_pos = int(np.sum(detected & visible & correct))
    false_pos = int(np.sum(detected & ~visible) + np.sum(detected & visible & ~correct))
    false_neg = int(np.sum(~detected & visible))
    precision = 1.0 if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)
    recall = 1.0 if true_pos + false_neg == 0 else true_pos / (true_pos + false_neg)
    return precision, recall


def slavc_ap(boxes_count: np.ndarray, cious: np.ndarray, confidence: np.ndarray,
             ciou_thr: float = 0.5) -> float:
    """calc_ap: thresholds sort(conf)[:-1][::-max(1, n//200)], running-max precision."""
    step = max(1, len(cious) // 200)
    curve = [slavc_precision_recall(boxes_count, cious, confidence, t, ciou_thr)
             for t in np.sort(confidence)[:-1][::-step]]
    precision = [p for p, _ in curve]
    recall = [r for _, r in curve]
    best = [max(precision[i:]) for i in range(len(precision))]
    return float(sum(best[i] * (recall[i + 1] - recall[i]) for i in range(len(best) - 1)))


def slavc_stats(boxes_count: np.ndarray, cious: np.ndarray, confidence: np.ndarray,
                areas: np.ndarray) -> dict[str, dict[str, float | list[float] | int]]:
    """finalize_stats: Precision, F1 (list and max), AP and AUC per subset and cIoU threshold.

    Args:
        boxes_count: boxes of each pair (0 for a negative pair).
        cious: per-pair cIoU (NaN allowed for negatives).
        confidence: `slavc_confidence` of each pair.
        areas: the ground-truth map's sum per pair (the size subsets' area).
    """
    boxes_count, cious = np.asarray(boxes_count), np.asarray(cious, np.float64)
    confidence, areas = np.asarray(confidence, np.float64), np.asarray(areas, np.float64)
    subsets = {"all": np.ones(len(cious), bool), "visible": boxes_count > 0}
    subsets.update({name: (low <= areas) & (areas < high) & (boxes_count > 0)
                    for name, (low, high) in SLAVC_AREA_SUBSETS.items()})
    stats = {}
    for ciou_thr in SLAVC_IOU_THRESHOLDS:
        for name, keep in subsets.items():
            key = f"{name}@{int(ciou_thr * 100)}"
            if not keep.any():
                continue
            b, c, conf = boxes_count[keep], cious[keep], confidence[keep]
            thresholds = np.sort(conf)[::max(1, len(conf) // 10)]
            f1 = []
            for t in thresholds:
                p, r = slavc_precision_recall(b, c, conf, t, ciou_thr)
                f1.append(2 * r * p / (r + p) if r + p > 0 else 0.0)
            visible = c[b > 0]
            stats[key] = {
                "precision": slavc_precision_recall(b, c, conf, -1000, ciou_thr)[0],
                "ap": slavc_ap(b, c, conf, ciou_thr), "f1": f1, "max_f1": float(max(f1)),
                "auc": peer_auc(visible) if len(visible) else None, "n": int(keep.sum())}
    return stats


def pia(maps: np.ndarray, threshold: float | np.ndarray = 0.5) -> np.ndarray:
    """compute_pIA: the fraction of each map's pixels strictly above `threshold`."""
    maps = np.asarray(maps, np.float64)
    return (maps > np.asarray(threshold, np.float64).reshape(-1, 1, 1)).mean(axis=(1, 2))


def aoc(pia_values: np.ndarray) -> float:
    """compute_AUC_pIA: trapezoid over (0.05*i, share of pIA <= 0.05*i); 1 for silent maps."""
    values = np.asarray(pia_values, np.float64)
    curve = np.array([np.sum(values <= t) / len(values) for t in AUC_STEPS])
    return float(np.trapezoid(curve, AUC_STEPS))


# ---------------------------------------------------------------------------
# Test lists.


def select_test_list(name: str, ids: Sequence[str], list_ids: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, dict]:
    """Which of `ids` belong to the named test list, and a report with the counts.

    Args:
        name: "flickr250", "flickr249" (the 250 list without `FLICKR_MISSING_ID`)
            or "vggss" (the 5,158 entries of vggss.json).
        ids: the evaluated pairs' ids, in order.
        list_ids: the list's own ids (e.g. LVS's metadata/flickr_test.csv or
            the vggss.json "file" names); None keeps every id of `ids`
            (minus the missing id for flickr249).

    Returns:
        A bool mask over `ids` and {"name", "expected", "found", "missing"}.
    """
    if name not in TEST_LISTS:
        raise ValueError(f"test list must be one of {tuple(TEST_LISTS)}. Received: "
                         f"test_list={name!r}")
    ids = [str(i) for i in ids]
    wanted = set(ids) if list_ids is None else {str(i) for i in list_ids}
    if name == "flickr249":
        wanted.discard(FLICKR_MISSING_ID)
    keep = np.array([i in wanted for i in ids], bool)
    found = len(set(np.asarray(ids)[keep].tolist())) if keep.any() else 0
    report = {"name": name, "expected": TEST_LISTS[name], "found": found,
              "missing": sorted(wanted - set(ids))[:20]}
    return keep, report
