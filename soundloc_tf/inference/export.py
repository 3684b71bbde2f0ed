"""Exports a trained model as a TensorFlow Serving SavedModel.

The SavedModel is written with `keras.export.ExportArchive` in TF Serving's
versioned layout, `<export_base>/<model_name>/<version>/`, first into a
hidden temporary directory that is renamed into place when complete, so a
server polling the base path never sees half a model.  Two signatures, both
`tensorflow/serving/predict`:

  serving_default   image_bytes  string  [N]         JPEG or PNG file bytes
                    wav_bytes    string  [N]         WAV file bytes
  serving_tensors   image        float32 [N, S, S, 3] RGB in [0, 1]
                    waveform     float32 [N, T]      mono at config.sample_rate

  outputs (both)    heatmap      float32 [N, H, H]   attention, bilinear to H x H
                                                      (H = heatmap_size, default
                                                      config.eval_size), min-max
                                                      normalised to [0, 1]
                    box          float32 [N, 4]      [x1, y1, x2, y2] in [0, 1]
                    score        float32 [N]         max cosine: sound-image match

Everything between the bytes and the outputs is core TensorFlow ops (TF
Serving loads no custom ops):

* Images: JPEG or PNG (8- or 16-bit; grayscale, palette, RGBA converted to
  RGB, alpha dropped; an animated PNG gives its first frame), turned as
  their EXIF orientation says (JPEG APP1 "Exif", PNG eXIf).  Each side
  must lie in [1, MAX_IMAGE_SIDE]; the size is read from the header before
  decoding, so a 10,000 x 10,000 image is rejected without allocating it.
  The image is resized (bilinear, antialiased) to config.image_size square;
  `box` is normalised, so it applies to the original image unchanged.
* Sound: RIFF/WAVE, PCM 8/16/24/32-bit or IEEE float 32/64-bit (also as
  WAVE_FORMAT_EXTENSIBLE), any channel count (averaged to mono), sample rate
  in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz.  The middle clip_seconds are
  used; the rate is converted with a windowed-sinc anti-aliasing low-pass
  (when downsampling) and linear interpolation; a shorter sound, down to a
  single sample, is repeated to fill the clip.
* Box: the bounding box of the connected (8-neighbour) region of the heat
  map that contains its peak and lies above config.ciou_threshold (ties
  with the peak included: a flat map gives the whole image).  Pixel edges
  follow `metrics.box_masks`: the mask of the box is exactly that region's
  bounding rectangle.

Invalid input fails the whole request with an InvalidArgument error (HTTP
400 from TF Serving) whose message names the input and instance, e.g.
"image_bytes[2]: image is 10000x10000 pixels (width x height); each side
must lie in [1, 4096]".  A corrupt body behind a valid header fails in the
decoder, whose message does not name the instance.  `serving_tensors`
rejects NaN or infinite values and clips images to [0, 1].

The export also holds assets.extra/tf_serving_warmup_requests, real
requests to both signatures that TF Serving replays before serving the
version.  On a full disk the export fails with one OSError line and leaves
no staging directory behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf import metrics
from soundloc_tf.config import Config

MAX_IMAGE_SIDE = 4096
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 192000
BYTES_SIGNATURE = "serving_default"
TENSORS_SIGNATURE = "serving_tensors"
OUTPUT_KEYS = ("heatmap", "box", "score")
# TF Serving ignores assets.extra/; tools read the export's settings from here.
EXPORT_INFO_PATH = os.path.join("assets.extra", "soundloc_export.json")
# PredictionLog records TF Serving replays before it serves a version, so the
# first user request does not pay for the graph's first run.
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Anti-aliasing low-pass when downsampling: cutoff at ROLLOFF x the new
# Nyquist frequency, Hann-windowed sinc with SINC_ZEROS zero crossings a side.
ROLLOFF = 0.9
SINC_ZEROS = 8
# The chunk walk of a WAV file stops after this many chunks.
MAX_WAV_CHUNKS = 256
# The EXIF search reads at most this many JPEG segments or PNG chunks, and IFD entries.
MAX_IMAGE_SEGMENTS = 64
MAX_EXIF_ENTRIES = 256

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# WAV sample encodings, the index is the tf.switch_case branch.
_PCM_U8, _PCM_S16, _PCM_S24, _PCM_S32, _FLOAT32, _FLOAT64 = range(6)


# ---------------------------------------------------------------------------
# In-graph checks and byte readers.


def _check(condition: tf.Tensor, template: str, *values: tf.Tensor) -> tf.Operation:
    """An assertion whose message is `template` formatted with `values` in the graph."""
    message = tf.strings.format(template, values) if values else template
    return tf.debugging.Assert(condition, [message], summarize=1)


class _Where:
    """Names an input in error messages: "image_bytes[3]" inside a batch, else "image_bytes"."""

    def __init__(self, name: str, index: tf.Tensor | None = None):
        self.template = name.replace("{", "{{").replace("}", "}}")
        self.values: tuple = ()
        if index is not None:
            self.template += "[{}]"
            self.values = (index,)

    def check(self, condition: tf.Tensor, template: str, *values: tf.Tensor) -> tf.Operation:
        """`template` follows the name, e.g. ": not a WAV file ({} bytes)"."""
        return _check(condition, self.template + template, *self.values, *values)


def _header(contents: tf.Tensor, size: int) -> tf.Tensor:
    """The first `size` bytes, zero-padded: safe to slice however short the input is."""
    return tf.strings.join([tf.strings.substr(contents, 0, size), b"\0" * size])


def _read_uint(contents: tf.Tensor, pos: tf.Tensor, size: int,
               big_endian: bool = False) -> tf.Tensor:
    """Unsigned integer of `size` bytes at byte `pos` (the caller checks the bounds)."""
    raw = tf.io.decode_raw(tf.strings.substr(contents, pos, size), tf.uint8)
    raw = tf.cast(tf.reshape(raw, [size]), tf.int64)
    order = range(size - 1, -1, -1) if big_endian else range(size)
    return tf.reduce_sum(raw * tf.constant([256 ** i for i in order], tf.int64))


# ---------------------------------------------------------------------------
# Images.


def _image_shape(contents: tf.Tensor, is_png: tf.Tensor, where: _Where) -> tf.Tensor:
    """[height, width] from the file header, without decoding the pixels."""
    length = tf.cast(tf.strings.length(contents), tf.int64)

    def png_shape():
        header = _header(contents, 24)
        ok = (length >= 24) & tf.equal(tf.strings.substr(header, 12, 4), "IHDR")
        with tf.control_dependencies([where.check(ok, ": PNG header is truncated or has no "
                                                          "IHDR chunk")]):
            return tf.stack([_read_uint(header, tf.constant(20, tf.int64), 4, True),
                             _read_uint(header, tf.constant(16, tf.int64), 4, True)])

    def jpeg_shape():
        return tf.cast(tf.io.extract_jpeg_shape(contents)[:2], tf.int64)

    return tf.cond(is_png, png_shape, jpeg_shape)


def decode_image(contents: tf.Tensor, size: int, name: str = "image_bytes",
                 index: tf.Tensor | None = None) -> tf.Tensor:
    """One JPEG/PNG file's bytes -> float32 [size, size, 3] RGB in [0, 1].

    Error messages name the input `name` and, within a batch, its `index`.
    """
    where = _Where(name, index)
    contents = tf.convert_to_tensor(contents, tf.string)
    length = tf.strings.length(contents)
    header = _header(contents, len(_PNG_MAGIC))
    is_png = tf.equal(tf.strings.substr(header, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(header, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    known = where.check(is_png | is_jpeg, ": not a JPEG or PNG image ({} bytes)", length)
    with tf.control_dependencies([known]):
        shape = _image_shape(contents, is_png, where)
    height, width = shape[0], shape[1]
    fits = ((height >= 1) & (width >= 1) & (height <= MAX_IMAGE_SIDE)
            & (width <= MAX_IMAGE_SIDE))
    check_size = where.check(fits, ": image is {}x{} pixels (width x height); each side must "
                             f"lie in [1, {MAX_IMAGE_SIDE}]", width, height)
    with tf.control_dependencies([check_size]):
        image = tf.io.decode_image(contents, channels=3, dtype=tf.float32,
                                   expand_animations=False)
    orientation = tf.cond(is_png, lambda: _png_orientation(contents, length),
                          lambda: _jpeg_orientation(contents, length))
    return resize_image(apply_orientation(image, orientation), size)


# ---------------------------------------------------------------------------
# EXIF orientation: cameras store pixels as the sensor saw them and say in EXIF
# how to turn them; browsers and Pillow's exif_transpose show the turned picture.


def _uint_at(contents: tf.Tensor, length: tf.Tensor, pos: tf.Tensor, size: int,
             big_endian: tf.Tensor) -> tf.Tensor:
    """Unsigned integer of `size` bytes at `pos` in either byte order; 0 when out of bounds."""
    pos = tf.cast(pos, tf.int64)
    inside = (pos >= 0) & (pos + size <= length)
    padded = tf.strings.join([contents, b"\0" * size])
    safe = tf.clip_by_value(pos, 0, length)
    value = tf.where(big_endian, _read_uint(padded, safe, size, True),
                     _read_uint(padded, safe, size, False))
    return tf.where(inside, value, tf.zeros_like(value))


def _tiff_orientation(contents: tf.Tensor, length: tf.Tensor, tiff: tf.Tensor) -> tf.Tensor:
    """The Orientation tag (0x0112) of IFD0 of the TIFF block at `tiff`; 1 when absent or bad."""
    order = tf.strings.substr(contents, tf.minimum(tiff, length), 2)
    big = tf.equal(order, "MM")
    ifd = tiff + _uint_at(contents, length, tiff + 4, 4, big)
    count = tf.minimum(_uint_at(contents, length, ifd, 2, big), MAX_EXIF_ENTRIES)

    def keep_going(i, found):
        return (i < count) & (found < 0)

    def next_entry(i, found):
        entry = ifd + 2 + 12 * i
        tag = _uint_at(contents, length, entry, 2, big)
        value = _uint_at(contents, length, entry + 8, 2, big)
        return i + 1, tf.where(tf.equal(tag, 0x0112), value, found)

    _, found = tf.while_loop(keep_going, next_entry,
                             (tf.constant(0, tf.int64), tf.constant(-1, tf.int64)))
    known = (tf.equal(order, "MM") | tf.equal(order, "II")) & (found >= 1) & (found <= 8)
    return tf.where(known, found, tf.constant(1, tf.int64))


def _jpeg_orientation(contents: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """EXIF orientation of a JPEG: its APP1 "Exif" segment, searched up to the scan."""
    length = tf.cast(length, tf.int64)
    no_tiff = tf.constant(-1, tf.int64)

    def keep_going(pos, tiff):
        return (tiff < 0) & (pos + 10 <= length)

    def next_segment(pos, tiff):
        marker = _uint_at(contents, length, pos, 2, tf.constant(True))
        size = _uint_at(contents, length, pos + 2, 2, tf.constant(True))
        is_exif = tf.equal(marker, 0xFFE1) & tf.equal(
            tf.strings.substr(contents, tf.minimum(pos + 4, length), 6), b"Exif\0\0")
        # Not a marker, or the start of the scan: no EXIF before the pixels.
        stop = tf.not_equal(marker // 256, 0xFF) | tf.equal(marker, 0xFFDA) | (size < 2)
        tiff = tf.where(is_exif, pos + 10, tiff)
        return tf.where(stop & ~is_exif, length, pos + 2 + size), tiff

    _, tiff = tf.while_loop(keep_going, next_segment, (tf.constant(2, tf.int64), no_tiff),
                            maximum_iterations=MAX_IMAGE_SEGMENTS)
    return tf.cond(tiff >= 0, lambda: _tiff_orientation(contents, length, tiff),
                   lambda: tf.constant(1, tf.int64))


def _png_orientation(contents: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """EXIF orientation of a PNG: its eXIf chunk, searched up to the first IDAT."""
    length = tf.cast(length, tf.int64)
    no_tiff = tf.constant(-1, tf.int64)

    def keep_going(pos, tiff):
        return (tiff < 0) & (pos + 12 <= length)

    def next_chunk(pos, tiff):
        size = _uint_at(contents, length, pos, 4, tf.constant(True))
        kind = tf.strings.substr(contents, tf.minimum(pos + 4, length), 4)
        tiff = tf.where(tf.equal(kind, "eXIf"), pos + 8, tiff)
        return tf.where(tf.equal(kind, "IDAT"), length, pos + 12 + size), tiff

    _, tiff = tf.while_loop(keep_going, next_chunk, (tf.constant(8, tf.int64), no_tiff),
                            maximum_iterations=MAX_IMAGE_SEGMENTS)
    return tf.cond(tiff >= 0, lambda: _tiff_orientation(contents, length, tiff),
                   lambda: tf.constant(1, tf.int64))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """[H, W, C] as stored -> as displayed, for EXIF orientation 1..8 (others: unchanged)."""
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,                                   # 1: as stored
        lambda: tf.image.flip_left_right(image),         # 2: mirrored
        lambda: tf.image.rot90(image, 2),                # 3: upside down
        lambda: tf.image.flip_up_down(image),            # 4: mirrored, upside down
        transposed,                                      # 5: mirrored, turned
        lambda: tf.image.rot90(image, 3),                # 6: turned: show it 90 deg clockwise
        lambda: tf.image.rot90(transposed(), 2),         # 7: mirrored, turned the other way
        lambda: tf.image.rot90(image, 1),                # 8: show it 90 deg anticlockwise
    ]
    index = tf.cast(orientation, tf.int32) - 1
    index = tf.where((index >= 0) & (index < 8), index, 0)
    return tf.switch_case(index, branches)


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
    """float RGB [H, W, 3] in [0, 1] -> [size, size, 3]: bilinear, antialiased when shrinking."""
    image = tf.image.resize(image[None], [size, size], method="bilinear", antialias=True)[0]
    image = tf.clip_by_value(image, 0.0, 1.0)
    image.set_shape([size, size, 3])
    return image


# ---------------------------------------------------------------------------
# Sound.


def _wav_chunks(contents: tf.Tensor, length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Byte offsets of the "fmt " and "data" payloads, and the data size (-1: not found)."""

    def keep_going(offset, fmt_pos, data_pos, data_size):
        return (data_pos < 0) & (offset + 8 <= length)

    def next_chunk(offset, fmt_pos, data_pos, data_size):
        chunk_id = tf.strings.substr(contents, offset, 4)
        size = _read_uint(contents, offset + 4, 4)
        is_fmt = tf.equal(chunk_id, "fmt ") & (fmt_pos < 0)
        is_data = tf.equal(chunk_id, "data")
        fmt_pos = tf.where(is_fmt, offset + 8, fmt_pos)
        # A streamed WAV may declare more data than it holds: keep what is there.
        data_size = tf.where(is_data, tf.minimum(size, length - offset - 8), data_size)
        data_pos = tf.where(is_data, offset + 8, data_pos)
        return offset + 8 + size + size % 2, fmt_pos, data_pos, data_size

    minus_one = tf.constant(-1, tf.int64)
    _, fmt_pos, data_pos, data_size = tf.while_loop(
        keep_going, next_chunk, (tf.constant(12, tf.int64), minus_one, minus_one, minus_one),
        maximum_iterations=MAX_WAV_CHUNKS)
    return fmt_pos, data_pos, data_size


