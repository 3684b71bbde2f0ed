"""Evaluation protocols: random baseline, mismatched-sound partners, the audio-dependence gap,
where the map peak falls, per-class results and the two-pass evaluation itself."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf import metrics
from soundloc_tf.dataloaders import data, negatives
from soundloc_tf.config import get_config
from soundloc_tf.eval.evaluation import evaluate_detailed, mismatch_partners, predict_maps
from soundloc_tf.modeling.models import split_model
from soundloc_tf.modeling.models import build_model


def _boxes(*rows):
    return np.array(rows, np.float32)


# --- random baseline --------------------------------------------------------


def test_random_boxes_are_seeded_and_score_their_area_on_a_whole_image_truth():
    gt = np.ones([50, 40, 40], np.float32)
    summary, per_image = metrics.random_baseline(gt, seed=3)
    masks, centres = metrics.random_box_predictions(50, 40, seed=3)
    # The whole image is the truth: cIoU = box area / image area, and every centre hits.
    np.testing.assert_allclose(per_image, masks.sum(axis=(1, 2)) / 1600.0)
    assert summary["pointing_game"] == 1.0 and summary["seed"] == 3
    assert "uniformly" in summary["definition"]
    sides = masks.any(axis=1).sum(axis=1) / 40.0  # widths
    assert sides.min() >= 0.25 - 1 / 40 and sides.max() <= 0.75 + 1 / 40
    again, _ = metrics.random_box_predictions(50, 40, seed=3)
    other, _ = metrics.random_box_predictions(50, 40, seed=4)
    np.testing.assert_array_equal(masks, again)
    assert not np.array_equal(masks, other)
    assert (centres >= 0).all() and (centres < 40).all()


def test_random_baseline_pointing_uses_the_box_centre():
    masks, centres = metrics.random_box_predictions(1, 20, seed=0)
    gt = np.zeros([1, 20, 20], np.float32)
    gt[0, centres[0, 1], centres[0, 0]] = 1.0  # one pixel, under the centre
    summary, _ = metrics.random_baseline(gt, seed=0)
    assert summary["pointing_game"] == 1.0


def test_baseline_cious_match_the_summaries():
    boxes = np.zeros([2, 3, 4, 4], np.float32)
    boxes[:, 0, 0] = [[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]]
    gt = metrics.consensus_map(boxes, 16).numpy()
    cious = metrics.baseline_cious(gt, seed=0)
    np.testing.assert_allclose(cious["whole_image"], [0.25, 0.25])
    np.testing.assert_allclose(cious["center_box"], [16 / (64 + 48), 1.0])
    assert set(cious) == {"whole_image", "center_box", "random_box"}


# --- partners and the gap ---------------------------------------------------


def test_mismatch_partner_is_the_next_scene_of_another_class():
    partners = negatives.partner_indices([0, 0, 1, 2, 1])
    np.testing.assert_array_equal(partners, [2, 2, 3, 4, 0])
    # With the image's other objects forbidden too (image 0 shows classes 0 and 1).
    forbidden = np.array([[0, 1], [0, -1], [1, -1], [2, -1], [1, -1]])
    np.testing.assert_array_equal(negatives.partner_indices([0, 0, 1, 2, 1], forbidden),
                                  [3, 2, 3, 4, 0])
    np.testing.assert_array_equal(negatives.partner_indices([1, 1, 1]), [-1, -1, -1])
    np.testing.assert_array_equal(negatives.partner_indices([-1, 0, 1]), [-1, 2, 1])


def test_mismatch_falls_back_to_half_a_set_away_without_classes():
    partners, definition = mismatch_partners(np.full(6, -1))
    np.testing.assert_array_equal(partners, [3, 4, 5, 0, 1, 2])
    assert "unknown" in definition
    partners, definition = mismatch_partners(np.array([2, 0, 2, 1]))
    np.testing.assert_array_equal(partners, [1, 2, 3, 0])
    assert "differs" in definition


def test_gap_is_matched_minus_mismatched():
    matched = {"ciou_at_0_5": 0.8, "mean_ciou": 0.6, "auc": 0.55, "pointing_game": 0.9}
    mismatched = {"ciou_at_0_5": 0.3, "mean_ciou": 0.2, "auc": 0.25, "pointing_game": 0.4}
    gap = metrics.audio_dependence_gap(matched, mismatched, peak_moved=0.7)
    assert gap == pytest.approx({"ciou_at_0_5": 0.5, "mean_ciou": 0.4, "auc": 0.3,
                                 "pointing_game": 0.5, "peak_moved": 0.7})


# --- where is the peak --------------------------------------------------------


def _peak_map(row, col, size=8):
    heat = np.zeros([size, size], np.float32)
    heat[row, col] = 1.0
    return heat


def test_peak_on_cue_versus_object_on_hand_made_maps():
    # 8x8 maps scored at 8x8. Object box: top-left quarter; cue box: bottom-right quarter.
    objects = np.tile(_boxes([0.0, 0.0, 0.5, 0.5]), (4, 1))
    cues = np.tile(_boxes([0.5, 0.5, 1.0, 1.0]), (4, 1))
    maps = np.stack([_peak_map(6, 6), _peak_map(7, 5), _peak_map(1, 1), _peak_map(0, 7)])
    rates = metrics.peak_region_rates(maps, {"object": objects, "cue": cues}, size=8)
    assert rates["cue"] == {"rate": 0.5, "n": 4}
    assert rates["object"] == {"rate": 0.25, "n": 4}
    assert rates["elsewhere"] == {"rate": 0.25, "n": 4}


def test_peak_box_distance_is_zero_inside_and_euclidean_outside():
    box = np.tile(_boxes([0.25, 0.25, 0.5, 0.5]), (3, 1))
    # Peaks at pixel centres (0.3125, 0.3125) inside, (0.6875, 0.3125) right of the box,
    # (0.0625, 0.0625) beyond its top-left corner.
    maps = np.stack([_peak_map(2, 2), _peak_map(2, 5), _peak_map(0, 0)])
    distance = metrics.peak_box_distance(maps, box, size=8)
    np.testing.assert_allclose(distance, [0.0, 0.1875, np.hypot(0.1875, 0.1875)], atol=1e-9)
    with pytest.raises(ValueError, match="Received: boxes of shape"):
        metrics.peak_box_distance(maps, np.zeros([3, 2, 4]), size=8)


def test_peak_in_boxes_takes_unions_and_skips_images_without_a_box():
    maps = np.stack([_peak_map(1, 6), _peak_map(1, 6), _peak_map(1, 6)])
    boxes = np.zeros([3, 2, 4], np.float32)
    boxes[0] = [[0.0, 0.0, 0.25, 0.25], [0.75, 0.0, 1.0, 0.25]]  # second box holds the peak
    boxes[1, 0] = [0.0, 0.0, 0.25, 0.25]
    inside = metrics.peak_in_boxes(maps, boxes, size=8)
    np.testing.assert_array_equal(inside[:2], [1.0, 0.0])
    assert np.isnan(inside[2])
    # No box slots at all (one-object scenes have no distractors): every image is skipped.
    assert np.isnan(metrics.peak_in_boxes(maps, np.zeros([3, 0, 4]), size=8)).all()
    with pytest.raises(ValueError, match="Received: boxes of shape"):
        metrics.peak_in_boxes(maps, np.zeros([2, 4]), size=8)


def test_per_class_summary():
    cious = np.array([1.0, 0.0, 0.6, 0.2, 0.9])
    hits = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    result = metrics.per_class_summary(cious, hits, np.array([0, 0, 2, 2, -1]))
    assert set(result) == {"0", "2"}
    assert result["0"]["ciou_at_0_5"] == 0.5 and result["0"]["pointing_game"] == 0.5
    assert result["2"]["mean_ciou"] == pytest.approx(0.4) and result["2"]["n"] == 2


# --- the whole evaluation ---------------------------------------------------

CONFIG = get_config("tiny", confound=0.5)


@pytest.fixture(scope="module")
def deaf_model():
    """A model whose sound embedding is a constant: its maps cannot depend on the audio."""
    keras.utils.set_random_seed(1)
    model = build_model(CONFIG)
    layer = model.get_layer("localizer").get_layer("sound_fc2")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.linspace(-1, 1, len(bias)).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def scenes():
    return data.synthetic_dataset(CONFIG, CONFIG.eval_seed, count=40, with_extras=True)


@pytest.mark.slow
def test_a_map_that_ignores_the_audio_has_zero_gap(deaf_model, scenes):
    result, details = evaluate_detailed(deaf_model, CONFIG, scenes, all_rules=True,
                                        with_negatives=True)
    gap = result["audio_dependence_gap"]
    for key in ("ciou_at_0_5", "mean_ciou", "auc", "pointing_game", "peak_moved"):
        assert gap[key] == 0.0, key
    assert gap["n"] == 40
    # Negatives change nothing either: each image's confidence is the same for every sound.
    for kind in ("silence", "white_noise"):
        np.testing.assert_allclose(details.confidences[kind]["score"],
                                   details.confidences["positive"]["score"], rtol=1e-5)
    # The two-pass evaluation reproduces the whole model's maps.
    whole = predict_maps(deaf_model, scenes.batch(16))
    np.testing.assert_allclose(details.attention, whole["attention"], rtol=1e-4, atol=1e-7)
    # by_rule's fixed entry is the headline; baselines keep the keys tools rely on.
    fixed = result["by_rule"]["fixed"]
    assert {k: fixed[k] for k in metrics.SUMMARY_KEYS} == {k: result[k]
                                                           for k in metrics.SUMMARY_KEYS}
    assert set(result["by_rule"]) == {"fixed", "median", "top50"}
    assert set(result["baselines"]) == {"whole_image", "center_box"}
    assert result["random_baseline"]["seed"] == 0
    assert sum(v["n"] for v in result["per_class"].values()) == 40
    assert result["peak_location"]["cue"]["n"] == 40


def test_a_model_that_listens_has_a_different_map_for_another_sound(scenes):
    keras.utils.set_random_seed(2)
    model = build_model(CONFIG)
    result, _ = evaluate_detailed(model, CONFIG, scenes)
    assert result["audio_dependence_gap"]["peak_moved"] > 0.0


def test_evaluation_needs_a_repeatable_order(deaf_model, scenes):
    shuffled = scenes.shuffle(40, seed=None, reshuffle_each_iteration=True)
    with pytest.raises(ValueError, match="same order on every pass"):
        evaluate_detailed(deaf_model, CONFIG, shuffled)


def test_split_model_refuses_other_models():
    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match="built by soundloc_tf.modeling.models.build_model"):
        split_model(keras.Model(inputs, keras.layers.Dense(1)(inputs)))


def test_unknown_rule_is_a_clear_error(deaf_model, scenes):
    with pytest.raises(ValueError, match="Received: rule='mean'"):
        evaluate_detailed(deaf_model, CONFIG, scenes, rule="mean")


def test_group_ids_and_partners_by_group():
    from soundloc_tf.eval.evaluation import group_ids

    groups = group_ids(["hen", "duck", "rooster"], {"hen": "chicken", "rooster": "chicken"})
    assert groups == [0, 1, 0]  # sorted group names: chicken, duck
    assert group_ids(["a"], None) is None
    # Scene 0 sounds like a hen; the next scene (a rooster) is the same group, so skip to 2.
    partners, _ = mismatch_partners(np.asarray(groups)[[0, 2, 1]])
    np.testing.assert_array_equal(partners, [2, 2, 0])


def _without_boxes_at_odd_indices(scenes):
    def strip(index, element):
        keep = tf.cast(index % 2 == 0, tf.float32)
        return {**element, "boxes": element["boxes"] * keep}
    return scenes.enumerate().map(strip)


@pytest.mark.slow
def test_pairs_without_boxes_are_left_out_and_counted(deaf_model, scenes):
    """An empty ground truth would score 0 for any map; such pairs are skipped, not scored."""
    full, _ = evaluate_detailed(deaf_model, CONFIG, scenes)
    half, details = evaluate_detailed(deaf_model, CONFIG, _without_boxes_at_odd_indices(scenes),
                                      with_negatives=True)
    even, _ = evaluate_detailed(deaf_model, CONFIG, scenes.shard(2, 0))
    assert full["skipped_without_boxes"] == 0
    assert half["n"] == 20 and half["skipped_without_boxes"] == 20 and len(details.ciou) == 20
    for key in ("ciou_at_0_5", "mean_ciou", "auc", "pointing_game"):
        assert half[key] == pytest.approx(even[key])  # exactly the boxed half, scored alone
        assert half["baselines"]["whole_image"][key] == pytest.approx(
            even["baselines"]["whole_image"][key])


def test_a_set_without_any_box_is_refused(deaf_model, scenes):
    empty = scenes.map(lambda element: {**element, "boxes": element["boxes"] * 0.0})
    with pytest.raises(ValueError, match="none of the pairs has an annotated box.*40 pairs"):
        evaluate_detailed(deaf_model, CONFIG, empty)


@pytest.mark.slow
def test_a_peer_protocol_sets_the_headline_and_every_protocol_is_reported(deaf_model, scenes):
    from soundloc_tf import protocols

    result, details = evaluate_detailed(deaf_model, CONFIG, scenes, all_rules=True,
                                        with_negatives=True, protocol="lvs")
    expected, per_image = protocols.score_heatmaps(details.attention, details.boxes, "lvs")
    assert result["protocol"]["name"] == "lvs" and "hche11" in result["protocol"]["source"]
    for key in metrics.SUMMARY_KEYS:
        assert result[key] == pytest.approx(expected[key]), key
    np.testing.assert_allclose(details.ciou, per_image)
    assert set(result["by_protocol"]) == set(protocols.NAMES)
    assert result["by_protocol"]["fixed"]["ciou_at_0_5"] == result["by_rule"]["fixed"][
        "ciou_at_0_5"]
    slavc = result["negatives_by_protocol"]["slavc"]
    assert set(slavc) == {"silence", "white_noise", "offscreen", "all kinds pooled"}
    assert slavc["silence"]["all@50"]["n"] == 80  # 40 positives + 40 silent pairs
    assert 0.0 <= result["negatives_by_protocol"]["vssl_eval"]["silence"]["pia"] <= 1.0
    fixed = evaluate_detailed(deaf_model, CONFIG, scenes)[0]
    assert fixed["protocol"]["name"] == "fixed" and "by_protocol" not in fixed


def test_unknown_protocol_is_a_clear_error(deaf_model, scenes):
    with pytest.raises(ValueError, match="Received: protocol='cvpr'"):
        evaluate_detailed(deaf_model, CONFIG, scenes, protocol="cvpr")
