"""WAV bytes -> the model's waveform, in core TensorFlow ops (the served graph's decoder).

RIFF/WAVE, PCM 8/16/24/32-bit or IEEE float 32/64-bit (also as WAVE_FORMAT_EXTENSIBLE), any
channel count (averaged to mono), sample rate in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz.  The
middle clip_seconds are used; the rate is converted with a windowed-sinc anti-aliasing
low-pass (when downsampling) and linear interpolation; a shorter sound, down to a single
sample, is repeated to fill the clip.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from soundloc_tf.config import Config
from soundloc_tf.inference.graph_checks import Where, padded_header, read_uint

MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 192000
# Anti-aliasing low-pass when downsampling: cutoff at ROLLOFF x the new
# Nyquist frequency, Hann-windowed sinc with SINC_ZEROS zero crossings a side.
ROLLOFF = 0.9
SINC_ZEROS = 8
# The chunk walk of a WAV file stops after this many chunks.
MAX_WAV_CHUNKS = 256

# WAV sample encodings, the index is the tf.switch_case branch.
_PCM_U8, _PCM_S16, _PCM_S24, _PCM_S32, _FLOAT32, _FLOAT64 = range(6)


def _wav_chunks(contents: tf.Tensor, length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Byte offsets of the "fmt " and "data" payloads, and the data size (-1: not found)."""

    def keep_going(offset, fmt_pos, data_pos, data_size):
        return (data_pos < 0) & (offset + 8 <= length)

    def next_chunk(offset, fmt_pos, data_pos, data_size):
        chunk_id = tf.strings.substr(contents, offset, 4)
        size = read_uint(contents, offset + 4, 4)
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
    where = Where(name, index)
    contents = tf.convert_to_tensor(contents, tf.string)
    length = tf.cast(tf.strings.length(contents), tf.int64)
    header = padded_header(contents, 12)
    is_wav = ((length >= 12) & tf.equal(tf.strings.substr(header, 0, 4), "RIFF")
              & tf.equal(tf.strings.substr(header, 8, 4), "WAVE"))
    with tf.control_dependencies([where.check(is_wav, ": not a RIFF/WAVE file ({} bytes)",
                                              length)]):
        fmt_pos, data_pos, data_size = _wav_chunks(contents, length)
    found = where.check((fmt_pos >= 0) & (fmt_pos + 16 <= length) & (data_pos >= 0),
                        ": WAV file has no complete format (fmt) chunk before its data chunk")
    with tf.control_dependencies([found]):
        tag = read_uint(contents, fmt_pos, 2)
        channels = read_uint(contents, fmt_pos + 2, 2)
        rate = read_uint(contents, fmt_pos + 4, 4)
        block_align = read_uint(contents, fmt_pos + 12, 2)
        bits = read_uint(contents, fmt_pos + 14, 2)

    def extensible_tag():
        ok = where.check(fmt_pos + 26 <= length, ": WAVE_FORMAT_EXTENSIBLE header is truncated")
        with tf.control_dependencies([ok]):
            return read_uint(contents, fmt_pos + 24, 2)

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
