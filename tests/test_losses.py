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


def test_max_pooled_similarity_takes_best_location():
    visual = np.zeros([1, 2, 2, 2], np.float32)
    visual[0, 0, 0] = [1, 0]
    visual[0, 1, 1] = [0.6, 0.8]
    sound = np.array([[0, 1], [1, 0]], np.float32)
    np.testing.assert_allclose(losses.max_pooled_similarity(visual, sound).numpy(),
                               [[0.8, 1.0]], rtol=1e-6)


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