def _decode_samples(raw: tf.Tensor, encoding: tf.Tensor) -> tf.Tensor:
    """Little-endian sample bytes -> float32 samples, full scale at +-1."""

    def pcm_u8():
        return (tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.float32) - 128.0) / 128.0

    def pcm_s16():
        return tf.cast(tf.io.decode_raw(raw, tf.int16), tf.float32) / 32768.0

    def pcm_s24():
        b = tf.reshape(tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.int32), [-1, 3])
        value = b[:, 0] + b[:, 1] * 256 + b[:, 2] * 65536
        value = tf.where(value >= 2 ** 23, value - 2 ** 24, value)
        return tf.cast(value, tf.float32) / float(2 ** 23)

    def pcm_s32():
        return tf.cast(tf.cast(tf.io.decode_raw(raw, tf.int32), tf.float64) / 2.0 ** 31,
                       tf.float32)

    def float32():
        return tf.io.decode_raw(raw, tf.float32)

    def float64():
        return tf.cast(tf.io.decode_raw(raw, tf.float64), tf.float32)

    return tf.switch_case(tf.cast(encoding, tf.int32),
                          [pcm_u8, pcm_s16, pcm_s24, pcm_s32, float32, float64])


def decode_wav(contents: tf.Tensor, max_seconds: float, name: str = "wav_bytes",
               index: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """One WAV file's bytes -> (mono float32 samples [F], sample rate int64).

    Only the middle `max_seconds` are decoded: a long file costs no more
    than a clip.  Supported encodings are listed in the module docstring.
    """
    where = _Where(name, index)
    contents = tf.convert_to_tensor(contents, tf.string)
    length = tf.cast(tf.strings.length(contents), tf.int64)
    header = _header(contents, 12)
    is_wav = ((length >= 12) & tf.equal(tf.strings.substr(header, 0, 4), "RIFF")
              & tf.equal(tf.strings.substr(header, 8, 4), "WAVE"))
    with tf.control_dependencies([where.check(is_wav, ": not a RIFF/WAVE file ({} bytes)",
                                              length)]):
        fmt_pos, data_pos, data_size = _wav_chunks(contents, length)
    found = where.check((fmt_pos >= 0) & (fmt_pos + 16 <= length) & (data_pos >= 0),
                        ": WAV file has no complete format (fmt) chunk before its data chunk")
    with tf.control_dependencies([found]):
        tag = _read_uint(contents, fmt_pos, 2)
        channels = _read_uint(contents, fmt_pos + 2, 2)
        rate = _read_uint(contents, fmt_pos + 4, 4)
        block_align = _read_uint(contents, fmt_pos + 12, 2)
        bits = _read_uint(contents, fmt_pos + 14, 2)

    def extensible_tag():
        ok = where.check(fmt_pos + 26 <= length, ": WAVE_FORMAT_EXTENSIBLE header is truncated")
        with tf.control_dependencies([ok]):
            return _read_uint(contents, fmt_pos + 24, 2)

    tag = tf.cond(tf.equal(tag, 0xFFFE), extensible_tag, lambda: tag)
    pcm, floating = tf.equal(tag, 1), tf.equal(tag, 3)
    encoding = tf.where(
        pcm, tf.where(tf.equal(bits, 8), _PCM_U8, tf.where(tf.equal(bits, 16), _PCM_S16,
                      tf.where(tf.equal(bits, 24), _PCM_S24, _PCM_S32))),
        tf.where(tf.equal(bits, 32), _FLOAT32, _FLOAT64))
    supported = ((pcm & ((bits == 8) | (bits == 16) | (bits == 24) | (bits == 32)))
                 | (floating & ((bits == 32) | (bits == 64))))
    checks = [
        where.check(supported, ": unsupported WAV encoding (format tag {}, {} bits); expected "
                    "PCM 8/16/24/32-bit or IEEE float 32/64-bit", tag, bits),
        where.check((channels >= 1) & tf.equal(block_align, channels * (bits // 8)),
                    ": inconsistent WAV header ({} channels, {} bits, block align {})",
                    channels, bits, block_align),
        where.check((rate >= MIN_SAMPLE_RATE) & (rate <= MAX_SAMPLE_RATE),
                    ": sample rate {} Hz is outside the supported range "
                    f"[{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz", rate),
    ]
    with tf.control_dependencies(checks):
        frames = data_size // block_align
    with tf.control_dependencies([where.check(frames >= 1, ": WAV file holds no audio samples")]):
        wanted = tf.cast(tf.math.ceil(max_seconds * tf.cast(rate, tf.float64)), tf.int64)
        count = tf.minimum(frames, wanted)
        start = (frames - count) // 2
        raw = tf.strings.substr(contents, data_pos + start * block_align, count * block_align)
    samples = tf.reshape(_decode_samples(raw, encoding), [count, channels])
    finite = where.check(tf.reduce_all(tf.math.is_finite(samples)),
                         ": WAV file holds NaN or infinite samples")
    with tf.control_dependencies([finite]):
        mono = tf.reduce_mean(samples, axis=1)
    return mono, rate


def _lowpass(samples: tf.Tensor, ratio: tf.Tensor) -> tf.Tensor:
    """Windowed-sinc low-pass below ROLLOFF x the Nyquist frequency of rate / ratio."""
    cutoff = ROLLOFF * 0.5 / ratio  # cycles per input sample
    half = tf.cast(tf.math.ceil(SINC_ZEROS / (2.0 * cutoff)), tf.int32)
    k = tf.cast(tf.range(-half, half + 1), tf.float64)
    window = 0.5 + 0.5 * tf.cos(np.pi * k / tf.cast(half + 1, tf.float64))
    kernel = 2.0 * cutoff * _sinc(2.0 * cutoff * k) * window
    kernel = tf.cast(kernel / tf.reduce_sum(kernel), tf.float32)
    filtered = tf.nn.conv1d(samples[None, :, None], kernel[:, None, None], 1, "SAME")
    return filtered[0, :, 0]


def _sinc(x: tf.Tensor) -> tf.Tensor:
    safe = tf.where(tf.equal(x, 0.0), tf.ones_like(x), x)
    return tf.where(tf.equal(x, 0.0), tf.ones_like(x), tf.sin(np.pi * safe) / (np.pi * safe))


def resample(samples: tf.Tensor, rate: tf.Tensor, target_rate: int) -> tf.Tensor:
    """Mono samples [F] at `rate` -> [round(F * target_rate / rate)] at `target_rate`."""
    samples = tf.convert_to_tensor(samples, tf.float32)
    rate = tf.cast(rate, tf.float64)

    def convert():
        ratio = rate / float(target_rate)  # input samples per output sample
        x = tf.cond(ratio > 1.0, lambda: _lowpass(samples, ratio), lambda: samples)
        count = tf.shape(x, out_type=tf.int64)[0]
        out = tf.maximum(tf.cast(tf.round(tf.cast(count, tf.float64) / ratio), tf.int64), 1)
        position = tf.cast(tf.range(out), tf.float64) * ratio
        left = tf.minimum(tf.cast(tf.floor(position), tf.int64), count - 1)
        right = tf.minimum(left + 1, count - 1)
        fraction = tf.cast(position - tf.cast(left, tf.float64), tf.float32)
        return tf.gather(x, left) * (1.0 - fraction) + tf.gather(x, right) * fraction

    return tf.cond(tf.equal(rate, float(target_rate)), lambda: samples, convert)


def fit_clip(samples: tf.Tensor, num_samples: int) -> tf.Tensor:
    """[F] -> [num_samples]: the middle of a longer sound, a shorter one repeated."""
    samples = tf.convert_to_tensor(samples, tf.float32)
    count = tf.shape(samples)[0]
    start = tf.maximum(count - num_samples, 0) // 2
    repeats = (num_samples + count - 1) // count
    clip = tf.tile(samples[start:], [repeats])[:num_samples]
    clip.set_shape([num_samples])
    return clip


def decode_sound(contents: tf.Tensor, config: Config, name: str = "wav_bytes",
                 index: tf.Tensor | None = None) -> tf.Tensor:
    """One WAV file's bytes -> the model's waveform, float32 [config.num_samples]."""
    samples, rate = decode_wav(contents, config.clip_seconds, name, index)
    return fit_clip(resample(samples, rate, config.sample_rate), config.num_samples)


# ---------------------------------------------------------------------------
# Batches.


def _same_batch(a: tf.Tensor, b: tf.Tensor, a_name: str, b_name: str) -> list[tf.Operation]:
    n, m = tf.shape(a)[0], tf.shape(b)[0]
    return [_check(n >= 1, f"{a_name} is empty; send at least one instance"),
            _check(tf.equal(n, m), f"{a_name} has {{}} instances but {b_name} has {{}}; "
                   "they must pair up", n, m)]


def decode_batch(image_bytes: tf.Tensor, wav_bytes: tf.Tensor,
                 config: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """string [N] x 2 -> images [N, S, S, 3] and waveforms [N, num_samples]."""
    with tf.control_dependencies(_same_batch(image_bytes, wav_bytes, "image_bytes",
                                             "wav_bytes")):
        index = tf.range(tf.shape(image_bytes)[0])

    def one(args):
        image, wav, i = args
        return (decode_image(image, config.image_size, "image_bytes", i),
                decode_sound(wav, config, "wav_bytes", i))

    s, t = config.image_size, config.num_samples
    return tf.map_fn(one, (image_bytes, wav_bytes, index),
                     fn_output_signature=(tf.TensorSpec([s, s, 3], tf.float32),
                                          tf.TensorSpec([t], tf.float32)))


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


def localize_fn(model: keras.Model, config: Config,
                heatmap_size: int | None = None) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    """(images, waveforms) -> {"heatmap", "box", "score"}: the signatures' shared tail."""
    size = heatmap_size or config.eval_size

    def run(images: tf.Tensor, waveforms: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model({"image": images, "waveform": waveforms}, training=False)
        heatmap, box = heatmaps_and_boxes(outputs["attention"], size, config.ciou_threshold)
        return {"heatmap": heatmap, "box": box, "score": outputs["score"]}

    return run


def serving_functions(model: keras.Model, config: Config,
                      heatmap_size: int | None = None) -> dict[str, tuple[Callable, list]]:
    """Signature name -> (function, input signature) for both signatures."""
    run = localize_fn(model, config, heatmap_size)
    s, t = config.image_size, config.num_samples

    def serving_default(image_bytes, wav_bytes):
        images, waveforms = decode_batch(image_bytes, wav_bytes, config)
        return run(images, waveforms)

    def serving_tensors(image, waveform):
        checks = _same_batch(image, waveform, "image", "waveform") + [
            _check(tf.reduce_all(tf.math.is_finite(image)), "image holds NaN or infinite values"),
            _check(tf.reduce_all(tf.math.is_finite(waveform)),
                   "waveform holds NaN or infinite values")]
        with tf.control_dependencies(checks):
            image = tf.clip_by_value(image, 0.0, 1.0)
            waveform = tf.identity(waveform)
        return run(image, waveform)

    return {
        BYTES_SIGNATURE: (serving_default, [tf.TensorSpec([None], tf.string, "image_bytes"),
                                            tf.TensorSpec([None], tf.string, "wav_bytes")]),
        TENSORS_SIGNATURE: (serving_tensors, [tf.TensorSpec([None, s, s, 3], tf.float32, "image"),
                                              tf.TensorSpec([None, t], tf.float32, "waveform")]),
    }


# ---------------------------------------------------------------------------
# Writing the SavedModel.


# The largest version TF Serving can address (int64).
MAX_VERSION = 2 ** 63 - 1


def next_version(model_dir: str) -> int:
    """1 + the largest integer version directory in `model_dir` (1 when none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir)
                # isascii: '²'.isdigit() is True but int('²') fails (N12).
                if d.isascii() and d.isdigit() and os.path.isdir(os.path.join(model_dir, d))]
    return max(versions, default=0) + 1


def export_model(model: keras.Model, config: Config, export_base: str,
                 model_name: str = "soundloc", version: int | None = None,
                 heatmap_size: int | None = None, extra_info: dict | None = None) -> str:
    """Writes <export_base>/<model_name>/<version>/ and returns its path.

    `version` defaults to the next integer; an existing version is never
    overwritten.  The directory appears complete or not at all.
    """
    if not _MODEL_NAME.fullmatch(model_name or ""):
        raise ValueError("model_name must be letters, digits, '_', '.' or '-', not starting "
                         f"with '.' or '-'. Received: model_name={model_name!r}")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or not 1 <= version <= MAX_VERSION):
        # TF Serving addresses versions as int64 (gRPC's Int64Value): a larger one is
        # written but can never be asked for.
        raise ValueError(f"version must be an integer in [1, {MAX_VERSION}] (int64, as TF "
                         f"Serving addresses versions). Received: version={version!r}")
    heatmap_size = heatmap_size or config.eval_size
    if not 8 <= heatmap_size <= 1024:
        raise ValueError(f"heatmap_size must lie in [8, 1024]. Received: "
                         f"heatmap_size={heatmap_size}")
    model_dir = os.path.join(export_base, model_name)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the export directory. Received: {model_dir!r} "
                         f"({error.strerror})") from None
    version = next_version(model_dir) if version is None else version
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise ValueError(f"version {version} already exists; pick another --version or leave "
                         f"it out for the next one. Received: {final!r}")

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in serving_functions(model, config, heatmap_size).items():
        archive.add_endpoint(name, fn, input_signature=signature)

    # Hidden name: TF Serving only loads directories named by an integer.
    staging = os.path.join(model_dir, f".{version}.tmp-{os.getpid()}")
    started = time.perf_counter()
    try:
        archive.write_out(staging, verbose=False)
        write_warmup_requests(os.path.join(staging, WARMUP_PATH), model_name, config)
        info = {
            "model_name": model_name, "version": version,
            "signatures": signature_summary(config, heatmap_size),
            "limits": {"max_image_side": MAX_IMAGE_SIDE,
                       "sample_rate_range_hz": [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]},
            "heatmap_size": heatmap_size, "box_threshold": config.ciou_threshold,
            "config": dataclasses.asdict(config),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "export_seconds": round(time.perf_counter() - started, 2),
            **(extra_info or {}),
        }
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        with open(os.path.join(staging, EXPORT_INFO_PATH), "w") as f:
            json.dump(info, f, indent=1)
        os.rename(staging, final)
    except (tf.errors.OpError, OSError) as error:  # a full disk is ResourceExhaustedError in TF
        shutil.rmtree(staging, ignore_errors=True)
        reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
        reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", reason)
        raise OSError(f"cannot write the export ({reason.strip().splitlines()[0]}); nothing "
                      f"was left behind. Received: {model_dir!r}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def warmup_requests(config: Config) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) of real requests: a JPEG and a PNG with WAV tones, and tensors."""
    s, rate = config.image_size, config.sample_rate
    ramp = np.linspace(0.0, 1.0, s, dtype=np.float32)
    pixels = tf.constant(np.round(np.stack(np.broadcast_arrays(
        ramp[:, None], ramp[None, :], 0.5), axis=-1) * 255).astype(np.uint8))
    t = np.arange(int(config.clip_seconds * rate), dtype=np.float32) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    wav = tf.audio.encode_wav(tf.constant(tone[:, None]), rate).numpy()
    images = np.array([tf.io.encode_jpeg(pixels).numpy(), tf.io.encode_png(pixels).numpy()],
                      dtype=object)
    return [
        (BYTES_SIGNATURE, {"image_bytes": images, "wav_bytes": np.array([wav, wav], object)}),
        (TENSORS_SIGNATURE, {"image": np.full([1, s, s, 3], 0.5, np.float32),
                             "waveform": tone[None, :config.num_samples]}),
    ]


def write_warmup_requests(path: str, model_name: str, config: Config) -> None:
    """assets.extra/tf_serving_warmup_requests: TFRecords of PredictionLog protos."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in warmup_requests(config):
            writer.write(prediction_log(model_name, signature, inputs))


def prediction_log(model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> bytes:
    """A PredictionLog holding one PredictRequest, serialised.

    Encoded by hand (five length-delimited fields) so that exporting needs no
    tensorflow-serving-api; the tests parse it with TF Serving's own protos.
    """
    spec = _proto_field(1, model_name.encode()) + _proto_field(3, signature.encode())
    entries = b"".join(
        _proto_field(2, _proto_field(1, key.encode())
                     + _proto_field(2, tf.make_tensor_proto(value).SerializeToString()))
        for key, value in sorted(inputs.items()))
    request = _proto_field(1, spec) + entries  # PredictRequest: model_spec, inputs
    return _proto_field(6, _proto_field(1, request))  # PredictionLog.predict_log.request


def _proto_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def signature_summary(config: Config, heatmap_size: int | None = None) -> dict:
    """Names, dtypes and shapes of both signatures (-1: any batch size)."""
    h = heatmap_size or config.eval_size
    s, t = config.image_size, config.num_samples
    outputs = {"heatmap": ["float32", [-1, h, h]], "box": ["float32", [-1, 4]],
               "score": ["float32", [-1]]}
    return {
        BYTES_SIGNATURE: {"inputs": {"image_bytes": ["string", [-1]],
                                     "wav_bytes": ["string", [-1]]}, "outputs": outputs},
        TENSORS_SIGNATURE: {"inputs": {"image": ["float32", [-1, s, s, 3]],
                                       "waveform": ["float32", [-1, t]]}, "outputs": outputs},
    }


def export_run(workdir: str, export_base: str, model_name: str = "soundloc",
               version: int | None = None, heatmap_size: int | None = None) -> str:
    """Exports the latest checkpoint of a training run (see `export_model`)."""
    from soundloc_tf.train.run_dir import restore_model

    config, model, step = restore_model(workdir)
    return export_model(model, config, export_base, model_name, version, heatmap_size,
                        extra_info={"step": step, "workdir": os.path.abspath(workdir)})


def read_export_info(path: str) -> dict:
    """The settings an export was written with, from its assets.extra/ file."""
    try:
        with open(os.path.join(path, EXPORT_INFO_PATH)) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"not a soundloc export (no readable {EXPORT_INFO_PATH}). Received: "
                         f"{path!r} ({type(error).__name__})") from None
