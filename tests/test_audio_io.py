"""Audio files of any rate, channel count and container -> one mono clip, or a reason."""

import numpy as np
import pytest
import soundfile

from soundloc_tf.dataloaders import audio_io


def _tone(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(audio, rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


def test_stereo_44k_wav_is_downmixed_and_resampled(tmp_path):
    left, right = _tone(440, 2.0, 44100, 0.6), _tone(440, 2.0, 44100, 0.2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    audio = audio_io.load_audio(str(path), 22050)
    assert audio.dtype == np.float32 and audio.shape == (44100,)
    assert _peak_hz(audio, 22050) == pytest.approx(440, abs=1.0)
    # The mean of the channels: amplitude (0.6 + 0.2) / 2 = 0.4, RMS 0.4 / sqrt(2).
    assert np.sqrt(np.mean(audio[1000:-1000] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


def test_mp3_and_flac_decode(tmp_path):
    tone = _tone(1000, 1.0, 16000)
    for fmt in ("MP3", "FLAC"):
        path = tmp_path / f"tone.{fmt.lower()}"
        soundfile.write(path, tone, 16000, format=fmt)
        audio = audio_io.load_audio(str(path), 8000, num_samples=8000)
        assert audio.shape == (8000,)
        assert _peak_hz(audio, 8000) == pytest.approx(1000, abs=2.0)
        assert 0.3 < np.max(np.abs(audio)) < 0.7


def test_fit_length_crops_the_centre_or_pads_the_end():
    audio = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(audio_io.fit_length(audio, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(audio_io.fit_length(audio, 4, mode="start"), [0, 1, 2, 3])
    np.testing.assert_array_equal(audio_io.fit_length(audio, 4, offset=100), [6, 7, 8, 9])
    np.testing.assert_array_equal(audio_io.fit_length(audio[:3], 5), [0, 1, 2, 0, 0])
    with pytest.raises(ValueError, match="num_samples"):
        audio_io.fit_length(audio, 0)


@pytest.mark.parametrize("content, reason", [
    ("silent", "silent audio"), ("empty", "empty audio"), ("garbage", "unreadable audio")])
def test_unusable_audio_is_rejected_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    if content == "silent":
        soundfile.write(path, np.zeros(16000, np.float32), 16000)
    elif content == "empty":
        soundfile.write(path, np.zeros(0, np.float32), 16000)
    else:
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    with pytest.raises(audio_io.AudioError) as info:
        audio_io.load_audio(str(path), 16000)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_video_audio_track_decodes_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "tone.m4a"
    tone = _tone(660, 1.0, 16000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        for i in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="fltp",
                                               layout="mono")
            frame.rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    audio = audio_io.load_audio(str(path), 22050)
    assert abs(len(audio) / 22050 - 1.0) < 0.15
    assert _peak_hz(audio, 22050) == pytest.approx(660, abs=2.0)
