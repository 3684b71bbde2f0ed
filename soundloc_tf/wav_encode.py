"""Samples -> WAV file bytes: the library's one WAV encoder (16-bit PCM).

Floor 0 with the standard library and numpy only, so the export's warm-up requests, the
experiments and the serving side (which may import floor 0) can all share it.

Two rules turn a float sample into a 16-bit one, each the rule of the encoder a set of
files was first written with, so their bytes stay the same:

  "encode_wav"  x * 32768 rounded half away from zero, clipped (tf.audio.encode_wav's;
                the export's warm-up requests and the studio)
  "libsndfile"  x * 2**31 rounded half to even and clipped to int32, then its top 16 bits
                (libsndfile 1.2's, which soundfile.write(..., subtype="PCM_16") used: the
                real-photo experiments' validation sounds and the realset's recordings)

They differ by one step on about half the samples (the second floors where the first
rounds); both map +-1 to the ends of the range.
"""

from __future__ import annotations

import io
import wave

import numpy as np

PCM_RULES = ("encode_wav", "libsndfile")
_INT16_SCALE = 2.0 ** 15  # full scale, +1.0, in 16-bit steps
_INT32_SCALE = 2.0 ** 31  # the same in 32-bit steps (libsndfile converts through int32)
_INT32_TO_INT16 = 2 ** 16


def pcm16(samples: np.ndarray, rule: str = "encode_wav") -> np.ndarray:
    """Float samples -> int16 samples by one of `PCM_RULES`.

    Args:
        samples: any shape, full scale at +-1 (float32 or float64: both are exact here).
        rule: "encode_wav" or "libsndfile" (see the module docstring).
    """
    if rule not in PCM_RULES:
        raise ValueError(f"rule must be one of {PCM_RULES}. Received: rule={rule!r}")
    # float32 -> float64 is exact, and so is scaling by a power of two: the rules below see
    # the very values the original encoders saw, whatever the input's precision.
    samples = np.asarray(samples, np.float64)
    if rule == "libsndfile":
        wide = np.clip(np.rint(samples * _INT32_SCALE), -_INT32_SCALE, _INT32_SCALE - 1)
        return np.floor_divide(wide, _INT32_TO_INT16).astype("<i2")  # an arithmetic >> 16
    scaled = samples * _INT16_SCALE
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # np.round rounds half to even
    return np.clip(rounded, -_INT16_SCALE, _INT16_SCALE - 1).astype("<i2")


def wav_bytes(samples: np.ndarray, sample_rate: int, rule: str = "encode_wav") -> bytes:
    """Float samples -> the bytes of a 16-bit PCM WAV file (the plain 44-byte header).

    Args:
        samples: [F] (mono) or [F, channels], full scale at +-1.
        sample_rate: in Hz.
        rule: how a sample becomes 16 bits (`PCM_RULES`); "encode_wav", the bytes the export
          wrote with tf.audio.encode_wav, by default.
    """
    samples = np.asarray(samples)
    if samples.ndim == 1:
        samples = samples[:, None]
    pcm = pcm16(samples, rule)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return out.getvalue()
