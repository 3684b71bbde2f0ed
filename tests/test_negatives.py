"""Negative audio: the sounds themselves, and AP / max-F1 on hand-computed score lists."""

import numpy as np
import pytest

from soundloc_tf import metrics
from soundloc_tf.dataloaders import data, negatives

# Positives 0.9, 0.8, 0.4 and negatives 0.7, 0.3, 0.2; from the top:
#   P(1/1) R 1/3, P(2/2) R 2/3, P(2/3) R 2/3, P(3/4) R 1, then R stays 1.
POSITIVE = np.array([0.9, 0.8, 0.4])
NEGATIVE = np.array([0.7, 0.3, 0.2])
CONFIDENCE = np.r_[POSITIVE, NEGATIVE]
LABELS = np.r_[np.ones(3, bool), np.zeros(3, bool)]


def test_average_precision_of_a_known_list():
    # (1/3)*1 + (1/3)*1 + (1/3)*(3/4)
    assert metrics.average_precision(CONFIDENCE, LABELS) == pytest.approx(11 / 12)


def test_max_f1_of_a_known_list():
    best = metrics.max_f1(CONFIDENCE, LABELS)
    # Threshold 0.4: P = 3/4, R = 1, F1 = 6/7 (beats 0.8's P = 1, R = 2/3, F1 = 0.8).
    assert best == pytest.approx({"max_f1": 6 / 7, "threshold": 0.4, "precision": 0.75,
                                  "recall": 1.0})


def test_localized_counting_as_slavc():
    # The positive at 0.8 is detected in the wrong place: a false positive, not a miss.
    #   P(1/1) R 1/3, P(1/2) R 1/2, P(1/3) R 1/2, P(2/4) R 1, ...
    correct = np.r_[True, False, True, np.zeros(3, bool)]
    assert metrics.average_precision(CONFIDENCE, LABELS, correct) == pytest.approx(
        1 / 3 + (1 / 2 - 1 / 3) * 1 / 2 + (1 - 1 / 2) * 1 / 2)
    assert metrics.max_f1(CONFIDENCE, LABELS, correct)["max_f1"] == pytest.approx(2 / 3)


def test_perfect_separation_and_ties():
    assert metrics.average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0)
    assert metrics.max_f1([0.9, 0.8, 0.1], [1, 1, 0])["max_f1"] == pytest.approx(1.0)
    # One tie group: a single threshold detecting everything, P = 2/5, R = 1.
    assert metrics.average_precision(np.full(5, 0.3), [1, 0, 1, 0, 0]) == pytest.approx(0.4)
    curve = metrics.precision_recall([0.5, 0.5, 0.2], [1, 0, 1])
    np.testing.assert_allclose(curve["threshold"], [0.5, 0.2])
    np.testing.assert_allclose(curve["precision"], [0.5, 2 / 3])
    np.testing.assert_allclose(curve["recall"], [0.5, 1.0])


def test_detection_errors_are_clear():
    with pytest.raises(ValueError, match="Received: 0 positives"):
        metrics.average_precision([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="Received: 3, 2, 2"):
        metrics.max_f1([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="must be finite"):
        metrics.average_precision([np.nan, 0.2], [1, 0])


def test_separation_report_per_kind_and_pooled():
    positive = {"score": POSITIVE, "map_peak": POSITIVE * 0.1}
    kinds = {"silence": {"score": NEGATIVE, "map_peak": NEGATIVE * 0.1},
             "white_noise": {"score": np.array([0.0, 0.1]), "map_peak": np.array([0.0, 0.01])}}
    report = negatives.separation_report(positive, kinds, positive_ciou=np.array([0.9, 0.1, 0.7]))
    silence = report["kinds"]["silence"]["score"]
    assert silence["ap"] == pytest.approx(11 / 12)
    assert silence["localized_ap"] == pytest.approx(2 / 3)
    assert silence["n_positive"] == 3 and silence["n_negative"] == 3
    assert silence["positive_mean"] == pytest.approx(0.7)
    assert report["kinds"]["white_noise"]["score"]["ap"] == pytest.approx(1.0)
    pooled = report["pooled"]["map_peak"]
    assert pooled["n_negative"] == 5 and pooled["ap"] == pytest.approx(11 / 12)
    assert set(report["definitions"]) >= set(negatives.NEGATIVE_KINDS) | set(negatives.CONFIDENCES)


def test_negative_sounds():
    assert not negatives.silence(100).any() and negatives.silence(100).shape == (1, 100)
    noise = negatives.white_noise(np.array([0, 1, 7]), 8000, seed=5)
    assert noise.shape == (3, 8000) and noise.dtype == np.float32
    np.testing.assert_allclose(noise.std(axis=1), data.CLIP_RMS, rtol=0.05)
    # Clip i depends on (seed, index) only, not on the batch it came in.
    np.testing.assert_array_equal(negatives.white_noise(np.array([7]), 8000, seed=5)[0], noise[2])
    assert not np.allclose(negatives.white_noise(np.array([7]), 8000, seed=6)[0], noise[2])
    with pytest.raises(ValueError, match="Received: num_samples=0"):
        negatives.white_noise(np.array([0]), 0, seed=0)


def test_map_peak():
    attention = np.full([2, 2, 2], 0.25, np.float32)
    attention[1] = [[0.7, 0.1], [0.1, 0.1]]
    np.testing.assert_allclose(negatives.map_peak(attention), [0.25, 0.7])


def test_offscreen_partner_avoids_every_class_in_the_image():
    sound = np.array([0, 1, 2, 3])
    shown = np.array([[0, 1, 2], [1, -1, -1], [2, 3, -1], [3, 0, 1]])
    np.testing.assert_array_equal(negatives.partner_indices(sound, shown), [3, 2, 0, 2])
