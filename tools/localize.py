"""Shows where a sound comes from: an image and a sound, or a video.

  soundloc-localize --workdir=runs/tiny --image=scene.jpg --sound=scene.wav --output_dir=out
  soundloc-localize --saved_model=exports/soundloc --video=clip.mp4 --output_dir=out

With --image/--sound: writes <output_dir>/overlay.png (heat map and box over
the image at its own resolution) and boxes.json, and prints the JSON.
With --video: every frame is paired with the config's clip_seconds of its
sound track centred on the frame's time, so the heat map follows the sound;
writes overlay.mp4 (H.264, with the sound track the model heard) or, with
--video_format=png, a directory of overlay_NNNNN.png frames, plus
boxes.json with one entry per frame.  Outputs are written under temporary
names and renamed when complete.

--workdir takes a training run (its latest checkpoint), --saved_model an
export (a version directory, or a model directory: its latest version);
both decode and post-process exactly as the served model does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
from absl import flags

from soundloc_tf.serving.client import write_files  # the client's all-or-nothing writer
from . import common

flags.DEFINE_string("workdir", None, "Training run directory (soundloc-train --workdir).")
flags.DEFINE_string("saved_model", None, "Exported model: <export_base>/<model_name>[/<version>].")
flags.DEFINE_string("image", None, "Image file (JPEG, PNG or anything Pillow reads).")
flags.DEFINE_string("sound", None, "Sound file (WAV, or anything soundfile reads).")
flags.DEFINE_string("video", None, "Video file with a sound track (anything FFmpeg reads).")
flags.DEFINE_string("output_dir", "localized", "Where the overlays and boxes.json go.")
flags.DEFINE_integer("heatmap_size", None, "Heat-map side (--workdir only; default: the run's "
                     "eval_size).", lower_bound=8, upper_bound=1024)
flags.DEFINE_integer("batch_size", 16, "Video frames per model call.", lower_bound=1)
flags.DEFINE_integer("max_frames", 0, "Stop after this many video frames (0: all).",
                     lower_bound=0)
flags.DEFINE_enum("video_format", "mp4", ["mp4", "png"], "Overlay video as one MP4 or as PNG "
                  "frames.")
FLAGS = flags.FLAGS


def _check_flags() -> None:
    if (FLAGS.workdir is None) == (FLAGS.saved_model is None):
        raise ValueError("give exactly one of --workdir and --saved_model")
    if FLAGS.video is not None and (FLAGS.image is not None or FLAGS.sound is not None):
        raise ValueError("give --video alone, or --image with --sound")
    if FLAGS.video is None and (FLAGS.image is None or FLAGS.sound is None):
        raise ValueError("give --image together with --sound, or --video")
    if FLAGS.saved_model is not None and FLAGS.heatmap_size is not None:
        raise ValueError("--heatmap_size is fixed at export time; it applies to --workdir only")


def _probe_video(path: str) -> None:
    """Fails fast, before the model loads, on a file without video or sound."""
    import av

    try:
        with av.open(path) as container:
            has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"cannot open the video ({error}). Received: {path!r}") from None
    if not has_video:
        raise ValueError(f"the file has no video stream. Received: {path!r}")
    if not has_audio:
        raise ValueError(f"the video has no audio track; the model needs the sound. "
                         f"Received: {path!r}")


def _display_image(path: str) -> np.ndarray:
    """The image as uint8 RGB at its own resolution, turned as its EXIF says, for drawing on."""
    from soundloc_tf.inference.localize import exif_transpose, open_image

    with exif_transpose(open_image(path)) as image:
        if image.mode.startswith("I;16") or image.mode == "I":
            values = np.asarray(image, dtype=np.float64)
            scale = 65535.0 if values.max() > 255 else 255.0
            gray = np.round(values / scale * 255.0).clip(0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.asarray(image.convert("RGB"))


def _json_bytes(value) -> bytes:
    return json.dumps(value, indent=1).encode()


def _localize_image(localizer) -> None:
    import io

    from PIL import Image

    result = localizer.localize(FLAGS.image, FLAGS.sound)
    picture = _display_image(FLAGS.image)
    overlay_path = os.path.join(FLAGS.output_dir, "overlay.png")
    png = io.BytesIO()
    Image.fromarray(result.overlay(picture)).save(png, format="PNG")
    summary = {"image": os.path.abspath(FLAGS.image), "sound": os.path.abspath(FLAGS.sound),
               **result.to_json(), "heatmap_size": localizer.heatmap_size,
               "overlay": os.path.abspath(overlay_path)}
    write_files({overlay_path: png.getvalue(),
                 os.path.join(FLAGS.output_dir, "boxes.json"): _json_bytes(summary)})
    print(json.dumps(summary, indent=1))


class _VideoWriter:
    """Overlay frames -> MP4 (H.264 + AAC) or PNG frames, under a temporary name."""

    def __init__(self, output_dir: str, kind: str, fps: float, sample_rate: int,
                 with_audio: bool):
        self.kind = kind
        self.with_audio = with_audio
        self.final = os.path.join(output_dir, "overlay.mp4" if kind == "mp4" else "frames")
        self.staging = os.path.join(output_dir, f".{os.path.basename(self.final)}.tmp-"
                                    f"{os.getpid()}")
        self.fps, self.sample_rate = fps, sample_rate
        self.count = 0
        self._container = self._video = self._audio = None
        if kind == "png":
            os.makedirs(self.staging)

    def add(self, frame: np.ndarray) -> None:
        if self.kind == "png":
            from PIL import Image

            Image.fromarray(frame).save(os.path.join(self.staging, f"overlay_{self.count:05d}.png"))
        else:
            import av

            # H.264 in yuv420p needs even sides: drop an odd last row/column.
            frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
            if self._container is None:
                from fractions import Fraction

                self._container = av.open(self.staging, "w", format="mp4")
                self._video = self._container.add_stream(
                    "libx264", rate=Fraction(self.fps).limit_denominator(1001))
                self._video.width, self._video.height = frame.shape[1], frame.shape[0]
                self._video.pix_fmt = "yuv420p"
                if self.with_audio:  # every stream must exist before the first packet
                    self._audio = self._container.add_stream("aac", rate=self.sample_rate,
                                                             layout="mono")
            for packet in self._video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.count += 1

    def finish(self, audio: np.ndarray | None) -> None:
        if self.kind == "mp4":
            import av

            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._audio is not None and audio is not None and len(audio):
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
        return self.final

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is removed below either way
                pass
        if os.path.isdir(self.staging):
            shutil.rmtree(self.staging, ignore_errors=True)
        elif os.path.exists(self.staging):
            os.remove(self.staging)


def _localize_video(localizer) -> None:
    from soundloc_tf.inference import localize as loc

    config = localizer.config
    audio, audio_start = loc.read_video_audio(FLAGS.video, config.sample_rate)
    writer = _VideoWriter(FLAGS.output_dir, FLAGS.video_format, loc.video_frame_rate(FLAGS.video),
                          config.sample_rate, with_audio=True)
    entries: list[dict] = []
    frames: list[np.ndarray] = []
    times: list[float] = []

    def flush() -> None:
        out = loc.localize_frames(localizer, frames, times, audio, audio_start)
        pictures = loc.render_overlays(np.stack(frames), out["heatmap"], out["box"])
        for picture, t, box, score in zip(pictures, times, out["box"], out["score"]):
            writer.add(picture)
            entries.append({"frame": len(entries), "time": round(t, 4),
                            "box": [round(float(v), 6) for v in box],
                            "score": round(float(score), 6)})
        print(f"\rlocalised {len(entries)} frames", end="", file=sys.stderr, flush=True)
        frames.clear()
        times.clear()

    try:
        for t, frame in loc.iter_video_frames(FLAGS.video, FLAGS.max_frames):
            frames.append(frame)
            times.append(t)
            if len(frames) == FLAGS.batch_size:
                flush()
        if frames:
            flush()
        print(file=sys.stderr)
        if not entries:
            raise ValueError(f"the video has no frames. Received: {FLAGS.video!r}")
        # The sound the frames span, for the MP4's audio track.
        first = max(int(round((entries[0]["time"] - audio_start) * config.sample_rate)), 0)
        span = int(round(len(entries) / writer.fps * config.sample_rate))
        writer.finish(audio[first:first + span])
        summary = {"video": os.path.abspath(FLAGS.video), "frames": len(entries),
                   "fps": writer.fps, "clip_seconds": config.clip_seconds,
                   "heatmap_size": localizer.heatmap_size,
                   "overlay": os.path.abspath(writer.final), "boxes": entries}
        # boxes.json first: a full disk then leaves neither file new.
        write_files({os.path.join(FLAGS.output_dir, "boxes.json"): _json_bytes(summary)})
        path = writer.commit()
    except BaseException as error:
        writer.abort()
        if type(error).__module__.split(".")[0] == "av":  # PyAV's FFmpeg errors
            raise ValueError(f"cannot write the overlay video ({error})") from None
        raise
    print(f"Localised {len(entries)} frames; wrote {path} and "
          f"{os.path.join(FLAGS.output_dir, 'boxes.json')}")


def main(argv: list[str]) -> None:
    _check_flags()
    for path in (FLAGS.image, FLAGS.sound, FLAGS.video):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"no such file. Received: {path!r}")
    if FLAGS.video is not None:
        _probe_video(FLAGS.video)
    from soundloc_tf.inference.localize import Localizer  # after the checks: TF start-up is slow

    if FLAGS.workdir is not None:
        localizer = Localizer.from_workdir(FLAGS.workdir, FLAGS.heatmap_size)
    else:
        localizer = Localizer.from_saved_model(FLAGS.saved_model)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    if FLAGS.video is not None:
        _localize_video(localizer)
    else:
        _localize_image(localizer)


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
