"""Each named protocol against a straight re-statement of its peer's formula, image by image.

The references below are written independently of soundloc_tf.protocols:
per-pixel resize formulas, Flickr XMLs parsed as the peers' loaders do,
ground truths built box by box, cal_CIOU and sklearn's auc.
"""

import math
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from sklearn.metrics import auc as sklearn_auc

from soundloc_tf import metrics, protocols
from soundloc_tf.dataloaders import importers

# --- independent references ---------------------------------------------------


def ref_bilinear_half_pixel(m, size):
    """cv2 INTER_LINEAR upsampling: source x = (dx + 0.5) * w / size - 0.5, clamped."""
    h, w = m.shape
    out = np.zeros([size, size])
    for oy in range(size):
        sy = min(max((oy + 0.5) * h / size - 0.5, 0.0), h - 1)
        y0 = int(math.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for ox in range(size):
            sx = min(max((ox + 0.5) * w / size - 0.5, 0.0), w - 1)
            x0 = int(math.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            out[oy, ox] = ((1 - fy) * ((1 - fx) * m[y0, x0] + fx * m[y0, x1])
                           + fy * ((1 - fx) * m[y1, x0] + fx * m[y1, x1]))
    return out


def ref_bilinear_align_corners(m, size):
    """F.interpolate(mode='bilinear', align_corners=True): source = dst * (in - 1) / (out - 1)."""
    h, w = m.shape
    ys = np.arange(size) * (h - 1) / (size - 1)
    xs = np.arange(size) * (w - 1) / (size - 1)
    y0 = np.floor(ys).astype(int); x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1); x1 = np.minimum(x0 + 1, w - 1)
    fy = (ys - y0)[:, None]; fx = (xs - x0)[None, :]
    return ((1 - fy) * ((1 - fx) * m[np.ix_(y0, x0)] + fx * m[np.ix_(y0, x1)])
            + fy * ((1 - fx) * m[np.ix_(y1, x0)] + fx * m[np.ix_(y1, x1)]))


def ref_bicubic_align_corners(m, size, a=-0.75):
    """F.interpolate(mode='bicubic', align_corners=True), taps clamped at the border."""
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0
    h, w = m.shape

    def taps(n_in, dst):
        src = dst * (n_in - 1) / (size - 1)
        base = math.floor(src)
        return [(min(max(base + k, 0), n_in - 1), kernel(src - (base + k))) for k in (-1, 0, 1, 2)]
    across = np.stack([sum(wx * m[:, ix] for ix, wx in taps(w, ox)) for ox in range(size)], 1)
    return np.stack([sum(wy * across[iy] for iy, wy in taps(h, oy)) for oy in range(size)], 0)


def normalize_img(value):
    vmin, vmax = value.min(), value.max()
    if not (vmax - vmin) == 0:
        value = (value - vmin) / (vmax - vmin)
    return value


def cal_ciou(infer, gtmap, thres):
    infer_map = np.zeros((224, 224))
    infer_map[infer >= thres] = 1
    return np.sum(infer_map * gtmap) / (np.sum(gtmap) + np.sum(infer_map * (gtmap == 0)))


def ref_flickr_gt(xml_path):
    """The LVS / EZ-VSL / SLAVC Flickr loader: every bbox summed, /2, clipped at 1."""
    gt_map = np.zeros([224, 224])
    for child in ElementTree.parse(xml_path).getroot():
        for childs in child:
            if childs.tag == "bbox":
                x1, y1, x2, y2 = [int(224 * int(ch.text) / 256) for ch in list(childs)[1:]]
                temp = np.zeros([224, 224]); temp[y1:y2, x1:x2] = 1
                gt_map += temp
    gt_map /= 2
    gt_map[gt_map > 1] = 1
    return gt_map


def ref_lvs_ciou(heat, gt_map):
    pred = 1 - normalize_img(-ref_bilinear_half_pixel(heat, 224))
    threshold = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] / 2)]
    pred[pred > threshold] = 1
    pred[pred < 1] = 0
    return cal_ciou(pred, gt_map, 0.5)


