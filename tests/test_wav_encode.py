"""The one WAV encoder: each rule writes the very bytes of the encoder it replaced."""

import io

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf import wav_encode
from soundloc_tf.experiments import photo_eval


def _waveforms():
    """Full-range noise past the clipping points, exact steps and half steps, in both
    precisions and at the lengths the experiments write."""
    rng = np.random.default_rng(0)
    steps = rng.integers(-33_000, 33_000, 4000) / 32768
    for dtype in (np.float32, np.float64):
        yield np.concatenate([rng.uniform(-1.2, 1.2, 16_000), steps, steps + 0.5 / 32768,
                              [0.0, 1.0, -1.0, 1e-30, -1e-30]]).astype(dtype)
        yield np.zeros(0, dtype)


def test_the_libsndfile_rule_writes_soundfiles_bytes():
    """What photo_eval and the realset builder wrote with soundfile.write(..., "PCM_16")."""
    soundfile = pytest.importorskip("soundfile")
    for waveform in _waveforms():
        buffer = io.BytesIO()
        soundfile.write(buffer, waveform, 16000, subtype="PCM_16", format="WAV")
        assert wav_encode.wav_bytes(waveform, 16000, rule="libsndfile") == buffer.getvalue()
        assert photo_eval.wav_bytes(waveform, 16000) == buffer.getvalue()


def test_the_default_rule_writes_tf_audio_encode_wavs_bytes():
    for waveform in _waveforms():
        expected = tf.audio.encode_wav(tf.constant(waveform, tf.float32)[:, None], 16000)
        assert wav_encode.wav_bytes(waveform.astype(np.float32), 16000) == expected.numpy()


def test_an_unknown_rule_is_refused_naming_the_rules():
    with pytest.raises(ValueError, match=r"\('encode_wav', 'libsndfile'\). Received: rule='x'"):
        wav_encode.wav_bytes(np.zeros(4), 16000, rule="x")
