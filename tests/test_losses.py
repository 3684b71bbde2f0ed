"""Losses on known distances and maps."""

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf import losses


def test_triplet_loss_on_known_distances():
    anchor = np.zeros([2, 3], np.float32)
    positive = np.array([[1, 0, 0], [3, 0, 0]], np.float32)  # d+ = 1, 3
    negative = np.array([[0, 3, 0], [0, 1, 0]], np.float32)  # d- = 3, 1
    got = losses.triplet_loss(anchor, positive, negative).numpy()
    p_close = 1 / (1 + np.exp(2.0))  # softmax([1, 3])[0]
    p_far = 1 / (1 + np.exp(-2.0))  # softmax([3, 1])[0]
    # MSE of [p, 1 - p] against [0, 1] = p^2
    np.testing.assert_allclose(got, [p_close ** 2, p_far ** 2], rtol=1e-6)
    assert got[0] < got[1]


def test_infonce_is_log_batch_for_uninformative_and_small_for_diagonal():
    labels = tf.range(4)
    flat = tf.zeros([4, 4])
    np.testing.assert_allclose(losses.infonce_loss(flat, flat, labels, 0.07).numpy(),
                               np.log(4.0), rtol=1e-6)
    diagonal = tf.eye(4)
    assert losses.infonce_loss(diagonal, diagonal, labels, 0.07).numpy().max() < 1e-5