def ref_ezvsl_ciou(heat, gt_map):
    pred = normalize_img(ref_bilinear_align_corners(heat, 224))
    thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] * 0.5)]
    return cal_ciou(pred, gt_map, thr)


# --- fixtures ---------------------------------------------------------------------


def write_xml(path, boxes):
    """A Flickr-SoundNet annotation: <annotation><object><bbox><label/>xmin ymin xmax ymax."""
    root = ElementTree.Element("annotation")
    obj = ElementTree.SubElement(root, "object")
    for label, coords in boxes:
        bbox = ElementTree.SubElement(obj, "bbox")
        ElementTree.SubElement(bbox, "label").text = label
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), coords):
            ElementTree.SubElement(bbox, tag).text = str(value)
    ElementTree.ElementTree(root).write(path)


XMLS = {
    "one_box": [("a", (40, 60, 150, 200))],
    "two_annotators": [("a", (10, 10, 120, 130)), ("b", (50, 40, 200, 180))],
    "three_annotators": [("a", (0, 0, 128, 256)), ("b", (0, 0, 128, 256)),
                         ("c", (128, 0, 256, 256))],
    "overlap_one_annotator": [("a", (20, 20, 140, 140)), ("a", (80, 80, 230, 210)),
                              ("b", (30, 30, 100, 100))],
}


def xml_boxes(path):
    """The importer's reading of an XML as the [annotators, boxes, 4] array of the records."""
    boxes = np.zeros([3, 4, 4], np.float32)
    for a, annotator in enumerate(importers.parse_flickr_xml(path)):
        boxes[a, :len(annotator)] = annotator
    return boxes


@pytest.fixture(scope="module")
def xml_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("Annotations")
    paths = []
    for name, boxes in XMLS.items():
        paths.append(os.path.join(folder, name + ".xml"))
        write_xml(paths[-1], boxes)
    return paths


def heatmaps(size, count, seed):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=[count, size, size]).astype(np.float32)
    maps[0] = np.round(maps[0] * 2) / 2  # many ties, some at the median
    return maps


# --- resizing ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 14, 20])
def test_resize_matches_per_pixel_formulas(size):
    m = heatmaps(size, 1, seed=size)[0].astype(np.float64)
    np.testing.assert_allclose(protocols.resize(m[None], 224, "half_pixel")[0],
                               ref_bilinear_half_pixel(m, 224), atol=1e-9)
    np.testing.assert_allclose(protocols.resize(m[None], 224, "align_corners")[0],
                               ref_bilinear_align_corners(m, 224), atol=1e-9)
    np.testing.assert_allclose(protocols.resize(m[None], 224, "bicubic_align_corners")[0],
                               ref_bicubic_align_corners(m, 224), atol=1e-9)


def test_half_pixel_resize_is_tf_bilinear():
    m = heatmaps(14, 2, seed=3)
    tf_maps = metrics.normalize_heatmaps(m, 224).numpy()
    ours = protocols.resize(m, 224, "half_pixel")
    low, high = ours.min(axis=(1, 2), keepdims=True), ours.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose((ours - low) / (high - low), tf_maps, atol=1e-5)


# --- ground truth ------------------------------------------------------------------


def test_peer_ground_truth_equals_the_xml_loaders(xml_set):
    for path in xml_set:
        expected = ref_flickr_gt(path)
        for name in ("lvs", "ezvsl", "slavc", "vssl_eval"):
            gt = protocols.ground_truth(xml_boxes(path)[None], name)[0]
            np.testing.assert_array_equal(gt, expected, err_msg=f"{name} {path}")


