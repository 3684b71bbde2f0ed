"""The in-graph log-mel equals librosa's melspectrogram with the same parameters."""

import librosa
import numpy as np
import pytest

from soundloc_tf.dataloaders.audio import LogMel, mel_filterbank


@pytest.mark.parametrize("sample_rate,n_fft,hop,n_mels", [(8000, 256, 128, 32),
                                                          (22050, 1024, 512, 64)])
def test_mel_filterbank_matches_librosa(sample_rate, n_fft, hop, n_mels):
    ours = mel_filterbank(sample_rate, n_fft, n_mels, 0.0, sample_rate / 2)
    ref = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0,
                              fmax=sample_rate / 2)
    np.testing.assert_allclose(ours.T, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("sample_rate,n_fft,hop,n_mels,fmin,fmax", [
    (8000, 256, 128, 32, 0.0, 4000.0), (22050, 1024, 512, 64, 50.0, 8000.0)])
def test_power_mel_matches_librosa_melspectrogram(sample_rate, n_fft, hop, n_mels, fmin, fmax):
    rng = np.random.default_rng(0)
    t = np.arange(sample_rate) / sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(sample_rate))
    wave = wave.astype(np.float32)
    layer = LogMel(sample_rate, n_fft, hop, n_mels, fmin, fmax)
    ours = layer.power_mel(wave[None]).numpy()[0]
    ref = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=n_fft, hop_length=hop,
                                         n_mels=n_mels, fmin=fmin, fmax=fmax).T
    assert ours.shape == ref.shape == (1 + sample_rate // hop, n_mels)
    # Stated tolerance: 1e-4 of the spectrogram's peak (float32 FFT vs librosa's float64).
    assert np.abs(ours - ref).max() <= 1e-4 * ref.max()
    log_ours = layer(wave[None]).numpy()[0]
    np.testing.assert_allclose(log_ours, np.log(ref + 1e-6), atol=1e-3)


def test_silence_gives_the_log_floor_not_minus_infinity():
    layer = LogMel(8000, 256, 128, 32, 0.0, 4000.0)
    out = layer(np.zeros([1, 8000], np.float32)).numpy()
    np.testing.assert_allclose(out, np.log(1e-6), rtol=1e-6)
