"""cIoU, AUC and pointing game on hand-computed cases."""

import numpy as np
import pytest

from soundloc_tf import metrics


def _box(x1, y1, x2, y2):
    boxes = np.zeros([1, 3, 4, 4], np.float32)
    boxes[0, 0, 0] = [x1, y1, x2, y2]
    return boxes


def test_box_mask_covers_exactly_the_sliced_pixels():
    mask = metrics.box_masks(np.array([0.25, 0.5, 0.75, 1.0], np.float32), 8).numpy()
    expected = np.zeros([8, 8])
    expected[4:8, 2:6] = 1
    np.testing.assert_array_equal(mask, expected)


def test_consensus_of_three_annotators_is_sum_over_two_clipped():
    boxes = np.zeros([1, 3, 4, 4], np.float32)
    boxes[0, 0, 0] = [0.0, 0.0, 0.5, 1.0]  # left half
    boxes[0, 1, 0] = [0.0, 0.0, 0.5, 1.0]  # left half again
    boxes[0, 2, 0] = [0.5, 0.0, 1.0, 1.0]  # right half
    gt = metrics.consensus_map(boxes, 4).numpy()[0]
    np.testing.assert_array_equal(gt[:, :2], 1.0)  # two votes -> 1
    np.testing.assert_array_equal(gt[:, 2:], 0.5)  # one vote -> 0.5


def test_single_annotator_map_is_binary():
    gt = metrics.consensus_map(_box(0, 0, 0.5, 0.5), 4).numpy()[0]
    assert set(np.unique(gt)) == {0.0, 1.0}
    assert gt.sum() == 4


def test_ciou_perfect_empty_and_half_overlap():
    gt = np.zeros([1, 4, 4]); gt[0, :, :2] = 1  # 8 pixels
    perfect = gt.copy()
    empty = np.zeros_like(gt)
    half = np.zeros_like(gt); half[0, :, 1:3] = 1  # 4 on gt, 4 false alarms
    assert metrics.ciou(perfect, gt)[0] == pytest.approx(1.0)
    assert metrics.ciou(empty, gt)[0] == pytest.approx(0.0)
    assert metrics.ciou(half, gt)[0] == pytest.approx(4 / (8 + 4))


def test_ciou_with_consensus_half_pixels():
    gt = np.zeros([1, 2, 2]); gt[0, 0, 0] = 1.0; gt[0, 0, 1] = 0.5
    pred = np.zeros([1, 2, 2]); pred[0, 0, 1] = 1; pred[0, 1, 1] = 1
    # hit = 0.5, sum gt = 1.5, false alarm = 1 (pixel (1,1)); 0.5 / 2.5
    assert metrics.ciou(pred, gt)[0] == pytest.approx(0.2)


def test_auc_of_known_scores():
    assert metrics.auc(np.ones(10)) == pytest.approx(1.0)
    assert metrics.auc(np.zeros(10)) == pytest.approx(0.05 / 2)  # only threshold 0 succeeds
    # all cIoU = 0.5: success 1 for t <= 0.5, 0 above -> area 0.5 + half a step
    assert metrics.auc(np.full(4, 0.5)) == pytest.approx(0.5 + 0.025)


def test_binarize_rules():
    maps = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
    assert metrics.binarize(maps, "fixed", 0.5).sum() == 8
    assert metrics.binarize(maps, "median").sum() == 8
    assert metrics.binarize(maps, "top50").sum() == 8
    assert metrics.binarize(maps, "fixed", 0.9).sum() == 2
    with pytest.raises(ValueError, match="Received: rule='mean'"):
        metrics.binarize(maps, "mean")


def test_score_heatmaps_perfect_map_and_baselines():
    boxes = _box(0.0, 0.0, 0.5, 0.5)
    heat = np.zeros([1, 224, 224], np.float32); heat[0, :112, :112] = 1.0
    result, per_image = metrics.score_heatmaps(heat, boxes, 224, "fixed", 0.5)
    assert per_image[0] == pytest.approx(1.0)
    # From an 8x8 map, bilinear upsampling blurs the edge by half a cell.
    coarse = np.zeros([1, 8, 8], np.float32); coarse[0, :4, :4] = 1.0
    _, per_image = metrics.score_heatmaps(coarse, boxes, 224, "fixed", 0.5)
    assert 0.99 < per_image[0] < 1.0
    assert result["ciou_at_0_5"] == 1.0 and result["pointing_game"] == 1.0
    whole = result["baselines"]["whole_image"]
    assert whole["mean_ciou"] == pytest.approx(0.25)  # a quarter of the image
    assert whole["pointing_game"] == pytest.approx(0.25)
    centre = result["baselines"]["center_box"]
    # centre box [56, 168)^2 overlaps gt [0,112)^2 in 56x56 = 1/4 of it
    assert centre["mean_ciou"] == pytest.approx(56 * 56 / (112 * 112 + 3 * 56 * 56))
    assert centre["pointing_game"] == 0.0  # centre pixel (112,112) is outside