def test_one_box_is_half_under_the_peers_and_whole_under_fixed(xml_set):
    boxes = xml_boxes(xml_set[0])[None]  # one annotator, one box
    peer = protocols.ground_truth(boxes, "lvs")
    fixed = protocols.ground_truth(boxes, "fixed")
    assert set(np.unique(peer)) == {0.0, 0.5} and set(np.unique(fixed)) == {0.0, 1.0}
    # int(224*40/256)=35 .. int(224*150/256)=131 wide, 52 .. 175 high
    assert peer.sum() == 0.5 * (131 - 35) * (175 - 52)


def test_overlapping_boxes_of_one_annotator_add_up_for_the_peers(xml_set):
    boxes = xml_boxes(xml_set[3])[None]
    peer = protocols.ground_truth(boxes, "ezvsl")[0]
    fixed = protocols.ground_truth(boxes, "fixed")[0]
    inside_both = (int(224 * 90 / 256), int(224 * 90 / 256))  # in both of annotator a's boxes
    assert peer[inside_both] == 1.0  # 2 boxes of a + b's box = 3 / 2 -> 1
    only_a_twice = (int(224 * 130 / 256), int(224 * 130 / 256))  # a's two boxes, not b's
    assert peer[only_a_twice] == 1.0 and fixed[only_a_twice] == 0.5


def test_vggss_ground_truth_per_peer():
    boxes = np.zeros([1, 3, 4, 4], np.float32)
    boxes[0, 0, 0] = [0.1, 0.2, 0.6, 0.7]
    boxes[0, 0, 1] = [0.4, 0.4, 0.9, 0.95]
    united = protocols.ground_truth(boxes, "slavc", annotation="vggss")[0]
    halved = protocols.ground_truth(boxes, "ezvsl", annotation="vggss")[0]
    ref = np.zeros([224, 224])
    for x1, y1, x2, y2 in boxes[0, 0, :2]:
        x1, y1, x2, y2 = (np.clip(np.array([x1, y1, x2, y2], np.float64), 0, 1) * 224).astype(int)
        temp = np.zeros([224, 224]); temp[y1:y2, x1:x2] = 1
        ref += temp
    np.testing.assert_array_equal(united, (ref > 0).astype(float))
    np.testing.assert_array_equal(halved, np.minimum(ref / 2, 1))
    np.testing.assert_array_equal(protocols.ground_truth(boxes, "lvs", annotation="vggss")[0],
                                  united)


# --- per-image cIoU ----------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 14, 20])
def test_lvs_and_ezvsl_ciou_image_by_image(xml_set, size):
    maps = heatmaps(size, len(xml_set), seed=size)
    boxes = np.stack([xml_boxes(p) for p in xml_set])
    for name, reference in (("lvs", ref_lvs_ciou), ("ezvsl", ref_ezvsl_ciou)):
        result, per_image = protocols.score_heatmaps(maps, boxes, name)
        expected = [reference(m.astype(np.float64), ref_flickr_gt(p))
                    for m, p in zip(maps, xml_set)]
        np.testing.assert_allclose(per_image, expected, atol=1e-6, err_msg=name)
        assert result["auc"] == pytest.approx(
            sklearn_auc(protocols.AUC_STEPS,
                        [np.sum(np.array(expected) >= t) / len(expected)
                         for t in protocols.AUC_STEPS]), abs=1e-12)
        assert result["protocol"]["name"] == name


