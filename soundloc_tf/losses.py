"""Losses of the paper (triplet, supervised attention) and the later literature's
alternatives (InfoNCE; LVS's hard-way loss).

Every function returns one value per example; the trainer sums them and
divides by the global batch (or by the number of labelled examples), so
the same numbers come out on one device or many.
"""

from __future__ import annotations

import tensorflow as tf

_EPS = 1e-8


def triplet_loss(visual_feature: tf.Tensor, audio_positive: tf.Tensor,
                 audio_negative: tf.Tensor) -> tf.Tensor:
    """The paper's unsupervised loss, per example.

    d+ = ||f_v - a+||, d- = ||f_v - a-||; p = softmax([d+, d-]); the loss is
    the mean squared error of p against [0, 1], which equals p[0]^2.
    """
    d_pos = tf.norm(visual_feature - audio_positive, axis=-1)
    d_neg = tf.norm(visual_feature - audio_negative, axis=-1)
    p = tf.nn.softmax(tf.stack([d_pos, d_neg], axis=-1), axis=-1)
    return tf.reduce_mean(tf.square(p - tf.constant([0.0, 1.0])), axis=-1)


def pair_cosines(visual_unit: tf.Tensor, sound_unit: tf.Tensor) -> tf.Tensor:
    """[N, h, w, C] unit visual vectors x [M, C] unit sound embeddings -> [N, M, hw].

    Entry (i, j, k) is the cosine between sound j and location k of image i.
    """
    shape = tf.shape(visual_unit)
    flat = tf.reshape(visual_unit, [shape[0], -1, shape[3]])  # [N, hw, C]
    # One matrix product per image, [M, C] x [C, hw], locations along the minor axis: no
    # [N, M, h, w] transpose of the cosines is written.
    return tf.matmul(sound_unit, flat, transpose_b=True)


def max_pooled_similarity(visual_unit: tf.Tensor, sound_unit: tf.Tensor) -> tf.Tensor:
    """[N, h, w, C] unit visual vectors x [M, C] unit sound embeddings -> [N, M].

    Entry (i, j) is the largest cosine between sound j and any location of image i.
    """
    return tf.reduce_max(pair_cosines(visual_unit, sound_unit), axis=2)


def infonce_loss(image_to_sound: tf.Tensor, sound_to_image: tf.Tensor, labels: tf.Tensor,
                 temperature: float, excluded: tf.Tensor | None = None) -> tf.Tensor:
    """Symmetric InfoNCE over the batch (LVS / EZ-VSL style), per example.

    `image_to_sound[i]` holds image i's similarity to every sound in the
    (global) batch, `sound_to_image[i]` sound i's similarity to every image;
    `labels[i]` is the index of i's own partner. `excluded` [N, M] bool marks the
    pairs that are neither positive nor negative (`same_class_pairs`); they leave
    both softmaxes.
    """
    image_to_sound, sound_to_image = image_to_sound / temperature, sound_to_image / temperature
    if excluded is not None:
        # A large finite logit, not -inf: -inf times a zero gradient is NaN.
        far = tf.cast(-1e9, image_to_sound.dtype)
        image_to_sound = tf.where(excluded, far, image_to_sound)
        sound_to_image = tf.where(excluded, far, sound_to_image)
    a = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, image_to_sound)
    b = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, sound_to_image)
    return 0.5 * (a + b)


def same_class_pairs(class_ids: tf.Tensor, all_class_ids: tf.Tensor,
                     labels: tf.Tensor) -> tf.Tensor:
    """[N] local and [M] global class ids (-1: unknown) -> [N, M] bool: pair (i, j) shares a
    known class and is not i's own partner `labels[i]`."""
    same = (class_ids[:, None] == all_class_ids[None, :]) & (class_ids[:, None] >= 0)
    own = tf.one_hot(labels, tf.shape(all_class_ids)[0], on_value=True, off_value=False)
    return same & ~own


