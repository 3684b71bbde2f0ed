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


def _localize_video(localizer) -> None:
    from soundloc_tf.inference import video

    with video.OverlayVideo(FLAGS.output_dir, FLAGS.video_format,
                            video.video_frame_rate(FLAGS.video),
                            localizer.config.sample_rate) as overlay:
        summary = video.localize_video(localizer, FLAGS.video, overlay, FLAGS.batch_size,
                                       FLAGS.max_frames)
        # boxes.json first: a full disk then leaves neither file new.
        write_files({os.path.join(FLAGS.output_dir, "boxes.json"): _json_bytes(summary)})
        path = overlay.commit()
    print(f"Localised {summary['frames']} frames; wrote {path} and "
          f"{os.path.join(FLAGS.output_dir, 'boxes.json')}")


def main(argv: list[str]) -> None:
    _check_flags()
    for path in (FLAGS.image, FLAGS.sound, FLAGS.video):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"no such file. Received: {path!r}")
    if FLAGS.video is not None:
        from soundloc_tf.inference.video import probe_video

        probe_video(FLAGS.video)
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