def test_lvs_keeps_pixels_at_the_maximum_when_the_median_is_the_maximum():
    # A 224x224 map resizes to itself exactly, so its ties survive into the threshold
    # (interpolated plateaus tie or not by float rounding, in any implementation).
    heat = np.zeros([1, 224, 224], np.float32)
    heat[0, :, :144] = 1.0  # 144/224 of the map at the maximum: the median element is 1
    boxes = np.zeros([1, 3, 4, 4], np.float32)
    boxes[0, 0, 0] = [0.0, 0.0, 0.5, 1.0]
    boxes[0, 1, 0] = [0.0, 0.0, 0.5, 1.0]
    _, lvs = protocols.score_heatmaps(heat, boxes, "lvs")
    gt = np.zeros([224, 224]); gt[:, :112] = 1.0
    assert lvs[0] == pytest.approx(ref_lvs_ciou(heat[0].astype(np.float64), gt), abs=1e-6)
    assert lvs[0] > 0.5  # a "strictly above the median" rule alone would predict nothing
    _, ez = protocols.score_heatmaps(heat, boxes, "ezvsl")
    assert ez[0] == pytest.approx(ref_ezvsl_ciou(heat[0].astype(np.float64), gt), abs=1e-6)


def test_false_alarms_weigh_double_against_a_single_box_under_lvs():
    # Binarised by the median, the blurred map predicts pixels beside the box: against
    # LVS's halved truth (0.5 inside) they cost twice what they cost against fixed's 1.
    heat = np.zeros([1, 8, 8], np.float32); heat[0, :, :4] = 1.0
    boxes = np.zeros([1, 3, 4, 4], np.float32); boxes[0, 0, 0] = [0.0, 0.0, 0.5, 1.0]
    fixed, _ = protocols.score_heatmaps(heat, boxes, "fixed", rule="median")
    lvs, per_image = protocols.score_heatmaps(heat, boxes, "lvs")
    gt = np.zeros([224, 224]); gt[:, :112] = 0.5
    assert per_image[0] == pytest.approx(ref_lvs_ciou(heat[0].astype(np.float64), gt), abs=1e-6)
    assert fixed["mean_ciou"] > lvs["mean_ciou"]


def test_slavc_and_vssl_eval_ciou_image_by_image(xml_set):
    rng = np.random.default_rng(0)
    cosine = np.tanh(rng.normal(size=[len(xml_set), 7, 7])).astype(np.float32)
    boxes = np.stack([xml_boxes(p) for p in xml_set])
    _, slavc = protocols.score_heatmaps(cosine, boxes, "slavc")
    _, vssl = protocols.score_heatmaps(cosine, boxes, "vssl_eval", annotation="vggss")
    for i, path in enumerate(xml_set):
        gt = ref_flickr_gt(path)
        scores = (ref_bicubic_align_corners(cosine[i].astype(np.float64), 224)
                  - (-1 / 0.03)) / (2 / 0.03)  # heat = cos / tau; min_max_norm to [-1/tau, 1/tau]
        infer = (scores >= 0.5).astype(float)
        expected = np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0)))
        assert slavc[i] == pytest.approx(expected, abs=1e-6)
        pred = ref_bilinear_half_pixel(cosine[i].astype(np.float64), 224)
        thr = np.sort(pred.flatten())[int(224 * 224 / 2)]
        assert vssl[i] == pytest.approx(cal_ciou(pred, (gt > 0).astype(float), thr), abs=1e-6)


# --- negatives ------------------------------------------------------------------------


def ref_slavc_pr(bb_list, ciou_list, conf_list, conf_thr, ciou_thr=0.5):
    tp = fp = fn = 0
    for bb, ciou, conf in zip(bb_list, ciou_list, conf_list):
        if bb == 0:
            if conf >= conf_thr:
                fp += 1
        elif conf >= conf_thr:
            if ciou >= ciou_thr:
                tp += 1
            else:
                fp += 1
        else:
            fn += 1
    return (1.0 if tp + fp == 0 else tp / (tp + fp)), (1.0 if tp + fn == 0 else tp / (tp + fn))


