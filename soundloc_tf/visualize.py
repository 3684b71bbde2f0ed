"""Heat-map overlays (in-graph), used by TensorBoard summaries, evaluation and serving tools."""

from __future__ import annotations

import tensorflow as tf

OVERLAY_OPACITY = 0.5


def colorize(maps: tf.Tensor) -> tf.Tensor:
    """Maps [N, H, W] in [0, 1] -> RGB [N, H, W, 3] with a jet-like colour map."""
    x = tf.clip_by_value(tf.convert_to_tensor(maps, tf.float32), 0.0, 1.0)[..., None]
    r = tf.clip_by_value(1.5 - tf.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = tf.clip_by_value(1.5 - tf.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = tf.clip_by_value(1.5 - tf.abs(4.0 * x - 1.0), 0.0, 1.0)
    return tf.concat([r, g, b], axis=-1)


def overlay(images: tf.Tensor, heatmaps: tf.Tensor) -> tf.Tensor:
    """Images [N, H, W, 3] in [0, 1] and heat maps [N, h, w] -> blended RGB in [0, 1].

    The heat map is resized bilinearly to the image and min-max normalised.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    size = tf.shape(images)[1:3]
    maps = tf.image.resize(tf.convert_to_tensor(heatmaps, tf.float32)[..., None], size)[..., 0]
    low = tf.reduce_min(maps, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    maps = (maps - low) / tf.maximum(high - low, 1e-12)
    return (1.0 - OVERLAY_OPACITY) * images + OVERLAY_OPACITY * colorize(maps)


def draw_boxes(images: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Draws normalised [x1, y1, x2, y2] boxes [N, B, 4] in white."""
    y1x1y2x2 = tf.gather(tf.convert_to_tensor(boxes, tf.float32), [1, 0, 3, 2], axis=-1)
    return tf.image.draw_bounding_boxes(images, y1x1y2x2, tf.constant([[1.0, 1.0, 1.0]]))