def hard_way_loss(cosines: tf.Tensor, labels: tf.Tensor, temperature: float,
                  positive_threshold: float, negative_threshold: float,
                  mask_temperature: float) -> tf.Tensor:
    """LVS's loss ("Localizing Visual Sounds the Hard Way", Chen et al., CVPR 2021), per image.

    Where InfoNCE scores only each map's peak, this contrasts regions: image
    i's own map splits softly into a positive region (cosine above
    `positive_threshold`) and a hard negative one (below `negative_threshold`,
    the background of the same image), and the positive region's mean cosine
    must beat both the hard negative's and every other sound's positive-region
    mean on image i (the easy negatives).

    Args:
      cosines: [N, M, hw], `pair_cosines` of the N images with all M sounds.
      labels: [N], the index of each image's own sound among the M.
      temperature: of the softmax over [positive, hard negative, easy negatives].
      positive_threshold, negative_threshold: the cosines where the soft masks
        sigmoid((cos - threshold) / mask_temperature) cross one half.
      mask_temperature: how soft the masks are.
    """
    def masked_mean(values, logits):
        # Weights sigmoid(logits), normalised in the log domain: a mask whose every weight
        # underflows (no location near the threshold) still averages its largest ones.
        return tf.reduce_sum(values * tf.nn.softmax(tf.math.log_sigmoid(logits)), -1)

    # [N, M]: each pair's positive region
    region = masked_mean(cosines, (cosines - positive_threshold) / mask_temperature)
    own = tf.gather(cosines, labels, batch_dims=1)  # [N, hw]
    hard = masked_mean(own, (negative_threshold - own) / mask_temperature)
    positive = tf.gather(region, labels, batch_dims=1)
    # The own pair leaves the easy negatives: it is the positive.
    own_pair = tf.one_hot(labels, tf.shape(cosines)[1], on_value=True, off_value=False)
    easy = tf.where(own_pair, tf.constant(-1e9, region.dtype), region)
    logits = tf.concat([positive[:, None], hard[:, None], easy], axis=1) / temperature
    return -tf.nn.log_softmax(logits, axis=1)[:, 0]


def box_target_maps(boxes: tf.Tensor, map_size: int, annotator: tf.Tensor) -> tf.Tensor:
    """One annotator's boxes -> a source map on the attention grid, summing to 1.

    boxes [N, A, B, 4] normalised; annotator [N] int.  Each cell gets the
    fraction of its area that the union of boxes covers (union approximated
    by the max over boxes); maps with no box are all zero.
    """
    chosen = tf.gather(boxes, annotator, batch_dims=1)  # [N, B, 4]
    edges = tf.linspace(0.0, 1.0, map_size + 1)
    lo, hi = edges[:-1], edges[1:]

    def coverage(a, b):  # overlap of [a, b] with every cell, as a fraction of a cell
        return tf.clip_by_value(tf.minimum(b[..., None], hi) - tf.maximum(a[..., None], lo),
                                0.0, 1.0 / map_size) * map_size

    cover_x = coverage(chosen[..., 0], chosen[..., 2])  # [N, B, map]
    cover_y = coverage(chosen[..., 1], chosen[..., 3])
    cells = tf.reduce_max(cover_y[..., :, None] * cover_x[..., None, :], axis=1)  # [N, m, m]
    total = tf.reduce_sum(cells, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(cells, total)


def valid_annotators(boxes: tf.Tensor) -> tf.Tensor:
    """[N, A, B, 4] -> bool [N, A]: annotators with at least one non-empty box."""
    areas = tf.reduce_prod(boxes[..., 2:] - boxes[..., :2], axis=-1)
    return tf.reduce_any(areas > 0, axis=-1)


def cosine_attention(cosine: tf.Tensor, temperature: float) -> tf.Tensor:
    """softmax(cos / T) over each [N, m, m] map's cells: the map the supervised term reads
    when it has a temperature of its own (`Config.supervised_temperature`)."""
    flat = tf.reshape(cosine, [tf.shape(cosine)[0], -1])
    return tf.reshape(tf.nn.softmax(flat / temperature, axis=-1), tf.shape(cosine))


def attention_supervision_loss(attention: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Cross-entropy -sum_i g_i log(alpha_i) per example (zero where g is empty)."""
    log_alpha = tf.math.log(tf.maximum(attention, _EPS))
    return -tf.reduce_sum(target * log_alpha, axis=[1, 2])
