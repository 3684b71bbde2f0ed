"""Samples -> WAV file bytes: the library's one WAV encoder (16-bit PCM).

Floor 0 with the standard library and numpy only, so the export's warm-up requests, the
experiments and the serving side (which may import floor 0) can all share it.
"""

from __future__ import annotations

import io
import wave

import numpy as np


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Float samples -> the bytes of a 16-bit PCM WAV file.

    Each sample becomes x * 32768 rounded half away from zero and clipped to the int16
    range: tf.audio.encode_wav's rule, so the bytes match what the export wrote with it.

    Args:
        samples: [F] (mono) or [F, channels], full scale at +-1.
        sample_rate: in Hz.
    """
    samples = np.asarray(samples, np.float64)
    if samples.ndim == 1:
        samples = samples[:, None]
    scaled = samples * 32768.0
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # np.round rounds half to even
    pcm = np.clip(rounded, -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return out.getvalue()
