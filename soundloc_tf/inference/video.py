"""Where is the sound, frame by frame: a video in, an overlay video and per-frame boxes out.

Every frame is paired with the config's clip_seconds of the sound track centred
on the frame's time (`audio_window`), so the heat map follows the sound over time.
The overlay goes under a temporary name and is renamed only when complete:

    with OverlayVideo(output_dir, "mp4", video_frame_rate(path), rate) as overlay:
        summary = localize_video(localizer, path, overlay)
        ...write boxes.json...
        overlay.commit()
"""

from __future__ import annotations

import os
import shutil
import sys
from fractions import Fraction
from typing import Any, Iterator, Sequence, TextIO

import numpy as np

from soundloc_tf.config import Config
from soundloc_tf.inference import localize as loc

PathLike = str | os.PathLike

VIDEO_FORMATS = ("mp4", "png")
# Below this a frame holds no visible source, and H.264 (even sides) may have none left.
MIN_VIDEO_SIDE = 16


def _open_video(path: PathLike):
    """An open PyAV container, or one ValueError line naming the file."""
    import av

    try:
        return av.open(os.fspath(path))
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"cannot open the video ({error}). Received: {os.fspath(path)!r}") \
            from None


def read_video_audio(path: PathLike, sample_rate: int) -> tuple[np.ndarray, float]:
    """The first audio track as mono float32 at `sample_rate`, and its start time (s)."""
    import av

    with _open_video(path) as container:
        if not container.streams.audio:
            raise ValueError(f"the video has no audio track. Received: {os.fspath(path)!r}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        start = None
        try:
            for frame in container.decode(stream):
                if start is None and frame.time is not None:
                    start = float(frame.time)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as error:
            raise ValueError(f"cannot decode the audio track ({error})") from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros([0], np.float32)
    if len(audio) == 0:
        raise ValueError(f"the video's audio track is empty. Received: {os.fspath(path)!r}")
    return audio, start or 0.0


def audio_window(audio: np.ndarray, centre_seconds: float, config: Config) -> np.ndarray:
    """The clip heard at one video frame: clip_seconds centred on `centre_seconds`.

    Near either end the window slides to stay inside the track; a track
    shorter than a clip is repeated (as the serving signature does).
    """
    t = config.num_samples
    if len(audio) <= t:
        return np.resize(audio, t).astype(np.float32)
    start = int(round(centre_seconds * config.sample_rate)) - t // 2
    start = min(max(start, 0), len(audio) - t)
    return audio[start:start + t]


def iter_video_frames(path: PathLike, max_frames: int = 0) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, uint8 RGB [H, W, 3]) for each frame of the first video stream."""
    import av

    with _open_video(path) as container:
        if not container.streams.video:
            raise ValueError(f"the file has no video stream. Received: {os.fspath(path)!r}")
        stream = container.streams.video[0]
        count = 0
        try:
            for frame in container.decode(stream):
                yield float(frame.time or 0.0), frame.to_ndarray(format="rgb24")
                count += 1
                if max_frames and count >= max_frames:
                    return
        except av.error.FFmpegError as error:
            raise ValueError(f"cannot decode the video stream ({error})") from None


def video_frame_rate(path: PathLike) -> float:
    """Average frames per second of the first video stream (25 when unknown)."""
    import av

    with av.open(os.fspath(path)) as container:
        rate = container.streams.video[0].average_rate if container.streams.video else None
    return float(rate) if rate else 25.0


def localize_frames(localizer: loc.Localizer, frames: Sequence[np.ndarray], times: Sequence[float],
                    audio: np.ndarray, audio_start: float) -> dict[str, np.ndarray]:
    """Frames (uint8 [H, W, 3]) at `times` with the sound around each -> stacked outputs."""
    images = np.stack([localizer.prepare_image(f) for f in frames])
    waveforms = np.stack([audio_window(audio, t - audio_start, localizer.config) for t in times])
    return localizer.predict(images, waveforms)


def _check_sides(width: int, height: int, path: str) -> None:
    if min(width, height) < MIN_VIDEO_SIDE:
        raise ValueError(f"the video is {width}x{height} pixels (width x height); each side "
                         f"must be at least {MIN_VIDEO_SIDE}. Received: {path!r}")


def probe_video(path: str) -> None:
    """Fails fast, before the model loads, on a file without video or sound, or too small."""
    import av

    try:
        with av.open(path) as container:
            videos, has_audio = container.streams.video, bool(container.streams.audio)
            sides = (videos[0].codec_context.width, videos[0].codec_context.height) \
                if videos else None
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"cannot open the video ({error}). Received: {path!r}") from None
    if sides is None:
        raise ValueError(f"the file has no video stream. Received: {path!r}")
    if not has_audio:
        raise ValueError(f"the video has no audio track; the model needs the sound. "
                         f"Received: {path!r}")
    if all(sides):  # 0 is "unknown until decoded"; the frames are checked then
        _check_sides(*sides, path)


class OverlayVideo:
    """Overlay frames -> one MP4 (H.264 + AAC) or PNG frames, under a temporary name.

    Args:
        output_dir: where `overlay.mp4` or `frames/` goes.
        kind: one of `VIDEO_FORMATS`.
        fps: the frame rate of the MP4.
        sample_rate: the sample rate of the MP4's sound track.

    Leaving the `with` block without `commit()` removes the temporary output.
    """

    def __init__(self, output_dir: str, kind: str, fps: float, sample_rate: int):
        if kind not in VIDEO_FORMATS:
            raise ValueError(f"the overlay video format is one of {VIDEO_FORMATS}. Received: "
                             f"kind={kind!r}")
        self.kind, self.fps, self.sample_rate = kind, fps, sample_rate
        self.final = os.path.join(output_dir, "overlay.mp4" if kind == "mp4" else "frames")
        self.staging = os.path.join(output_dir, f".{os.path.basename(self.final)}.tmp-"
                                    f"{os.getpid()}")
        self.count = 0
        self._committed = False
        self._container = self._video = self._audio = None
        if kind == "png":
            os.makedirs(self.staging)

    def __enter__(self) -> "OverlayVideo":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self._committed:
            self._abort()

    def add(self, frame: np.ndarray) -> None:
        """Appends one uint8 RGB frame [H, W, 3]."""
        if self.kind == "png":
            from PIL import Image

            Image.fromarray(frame).save(os.path.join(self.staging, f"overlay_{self.count:05d}.png"))
        else:
            # H.264 in yuv420p needs even sides: drop an odd last row/column.
            self._encode(frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2])
        self.count += 1

    def _encode(self, frame: np.ndarray) -> None:
        import av

        if self._container is None:
            self._container = av.open(self.staging, "w", format="mp4")
            self._video = self._container.add_stream(
                "libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._video.width, self._video.height = frame.shape[1], frame.shape[0]
            self._video.pix_fmt = "yuv420p"
            # Every stream must exist before the first packet.
            self._audio = self._container.add_stream("aac", rate=self.sample_rate,
                                                     layout="mono")
        for packet in self._video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def finish(self, audio: np.ndarray) -> None:
        """Ends the video; `audio` (mono float32) becomes the MP4's sound track."""
        if self.kind != "mp4":
            return
        import av

        for packet in self._video.encode(None):
            self._container.mux(packet)
        if len(audio):
            frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = self.sample_rate, 0
            for packet in list(self._audio.encode(frame)) + list(self._audio.encode(None)):
                self._container.mux(packet)
        self._container.close()
        self._container = None

    def commit(self) -> str:
        """Renames the finished staging file or directory to its final name."""
        if os.path.isdir(self.final):
            shutil.rmtree(self.final)
        os.replace(self.staging, self.final)
        self._committed = True
        return self.final

    def _abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is removed below either way
                pass
        if os.path.isdir(self.staging):
            shutil.rmtree(self.staging, ignore_errors=True)
        elif os.path.exists(self.staging):
            os.remove(self.staging)