def test_slavc_statistics_match_the_evaluator():
    rng = np.random.default_rng(5)
    n = 450  # above 200, so the AP takes every second threshold
    bb = np.where(rng.uniform(size=n) < 0.3, 0, rng.integers(1, 4, size=n))
    cious = np.where(bb > 0, rng.uniform(size=n), np.nan)
    conf = np.round(rng.uniform(size=n) + 0.3 * (bb > 0), 2)  # ties
    areas = rng.uniform(0, 224 * 224, size=n)
    stats = protocols.slavc_stats(bb, cious, conf, areas)
    for ciou_thr in (0.5, 0.75):
        thresholds = np.sort(conf)[:-1][::-(n // 200)]
        curve = [ref_slavc_pr(bb, cious, conf, t, ciou_thr) for t in thresholds]
        pmax = [max(p for p, _ in curve[i:]) for i in range(len(curve))]
        ap = sum(pmax[i] * (curve[i + 1][1] - curve[i][1]) for i in range(len(pmax) - 1))
        f1 = [2 * r * p / (r + p) if r + p > 0 else 0.0
              for p, r in (ref_slavc_pr(bb, cious, conf, t, ciou_thr)
                           for t in list(sorted(conf))[::n // 10])]
        entry = stats[f"all@{int(ciou_thr * 100)}"]
        assert entry["ap"] == pytest.approx(ap, abs=1e-12)
        assert entry["f1"] == pytest.approx(f1, abs=1e-12)
        assert entry["precision"] == pytest.approx(ref_slavc_pr(bb, cious, conf, -1000,
                                                                ciou_thr)[0])
    visible = cious[bb > 0]
    assert stats["visible@50"]["auc"] == pytest.approx(sklearn_auc(
        protocols.AUC_STEPS, [np.sum(visible >= t) / len(visible) for t in protocols.AUC_STEPS]))
    assert stats["small@50"]["n"] == int(np.sum((areas < 32**2) & (bb > 0)))


def test_slavc_confidence_is_the_top_quarter_mean():
    scores = np.arange(50176, dtype=np.float64).reshape(1, 224, 224)
    assert protocols.slavc_confidence(scores)[0] == pytest.approx(
        np.sort(scores.flatten())[-50176 // 4:].mean())
    odd = np.arange(10, dtype=np.float64).reshape(1, 2, 5)  # -10//4 = -3: the top 3
    assert protocols.slavc_confidence(odd)[0] == pytest.approx(8.0)


def test_pia_and_aoc():
    maps = np.zeros([4, 224, 224])
    maps[1, :112] = 0.7  # half the image above 0.5
    maps[2] = 0.5  # at the threshold: not above it
    maps[3, :56] = 0.9  # a quarter
    values = protocols.pia(maps)
    np.testing.assert_allclose(values, [0.0, 0.5, 0.0, 0.25])
    expected = sklearn_auc(protocols.AUC_STEPS,
                           [np.sum(values <= t) / 4 for t in protocols.AUC_STEPS])
    assert protocols.aoc(values) == pytest.approx(expected)
    assert protocols.aoc(np.zeros(3)) == pytest.approx(1.0)


# --- test lists and errors --------------------------------------------------------------


def test_flickr_lists_by_name_report_their_counts():
    ids = [str(1000 + i) for i in range(249)] + [protocols.FLICKR_MISSING_ID]
    keep, report = protocols.select_test_list("flickr250", ids)
    assert keep.sum() == 250 and report["found"] == 250 and report["expected"] == 250
    keep, report = protocols.select_test_list("flickr249", ids)
    assert keep.sum() == 249 and not keep[-1] and report["expected"] == 249
    keep, report = protocols.select_test_list("vggss", ids[:10], list_ids=ids[5:15])
    assert keep.sum() == 5 and report["found"] == 5 and report["expected"] == 5158
    assert report["missing"] == sorted(ids[10:15])


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="Received: protocol='cvpr'"):
        protocols.get("cvpr")
    with pytest.raises(ValueError, match="Received: test_list='flickr'"):
        protocols.select_test_list("flickr", [])
    with pytest.raises(ValueError, match="Received: annotation='coco'"):
        protocols.ground_truth(np.zeros([1, 3, 4, 4]), "lvs", annotation="coco")
