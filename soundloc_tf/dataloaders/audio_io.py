"""Reading audio files of any rate, channel count and container into one clip format.

Every importer goes through `load_audio`: decode (libsndfile via soundfile
for WAV/FLAC/OGG/MP3, PyAV for anything else, e.g. AAC in .m4a or a video's
audio track), down-mix to mono, resample with soxr (the resampler librosa
uses), and check that the result is usable.  A file that cannot be used
raises `AudioError`, a ValueError whose `reason` is one short phrase
("unreadable audio", "empty audio", "silent audio") that import summaries
count and print.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
import soundfile
import soxr

Source = Union[str, os.PathLike, bytes, BinaryIO]

# Peak below this (about -80 dBFS) counts as silence: dither and codec noise
# stay under it, a quiet but real recording does not.
SILENCE_PEAK = 1e-4


class AudioError(ValueError):
    """An audio file that cannot be used, with a short reason for import summaries."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[samples] or [samples, channels] -> [samples], the mean of the channels."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(f"audio must be [samples] or [samples, channels]. Received: "
                         f"shape={audio.shape}")
    return audio.mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr "HQ"); a no-op when the rates match."""
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive. Received: source_rate={source_rate}, "
                         f"target_rate={target_rate}")
    audio = np.asarray(audio, dtype=np.float32)
    if source_rate == target_rate or audio.size == 0:
        return audio
    return soxr.resample(audio, source_rate, target_rate, quality="HQ").astype(np.float32)


def fit_length(audio: np.ndarray, num_samples: int, mode: str = "centre",
               offset: int | None = None) -> np.ndarray:
    """Crops or zero-pads (at the end) to exactly `num_samples`.

    mode "centre" keeps the middle of a longer clip (the usual evaluation
    choice), "start" keeps its beginning; `offset` overrides both.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1. Received: num_samples={num_samples}")
    if mode not in ("centre", "start"):
        raise ValueError(f"mode must be 'centre' or 'start'. Received: mode={mode!r}")
    audio = np.asarray(audio, dtype=np.float32)
    extra = audio.shape[0] - num_samples
    if extra > 0:
        start = offset if offset is not None else (extra // 2 if mode == "centre" else 0)
        start = int(np.clip(start, 0, extra))
        return audio[start:start + num_samples]
    return np.pad(audio, (0, -extra))


def check_audio(audio: np.ndarray, sample_rate: int, min_seconds: float = 0.0) -> None:
    """Raises AudioError for an empty, too short, non-finite or silent clip."""
    if audio.size == 0:
        raise AudioError("empty audio", "no samples")
    if audio.shape[0] < min_seconds * sample_rate:
        raise AudioError("empty audio", f"{audio.shape[0] / sample_rate:.2f} s is shorter "
                                        f"than {min_seconds} s")
    if not np.all(np.isfinite(audio)):
        raise AudioError("unreadable audio", "non-finite samples")
    peak = float(np.max(np.abs(audio)))
    if peak < SILENCE_PEAK:
        raise AudioError("silent audio", f"peak {peak:.1e} < {SILENCE_PEAK:.0e}")


def _decode_soundfile(source: Source) -> tuple[np.ndarray, int]:
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    return data, int(rate)


def decode_with_av(source: Source, stream_index: int | None = None) -> tuple[np.ndarray, int]:
    """Decodes an audio stream with PyAV (FFmpeg): [samples, channels] float32 and its rate.

    Used for containers libsndfile cannot read (m4a/AAC, video files).
    """
    import av  # imported lazily: only video and exotic audio need it

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    with av.open(source) as container:
        streams = container.streams.audio
        if not streams:
            raise AudioError("unreadable audio", "no audio stream")
        stream = streams[stream_index or 0]
        chunks, rate = [], stream.rate or stream.codec_context.sample_rate
        # Resample to packed float32 at the stream's own rate, keeping the channel count.
        resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1, len(stream.layout.channels)))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1, len(stream.layout.channels)))
    if not chunks:
        raise AudioError("empty audio", "the audio stream has no frames")
    return np.concatenate(chunks).astype(np.float32), int(rate)


def load_audio(source: Source, sample_rate: int, num_samples: int | None = None,
               min_seconds: float = 0.0, mode: str = "centre") -> np.ndarray:
    """Any audio file -> mono float32 at `sample_rate` (cropped/padded to `num_samples`).

    Raises AudioError (a ValueError) with a `reason` for unreadable, empty
    or silent audio.
    """
    try:
        data, rate = _decode_soundfile(source)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as sf_error:
        if hasattr(source, "seek"):
            source.seek(0)
        try:
            data, rate = decode_with_av(source)
        except AudioError:
            raise
        except Exception as av_error:  # FFmpeg errors have many types
            raise AudioError("unreadable audio", f"{sf_error}; {type(av_error).__name__}: "
                                                 f"{av_error}") from None
    mono = to_mono(data)
    check_audio(mono, rate, min_seconds)
    audio = resample(mono, rate, sample_rate)
    if num_samples is not None:
        audio = fit_length(audio, num_samples, mode)
    return audio
