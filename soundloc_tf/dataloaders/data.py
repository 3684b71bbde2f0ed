"""Built-in data: synthetic sounding scenes, and the element spec all data shares.

A scene is a textured background with 1..4 objects of distinct classes.
Each class has its own shape, colour and stripe texture, and its own
sound: a harmonic tone with a class-specific pitch, number of harmonics and
amplitude modulation, plus a class-specific noise band.  One object sounds;
the others are silent distractors.  The clip mixes that sound with white
noise at a random SNR.  Scenes are pure functions of (seed, index), made
with stateless TF random ops inside the graph, so any index can be
regenerated exactly (a resumed run continues with the very scenes it would
have seen) and no files are needed.

Every data source yields the same element spec (`element_spec`):
  image     float32 [S, S, 3], RGB in [0, 1]
  waveform  float32 [N], mono at config.sample_rate
  boxes     float32 [MAX_ANNOTATORS, MAX_BOXES, 4], normalised
            [x1, y1, x2, y2]; all-zero rows are padding
  labeled   bool [], whether training may use the boxes
  class_id  int32 [], the sounding class, -1 when unknown
  id        string []
"""

from __future__ import annotations

import math

import tensorflow as tf

from soundloc_tf.config import Config

MAX_ANNOTATORS = 3
MAX_BOXES = 4
NUM_SHAPES = 8
CLIP_RMS = 0.1  # every clip is scaled to this RMS level


def element_spec(config: Config) -> dict[str, tf.TensorSpec]:
    s, n = config.image_size, config.num_samples
    return {
        "image": tf.TensorSpec([s, s, 3], tf.float32),
        "waveform": tf.TensorSpec([n], tf.float32),
        "boxes": tf.TensorSpec([MAX_ANNOTATORS, MAX_BOXES, 4], tf.float32),
        "labeled": tf.TensorSpec([], tf.bool),
        "class_id": tf.TensorSpec([], tf.int32),
        "id": tf.TensorSpec([], tf.string),
    }


# ---------------------------------------------------------------------------
# Class signatures (visual and acoustic), fixed functions of the class index.


def _class_colour(class_id: tf.Tensor, num_classes: int) -> tf.Tensor:
    hue = tf.cast(class_id, tf.float32) / num_classes
    return tf.image.hsv_to_rgb(tf.stack([hue, 0.85, 0.95]))


def _cue_colour(class_id: tf.Tensor, num_classes: int) -> tf.Tensor:
    """The context cue's colour: the class hue at half brightness, no texture."""
    hue = tf.cast(class_id, tf.float32) / num_classes + 0.5 / num_classes
    return tf.image.hsv_to_rgb(tf.stack([hue - tf.floor(hue), 0.6, 0.5]))