def localize_video(localizer: loc.Localizer, path: str, overlay: OverlayVideo,
                   batch_size: int = 16, max_frames: int = 0,
                   progress: TextIO | None = sys.stderr) -> dict:
    """Localises every frame of `path` into `overlay`; returns the boxes.json summary.

    Args:
        localizer: the model, as `soundloc-localize` loads it.
        path: the video, with a sound track.
        overlay: where the drawn frames go; finished here, committed by the caller.
        batch_size: frames per model call.
        max_frames: stop after this many frames (0: all).
        progress: where a running frame count goes (None: nowhere).
    """
    if batch_size < 1 or max_frames < 0:
        raise ValueError(f"batch_size must be >= 1 and max_frames >= 0. Received: "
                         f"batch_size={batch_size}, max_frames={max_frames}")
    config = localizer.config
    audio, audio_start = read_video_audio(path, config.sample_rate)
    entries: list[dict] = []
    frames: list[np.ndarray] = []
    times: list[float] = []

    def flush() -> None:
        out = localize_frames(localizer, frames, times, audio, audio_start)
        pictures = loc.render_overlays(np.stack(frames), out["heatmap"], out["box"])
        for picture, t, box, score in zip(pictures, times, out["box"], out["score"]):
            overlay.add(picture)
            entries.append({"frame": len(entries), "time": round(t, 4),
                            "box": [round(float(v), 6) for v in box],
                            "score": round(float(score), 6)})
        if progress is not None:
            print(f"\rlocalised {len(entries)} frames", end="", file=progress, flush=True)
        frames.clear()
        times.clear()

    try:
        for t, frame in iter_video_frames(path, max_frames):
            _check_sides(frame.shape[1], frame.shape[0], path)
            frames.append(frame)
            times.append(t)
            if len(frames) == batch_size:
                flush()
        if frames:
            flush()
        if progress is not None:
            print(file=progress)
        if not entries:
            raise ValueError(f"the video has no frames. Received: {path!r}")
        # The sound the frames span, for the MP4's audio track.
        first = max(int(round((entries[0]["time"] - audio_start) * config.sample_rate)), 0)
        span = int(round(len(entries) / overlay.fps * config.sample_rate))
        overlay.finish(audio[first:first + span])
    except Exception as error:
        if type(error).__module__.split(".")[0] == "av":  # PyAV's FFmpeg errors
            raise ValueError(f"cannot write the overlay video ({error})") from None
        raise
    return {"video": os.path.abspath(path), "frames": len(entries), "fps": overlay.fps,
            "clip_seconds": config.clip_seconds, "heatmap_size": localizer.heatmap_size,
            "overlay": os.path.abspath(overlay.final), "boxes": entries}
