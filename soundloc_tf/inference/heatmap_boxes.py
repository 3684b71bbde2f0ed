"""The box of a heat map: the bounding box of the region around its peak, in the graph.

The region is the connected (8-neighbour) part of the heat map that contains its peak and
lies above config.ciou_threshold (ties with the peak included: a flat map gives the whole
image).  Pixel edges follow `metrics.box_masks`: the mask of the box is exactly that
region's bounding rectangle.
"""

from __future__ import annotations

import tensorflow as tf

from soundloc_tf import metrics


def _shift(x: tf.Tensor, k: int, axis: int) -> tf.Tensor:
    """x [N, H, W] moved k places along `axis` (k > 0: towards higher indices), False shifted in."""
    kept = [slice(None)] * 3
    kept[axis] = slice(None, -k) if k > 0 else slice(-k, None)
    pad = [[0, 0]] * 3
    pad[axis] = [k, 0] if k > 0 else [0, -k]
    return tf.pad(x[tuple(kept)], pad)


def _runs(allowed: tf.Tensor, axis: int, step: int, size: int) -> list[tuple[int, tf.Tensor]]:
    """(k, mask) for k = 1, 2, 4, ... < size: the k pixels behind each pixel (in the
    direction `step` comes from) and the pixel itself are all allowed."""
    run, masks, k = allowed & _shift(allowed, step, axis), [], 1
    while k < size:
        masks.append((k, run))
        run = run & _shift(run, step * k, axis)
        k *= 2
    return masks


def _dilate(x: tf.Tensor) -> tf.Tensor:
    """The 3x3 (8-neighbour) dilation of a boolean [N, H, W]."""
    rows = x | _shift(x, 1, 2) | _shift(x, -1, 2)
    return rows | _shift(rows, 1, 1) | _shift(rows, -1, 1)


def _grow(seed: tf.Tensor, allowed: tf.Tensor, size: int) -> tf.Tensor:
    """The 8-connected component of `allowed` [N, size, size] (bool) containing `seed`.

    Each round runs the region along rows and columns through allowed pixels in
    both directions, by doubling (after steps of 1, 2, 4, ... a pixel has reached
    every allowed pixel up to 2^j away on its run), then takes one 8-neighbour
    step; the loop ends when that step adds nothing, after one or two rounds for
    the blobs heat maps hold. Only shifts and logical ops, a few microseconds each
    at 224x224, where cumulative sums, segment reductions and gathers (an earlier
    version's) each cost far more on CPU.
    """
    directions = [(axis, step, _runs(allowed, axis, step, size))
                  for axis in (2, 1) for step in (1, -1)]

    def one_round(reached, grown):
        reached = reached | grown
        for axis, step, masks in directions:
            for k, run in masks:
                reached = reached | (_shift(reached, step * k, axis) & run)
        return reached, _dilate(reached) & allowed

    start = seed & allowed
    reached, _ = tf.while_loop(lambda reached, grown: tf.reduce_any(grown & ~reached),
                               one_round, (tf.zeros_like(start), start),
                               maximum_iterations=size * size)
    return reached


def heatmaps_and_boxes(attention: tf.Tensor, size: int,
                       threshold: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Attention [N, h, w] -> heat maps [N, size, size] in [0, 1] and boxes [N, 4].

    The heat map is what evaluation scores (`metrics.normalize_heatmaps`);
    the box bounds the region grown from the peak through pixels above
    `threshold` (see the module docstring).
    """
    heatmap = metrics.normalize_heatmaps(attention, size)
    n = tf.shape(heatmap)[0]
    peak_value = tf.reduce_max(heatmap, axis=[1, 2], keepdims=True)
    allowed = (heatmap > threshold) | (heatmap >= peak_value)
    peak = tf.argmax(tf.reshape(heatmap, [n, -1]), axis=1, output_type=tf.int32)
    seed = tf.reshape(tf.one_hot(peak, size * size), [n, size, size]) > 0
    region = _grow(seed, allowed, size)
    pixels = tf.range(size)
    rows = tf.reduce_any(region, axis=2)
    cols = tf.reduce_any(region, axis=1)
    y1 = tf.reduce_min(tf.where(rows, pixels, size), axis=1)
    y2 = tf.reduce_max(tf.where(rows, pixels, -1), axis=1) + 1
    x1 = tf.reduce_min(tf.where(cols, pixels, size), axis=1)
    x2 = tf.reduce_max(tf.where(cols, pixels, -1), axis=1) + 1
    return heatmap, edges_to_unit(tf.stack([x1, y1, x2, y2], axis=1), size)


def edges_to_unit(edges: tf.Tensor, size: int) -> tf.Tensor:
    """Integer pixel edges in [0, size] -> float32 e / size with floor(value * size) == e.

    The nearest float32 to e / size can fall just below it, and `metrics.box_masks`
    (floor in float32) would then lose a pixel row; such values move up one ulp.
    """
    edges = tf.convert_to_tensor(edges)
    unit = tf.cast(tf.cast(edges, tf.float64) / float(size), tf.float32)
    short = tf.floor(unit * float(size)) < tf.cast(edges, tf.float32)
    return tf.where(short, tf.math.nextafter(unit, tf.ones_like(unit) * 2.0), unit)

