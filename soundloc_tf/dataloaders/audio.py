"""Audio features computed inside the TensorFlow graph.

Training, evaluation and the exported SavedModel all call `LogMel`, so a
served model sees exactly the features it was trained on.  The mel filter
bank follows librosa's defaults (Slaney mel scale, Slaney area
normalisation) and the STFT follows `librosa.stft(center=True,
pad_mode="constant")` with a periodic Hann window, so the power mel
spectrogram equals `librosa.feature.melspectrogram` with the same
parameters (see tests/test_audio.py for the tolerance).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Added before the log so silent frames give a finite, constant floor.
LOG_FLOOR = 1e-6

# Slaney's mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _SLANEY_HZ_PER_MEL
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
    log_part = break_mel + np.log(np.maximum(hz, 1e-10) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_BREAK_HZ, log_part, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
    log_part = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - break_mel))
    return np.where(mel >= break_mel, log_part, mel * _SLANEY_HZ_PER_MEL)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                   fmax: float) -> np.ndarray:
    """Slaney-normalised triangular filters, shape [n_fft // 2 + 1, n_mels]."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.T.astype(np.float32)


@keras.saving.register_keras_serializable(package="soundloc")
class LogMel(keras.layers.Layer):
    """Waveform [batch, samples] -> log power mel spectrogram [batch, frames, n_mels]."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                 fmin: float, fmax: float, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.fmin = fmin
        self.fmax = fmax
        self._filters = tf.constant(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax))

    def power_mel(self, waveform: tf.Tensor) -> tf.Tensor:
        """Power mel spectrogram, before the log (what librosa returns)."""
        waveform = tf.convert_to_tensor(waveform, tf.float32)
        half = self.n_fft // 2
        padded = tf.pad(waveform, [[0, 0], [half, half]])
        spectrum = tf.signal.stft(padded, frame_length=self.n_fft, frame_step=self.hop_length,
                                  fft_length=self.n_fft, window_fn=tf.signal.hann_window)
        power = tf.math.square(tf.math.abs(spectrum))
        return tf.tensordot(power, self._filters, axes=1)

    def call(self, waveform: tf.Tensor) -> tf.Tensor:
        return tf.math.log(self.power_mel(waveform) + LOG_FLOOR)

    def compute_output_shape(self, input_shape):
        frames = None if input_shape[1] is None else 1 + input_shape[1] // self.hop_length
        return (input_shape[0], frames, self.n_mels)

    def get_config(self) -> dict:
        return {**super().get_config(), "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "n_mels": self.n_mels, "fmin": self.fmin,
                "fmax": self.fmax}