def test_infonce_without_same_class_negatives_is_infonce_over_the_other_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=[4, 4]).astype(np.float32)
    labels = tf.range(4)
    classes = tf.constant([0, 0, 1, -1])  # -1: unknown, never excluded
    excluded = losses.same_class_pairs(classes, classes, labels)
    np.testing.assert_array_equal(excluded.numpy(), [[0, 1, 0, 0], [1, 0, 0, 0],
                                                     [0, 0, 0, 0], [0, 0, 0, 0]])
    got = losses.infonce_loss(logits, logits.T, labels, 0.5, excluded).numpy()

    def nce(row: np.ndarray, own: int, keep: list[int]) -> float:
        z = row[keep] / 0.5
        return float(np.log(np.exp(z).sum()) - row[own] / 0.5)

    # Pair 0 without column/row 1, pair 1 without 0; pairs 2 and 3 as plain InfoNCE.
    keeps = [[0, 2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    expected = [0.5 * (nce(logits[i], i, k) + nce(logits[:, i], i, k))
                for i, k in enumerate(keeps)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    plain = losses.infonce_loss(logits, logits.T, labels, 0.5).numpy()
    np.testing.assert_allclose(got[2:], plain[2:], rtol=1e-6)
    assert np.all(got[:2] < plain[:2])  # fewer negatives, smaller loss


def test_max_pooled_similarity_takes_best_location():
    visual = np.zeros([1, 2, 2, 2], np.float32)
    visual[0, 0, 0] = [1, 0]
    visual[0, 1, 1] = [0.6, 0.8]
    sound = np.array([[0, 1], [1, 0]], np.float32)
    np.testing.assert_allclose(losses.max_pooled_similarity(visual, sound).numpy(),
                               [[0.8, 1.0]], rtol=1e-6)


def _hard_way(cosines, temperature=0.07):
    return losses.hard_way_loss(tf.constant(cosines, tf.float32), tf.range(len(cosines)),
                                temperature, 0.65, 0.4, 0.03).numpy()


def test_hard_way_loss_rewards_a_region_that_stands_out_of_its_own_background():
    # Two images, two sounds, four locations: each image's own sound lights two of them.
    cosines = np.full([2, 2, 4], 0.1, np.float32)
    cosines[0, 0, :2] = cosines[1, 1, 2:] = 0.9
    contrasted = _hard_way(cosines)
    assert contrasted.max() < 1e-3
    # The same peak over a bright background: the hard negative now matches the positive.
    flat_background = cosines.copy()
    flat_background[0, 0] = flat_background[1, 1] = 0.9
    assert _hard_way(flat_background).min() > np.log(2.0) - 1e-3
    # Another sound lighting the image as much as its own is an easy negative that ties.
    confused = cosines.copy()
    confused[0, 1, :2] = 0.9
    assert _hard_way(confused)[0] == pytest.approx(np.log(2.0), abs=1e-3)


def test_hard_way_loss_on_known_regions():
    """Hard masks (tiny mask temperature): the regions' plain means against each other."""
    cosines = np.array([[[0.9, 0.7, 0.2, 0.0], [0.8, 0.1, 0.1, 0.1]]], np.float32)
    got = losses.hard_way_loss(tf.constant(cosines), tf.constant([0]), 0.1, 0.65, 0.4,
                               1e-4).numpy()
    positive, hard, easy = (0.9 + 0.7) / 2, (0.2 + 0.0) / 2, 0.8
    logits = np.array([positive, hard, easy]) / 0.1
    np.testing.assert_allclose(got, [np.log(np.exp(logits).sum()) - logits[0]], rtol=1e-5)


def test_hard_way_loss_pushes_the_own_background_down_and_the_region_up():
    cosines = tf.Variable(np.tile(np.array([0.7, 0.6, 0.3, 0.35], np.float32), [2, 2, 1]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.hard_way_loss(cosines, tf.range(2), 0.07, 0.65, 0.4, 0.03))
    own = tape.gradient(loss, cosines).numpy()[0, 0]
    assert own[0] < 0 and own[2] > 0 and own[3] > 0  # descent raises the region, lowers the rest


def test_box_target_covers_cells_by_area_and_sums_to_one():
    boxes = np.zeros([1, 3, 4, 4], np.float32)
    boxes[0, 0, 0] = [0.0, 0.0, 0.5, 0.375]  # 2 cells wide, 1.5 cells high on a 4x4 grid
    target = losses.box_target_maps(boxes, 4, tf.constant([0])).numpy()[0]
    expected = np.zeros([4, 4]); expected[0, :2] = 1.0; expected[1, :2] = 0.5
    np.testing.assert_allclose(target, expected / expected.sum(), rtol=1e-6)


def test_box_target_is_zero_without_boxes():
    target = losses.box_target_maps(np.zeros([1, 3, 4, 4], np.float32), 4, tf.constant([0]))
    assert np.all(target.numpy() == 0)


def test_attention_supervision_is_cross_entropy():
    attention = np.full([1, 2, 2], 0.25, np.float32)
    target = np.array([[[0.5, 0.5], [0, 0]]], np.float32)
    got = losses.attention_supervision_loss(attention, target).numpy()
    assert got[0] == pytest.approx(-np.log(0.25), rel=1e-6)


def test_cosine_attention_is_the_softmax_of_the_cosine_map_over_its_cells():
    cosine = tf.random.stateless_uniform([3, 4, 4], seed=[1, 2], minval=-1.0, maxval=1.0)
    alpha = losses.cosine_attention(cosine, 0.1)
    expected = tf.nn.softmax(tf.reshape(cosine, [3, 16]) / 0.1, axis=-1)
    np.testing.assert_allclose(tf.reshape(alpha, [3, 16]).numpy(), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(tf.reduce_sum(alpha, [1, 2]).numpy(), 1.0, rtol=1e-6)


def test_a_supervised_temperature_lets_a_map_that_peaks_in_the_box_score_a_low_loss():
    """Cosine 1 on the boxed cell and 0 elsewhere, 400 cells: at T = 1 the cross-entropy
    stays near ln 400 (the boxes cannot shape the map); at T = 0.05 it falls near 0."""
    from soundloc_tf.config import get_config
    from soundloc_tf.train import training

    cosine = np.zeros([1, 20, 20], np.float32)
    cosine[0, 5, 5] = 1.0
    boxes = np.zeros([1, 1, 1, 4], np.float32)
    boxes[0, 0, 0] = [5 / 20, 5 / 20, 6 / 20, 6 / 20]
    batch = {"boxes": tf.constant(boxes), "labeled": tf.constant([True])}

    def supervised(temperature: float) -> float:
        config = get_config("paper", label_fraction=1.0, unsupervised_loss="none",
                            supervised_temperature=temperature)
        outputs = {"attention": losses.cosine_attention(tf.constant(cosine), 1.0),
                   "cosine": tf.constant(cosine), "score": tf.constant([1.0])}
        terms = training.compute_losses(config, outputs, batch, 1, tf.constant([0]))
        return float(terms["supervised"])

    at_one = np.log(np.e + 399) - 1  # -log(e / (e + 399))
    assert supervised(0.0) == pytest.approx(at_one, rel=1e-5)
    assert supervised(1.0) == pytest.approx(at_one, rel=1e-5)
    assert supervised(0.05) == pytest.approx(np.log(1 + 399 * np.exp(-20)), abs=1e-5)


def test_a_negative_supervised_temperature_is_refused_naming_it():
    from soundloc_tf.config import get_config

    with pytest.raises(ValueError, match="supervised_temperature=-1"):
        get_config("paper", supervised_temperature=-1.0)