def _shape_masks(u: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    """Eight shapes on box coordinates u, v in [-1, 1]; each touches all four box sides."""
    au, av = tf.abs(u), tf.abs(v)
    inside = tf.maximum(au, av) <= 1.0
    r2 = u * u + v * v
    shapes = [
        r2 <= 1.0,  # disc
        inside,  # square
        inside & (au <= (v + 1.0) / 2.0),  # triangle, apex up
        au + av <= 1.0,  # diamond
        (r2 <= 1.0) & (r2 >= 0.3),  # ring
        inside & ((au <= 0.35) | (av <= 0.35)),  # plus
        inside & (tf.maximum(au, av) >= 0.55),  # frame
        inside & ((tf.abs(u - v) <= 0.4) | (tf.abs(u + v) <= 0.4)),  # X
    ]
    return tf.stack(shapes)


def _class_sound(class_id: tf.Tensor, config: Config, key: tf.Tensor) -> tf.Tensor:
    """A class's sound: harmonic tone with AM, plus a band of noise."""
    n, sr = config.num_samples, float(config.sample_rate)
    k = tf.cast(class_id, tf.float32)
    keys = tf.random.experimental.stateless_split(key, 3)
    jitter = tf.random.stateless_uniform([], keys[0], 0.97, 1.03)
    phase = tf.random.stateless_uniform([], keys[1], 0.0, 2.0 * math.pi)
    nyquist = sr / 2.0
    f0 = tf.minimum(140.0 * tf.pow(1.32, k) * jitter, nyquist / 8.0)
    t = tf.range(n, dtype=tf.float32) / sr
    harmonics = 1.0 + tf.math.floormod(k, 4.0)
    tone = tf.zeros([n])
    for h in range(1, 5):
        weight = tf.cast(h <= harmonics, tf.float32) / h
        tone += weight * tf.sin(2.0 * math.pi * f0 * h * t + phase * h)
    am_rate = 2.0 + 3.0 * tf.math.floormod(k, 3.0)
    tone *= 0.6 + 0.4 * tf.sin(2.0 * math.pi * am_rate * t)
    # Noise band centred between 1.5 and 5.5 times f0's octave above, class-specific.
    white = tf.random.stateless_normal([n], keys[2])
    spectrum = tf.signal.rfft(white)
    freqs = tf.linspace(0.0, nyquist, tf.shape(spectrum)[0])
    centre = tf.minimum(f0 * (3.0 + 2.0 * tf.math.floormod(k + 1.0, 3.0)), 0.8 * nyquist)
    band = tf.exp(-0.5 * tf.square((freqs - centre) / (0.08 * centre)))
    noise_band = tf.signal.irfft(spectrum * tf.cast(band, tf.complex64), [n])
    noise_band = noise_band / (tf.math.reduce_std(noise_band) + 1e-8)
    tone = tone / (tf.math.reduce_std(tone) + 1e-8)
    return tone + 0.5 * noise_band


# ---------------------------------------------------------------------------
# One scene.


def _box_grid(size: int, box: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Pixel-centre coordinates mapped to [-1, 1] over `box` (x1, y1, x2, y2)."""
    centres = (tf.range(size, dtype=tf.float32) + 0.5) / size
    u = (centres[None, :] - (box[0] + box[2]) / 2.0) / ((box[2] - box[0]) / 2.0)
    v = (centres[:, None] - (box[1] + box[3]) / 2.0) / ((box[3] - box[1]) / 2.0)
    return tf.broadcast_to(u, [size, size]), tf.broadcast_to(v, [size, size])


def _background(config: Config, key: tf.Tensor) -> tf.Tensor:
    s = config.image_size
    keys = tf.random.experimental.stateless_split(key, 4)
    base = tf.random.stateless_uniform([3], keys[0], 0.25, 0.6)
    angle = tf.random.stateless_uniform([], keys[1], 0.0, math.pi)
    freq = tf.random.stateless_uniform([], keys[2], 1.0, 4.0)
    coords = (tf.range(s, dtype=tf.float32) + 0.5) / s
    wave = tf.sin(2.0 * math.pi * freq * (coords[None, :] * tf.cos(angle)
                                          + coords[:, None] * tf.sin(angle)))
    noise = tf.random.stateless_normal([s, s, 1], keys[3], stddev=0.04)
    return tf.clip_by_value(base + 0.08 * wave[..., None] + noise, 0.0, 1.0)


def _object_boxes(config: Config, keys: tf.Tensor) -> tf.Tensor:
    """One box per slot, [slots, 4] (x1, y1, x2, y2), each inside the image.

    Args:
      config: the scene's sizes (`max_objects`, `min_object_size`, `max_object_size`).
      keys: the scene's keys; this draws from keys[2] to keys[5].
    """
    slots = config.max_objects
    side = tf.random.stateless_uniform([slots], keys[2], config.min_object_size,
                                       config.max_object_size)
    aspect = tf.exp(tf.random.stateless_uniform([slots], keys[3], -0.2, 0.2))
    width, height = side * aspect, side / aspect
    cx = width / 2 + tf.random.stateless_uniform([slots], keys[4]) * (1 - width)
    cy = height / 2 + tf.random.stateless_uniform([slots], keys[5]) * (1 - height)
    return tf.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], -1)


def _draw_cue(config: Config, keys: tf.Tensor, sounding_class: tf.Tensor, image: tf.Tensor
              ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The context cue: a square of a class's cue colour, that class being the sounding one
    with probability `config.confound` (no cue when it is 0).

    Args:
      config: the scene's settings (`confound`, `cue_size`, `num_classes`, `image_size`).
      keys: the scene's keys; this draws from keys[7] to keys[9].
      sounding_class: the class of slot 0.
      image: the background [S, S, 3] the cue is drawn on.

    Returns:
      (the image, the cue's box or zeros, the cue's class or -1).
    """
    if config.confound <= 0:
        return image, tf.zeros([4]), tf.constant(-1, tf.int32)
    follows = tf.random.stateless_uniform([], keys[7]) < config.confound
    random_class = tf.random.stateless_uniform([], keys[8], 0, config.num_classes,
                                               dtype=tf.int32)
    cue_class = tf.where(follows, sounding_class, random_class)
    corner = tf.random.stateless_uniform([2], keys[9], 0.0, 1.0 - config.cue_size)
    cue_box = tf.concat([corner, corner + config.cue_size], 0)
    u, v = _box_grid(config.image_size, cue_box)
    cue_mask = tf.maximum(tf.abs(u), tf.abs(v)) <= 1.0
    image = tf.where(cue_mask[..., None], _cue_colour(cue_class, config.num_classes), image)
    return image, cue_box, cue_class


# Offsets of the seed for the streams added after the 12 scene keys: the scenes drawn before
# those settings existed stay as they were.
_LOOKS_OWN_STREAM, _LOOKS_OTHER_STREAM, _LABELED_STREAM = 104_729, 130_363, 7919


def _object_looks(config: Config, key: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """The class whose appearance each slot wears: its own, or with probability
    1 - `config.object_identity` a random class's.

    Args:
      config: the scene's settings (`object_identity`, `num_classes`, `max_objects`).
      key: the scene's (seed, index) pair.
      classes: each slot's class.
    """
    if config.object_identity >= 1.0:  # separate streams: scenes at 1.0 stay as they were
        return classes
    slots = config.max_objects
    own = tf.random.stateless_uniform(
        [slots], tf.stack([key[0] + _LOOKS_OWN_STREAM, key[1]])) < config.object_identity
    other = tf.random.stateless_uniform([slots], tf.stack([key[0] + _LOOKS_OTHER_STREAM, key[1]]),
                                        0, config.num_classes, dtype=tf.int32)
    return tf.where(own, classes, other)


def _paint_objects(config: Config, image: tf.Tensor, boxes: tf.Tensor, looks: tf.Tensor,
                   active: tf.Tensor) -> tf.Tensor:
    """Draws each active slot's shape, colour and stripes (those of its look) in its box.

    Args:
      config: the scene's settings (`image_size`, `num_classes`, `max_objects`).
      image: the image [S, S, 3] to draw on.
      boxes: [slots, 4] the slots' boxes.
      looks: [slots] the class each slot looks like.
      active: [slots] whether the slot holds an object.
    """
    # Distractors first, the sounding object (slot 0) last, so it is never occluded.
    for slot in reversed(range(config.max_objects)):
        u, v = _box_grid(config.image_size, boxes[slot])
        k = looks[slot]
        mask = tf.gather(_shape_masks(u, v), tf.math.floormod(k, NUM_SHAPES)) & active[slot]
        kf = tf.cast(k, tf.float32)
        stripe_angle = kf * 2.4
        stripes = tf.sin((3.0 + 2.0 * tf.math.floormod(kf, 3.0)) * math.pi
                         * (u * tf.cos(stripe_angle) + v * tf.sin(stripe_angle)))
        colour = _class_colour(k, config.num_classes) * (0.8 + 0.2 * stripes[..., None])
        image = tf.where(mask[..., None], colour, image)
    return image


def _scene_audio(config: Config, key: tf.Tensor, sounding_class: tf.Tensor) -> tf.Tensor:
    """The clip: the sounding class's sound in white noise at a random SNR, at CLIP_RMS.

    Args:
      config: the clip's settings (`num_samples`, `min_snr_db`, `max_snr_db`).
      key: the scene's audio key (keys[11]).
      sounding_class: the class of slot 0.
    """
    audio_keys = tf.random.experimental.stateless_split(key, 3)
    signal = _class_sound(sounding_class, config, audio_keys[0])
    snr_db = tf.random.stateless_uniform([], audio_keys[1], config.min_snr_db, config.max_snr_db)
    noise = tf.random.stateless_normal([config.num_samples], audio_keys[2])
    mix = signal + noise * tf.pow(10.0, -snr_db / 20.0) * tf.math.reduce_std(signal)
    return mix * (CLIP_RMS / (tf.math.reduce_std(mix) + 1e-8))


def make_scene(config: Config, seed: int, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """Scene `index` of the stream `seed`: the common element plus analysis extras.

    Extras: `object_boxes` [max_objects, 4] and `object_classes` (slot 0
    sounds; inactive slots have class -1), `cue_box` (zeros when
    `config.confound` is 0), `cue_class` and `object_looks` (the class whose
    appearance each slot wears: its own unless `config.object_identity` < 1).

    Args:
      config: the scene settings (sizes, counts, confound, identity, SNR, labels).
      seed: the stream.
      index: the scene's position in the stream (a scalar integer tensor).
    """
    s, slots = config.image_size, config.max_objects
    index = tf.cast(index, tf.int64)
    key = tf.stack([tf.constant(seed, tf.int64), index])
    keys = tf.random.experimental.stateless_split(key, 12)

    count = tf.random.stateless_uniform([], keys[0], config.min_objects,
                                        config.max_objects + 1, dtype=tf.int32)
    order = tf.argsort(tf.random.stateless_uniform([config.num_classes], keys[1]))
    classes = tf.cast(order[:slots], tf.int32)
    active = tf.range(slots) < count
    boxes = _object_boxes(config, keys)

    image, cue_box, cue_class = _draw_cue(config, keys, classes[0], _background(config, keys[6]))
    looks = _object_looks(config, key, classes)
    image = _paint_objects(config, image, boxes, looks, active)
    pixel_noise = tf.random.stateless_normal([s, s, 3], keys[10], stddev=0.02)
    image = tf.clip_by_value(image + pixel_noise, 0.0, 1.0)

    labeled = (tf.random.stateless_uniform([], tf.stack([key[0] + _LABELED_STREAM, index]))
               < config.label_fraction)
    gt = tf.scatter_nd([[0, 0]], boxes[:1], [MAX_ANNOTATORS, MAX_BOXES, 4])
    return {
        "image": image,
        "waveform": _scene_audio(config, keys[11], classes[0]),
        "boxes": gt,
        "labeled": labeled,
        "class_id": classes[0],
        "id": tf.strings.format("synthetic/{}/{}", (seed, index)),
        "object_boxes": boxes * tf.cast(active, tf.float32)[:, None],
        "object_classes": tf.where(active, classes, -1),
        "object_looks": tf.where(active, looks, -1),
        "cue_box": cue_box,
        "cue_class": cue_class,
    }


def synthetic_dataset(config: Config, seed: int, start: int = 0, count: int | None = None,
                      with_extras: bool = False) -> tf.data.Dataset:
    """Scenes start, start+1, ... of stream `seed` (endless when count is None).

    The element at position i is scene start + i whatever the parallelism, so
    resuming at `start = step * batch_size` replays the run exactly.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0. Received: start={start}")
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1 or None. Received: count={count}")
    stop = None if count is None else start + count
    indices = tf.data.Dataset.range(start, stop) if stop is not None else \
        tf.data.Dataset.range(start, 2 ** 62)
    keys = set(element_spec(config))

    def scene(index):
        element = make_scene(config, seed, index)
        return element if with_extras else {k: element[k] for k in keys}

    return indices.map(scene, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
