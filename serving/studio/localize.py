"""The page's localise side: files in, heat maps from TF Serving's REST API out.

It knows the model only through the SavedModel's `serving_default` signature
(JPEG/PNG bytes and WAV bytes in; heatmap, box, score out) over REST, via
`serving.client.ServingClient`, so it works against TF Serving or
soundloc-dev-server alike and never loads the model itself.  Files the
signature does not take are converted here when they can be: other image
formats to PNG (Pillow), other audio to WAV (the importers' decoder); a video
is sampled into frames with the sound window centred on each.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from typing import Any, Sequence

import numpy as np

from ..client import ServingClient, ServingError, colorize
from .pairs import wav_bytes

# Rate of the WAV windows cut from uploaded audio and videos; the model resamples.
WAV_RATE = 16000
# A video is asked about at this many times at most (one request; the dev server
# accepts 64 instances): enough for the overlay to follow the sound when scrubbing.
MAX_VIDEO_SAMPLES = 24
VIDEO_INTERVAL_SECONDS = 0.5
# The served graph's limit on each image side (soundloc_tf.inference.image_decode's
# MAX_IMAGE_SIDE; not imported: the serving side knows the model only through its
# signatures, and that module loads TensorFlow).  Checked from the header before Pillow
# decodes a converted upload, so a 54-byte BMP claiming 30000 x 30000 is refused, not
# decoded (2.7 GB).
MAX_IMAGE_SIDE = 4096


class UnsupportedFile(ValueError):
    """A file the page cannot use; the message says which and why."""


class ModelUnavailable(Exception):
    """The model server failed or could not be reached; the message says which."""


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """Heat map [H, W] in [0, 1] -> RGB PNG in the overlay colours of the other tools."""
    from PIL import Image

    rgb = np.round(colorize(heatmap) * 255.0).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def as_model_image(data: bytes, name: str) -> bytes:
    """JPEG/PNG bytes unchanged; another image format Pillow reads -> PNG; else refused."""
    if data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
                raise UnsupportedFile(f"{name!r} is {width}x{height} pixels (width x height); "
                                      f"each side must lie in [1, {MAX_IMAGE_SIDE}]")
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
            return out.getvalue()
    except UnsupportedFile:
        raise
    except Image.DecompressionBombError as error:  # Pillow's pixel limit, checked in open()
        reason = str(error).split(",")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise UnsupportedFile(f"{name!r}: {reason}; each side must lie in [1, "
                              f"{MAX_IMAGE_SIDE}]") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UnsupportedFile(f"{name!r} is not an image this page can read ({error}); use "
                              f"JPEG or PNG") from None


def as_model_sound(data: bytes, name: str) -> bytes:
    """WAV bytes unchanged; other audio (FLAC, OGG, MP3, ...) decoded -> WAV; else refused."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return data
    from soundloc_tf.dataloaders import audio_io

    try:
        return wav_bytes(audio_io.load_audio(data, WAV_RATE), WAV_RATE)
    except (ValueError, OSError) as error:
        raise UnsupportedFile(f"{name!r} is not a sound this page can read ({error}); use WAV, "
                              f"FLAC, OGG or MP3") from None


def sample_video(data: bytes, name: str, clip_seconds: float,
                 interval: float = VIDEO_INTERVAL_SECONDS,
                 max_samples: int = MAX_VIDEO_SAMPLES) -> list[tuple[float, bytes, bytes]]:
    """(time, JPEG frame, WAV window centred on it) every `interval` seconds of a video.

    Args:
        data: the video file's bytes (any container PyAV/FFmpeg reads).
        clip_seconds: the sound window, the length the model was trained on.
        interval: seconds between samples; widened so at most `max_samples` are taken.
    """
    from soundloc_tf.dataloaders import audio_io, importers

    with tempfile.TemporaryDirectory(prefix="soundloc-studio-") as folder:
        path = os.path.join(folder, "upload" + os.path.splitext(name)[1].lower())
        with open(path, "wb") as f:
            f.write(data)
        try:
            import av

            with av.open(path) as container:
                if not container.streams.video:
                    raise UnsupportedFile(f"{name!r} has no video stream")
                if not container.streams.audio:
                    raise UnsupportedFile(f"{name!r} has no sound track: there is nothing to "
                                          f"localise")
                duration = importers.video_duration(container)
            audio = audio_io.load_audio(path, WAV_RATE)
            interval = max(interval, duration / max_samples)
            count = max(1, int(duration / interval))
            times = [(i + 0.5) * duration / count for i in range(count)]
            frames = importers.frames_at(path, times)
        except UnsupportedFile:
            raise
        except Exception as error:  # FFmpeg's many error types, importers.SkipItem
            raise UnsupportedFile(f"{name!r} is not a video this page can read "
                                  f"({type(error).__name__}: {error})") from None
    from PIL import Image

    window = max(1, int(round(clip_seconds * WAV_RATE)))
    out = []
    for t, frame in zip(times, frames):
        jpeg = io.BytesIO()
        Image.fromarray(frame).save(jpeg, format="JPEG", quality=90)
        start = max(int(round(t * WAV_RATE)) - window // 2, 0)
        sound = audio_io.fit_length(audio, window, offset=start)
        out.append((t, jpeg.getvalue(), wav_bytes(sound, WAV_RATE)))
    return out


class Localizer:
    """Asks one served model for heat maps.

    Args:
        server: TF Serving's REST address (http://host:8501) or soundloc-dev-server's.
        model_name: the served model's name.
        timeout: seconds per request; no retries, so a server that is down is
            reported on the page at once instead of after a backoff.
    """

    def __init__(self, server: str, model_name: str = "soundloc", timeout: float = 120.0):
        self.client = ServingClient(server, model_name, timeout=timeout, retries=0)
        self.server = self.client.server

    def localize(self, images: Sequence[bytes], sounds: Sequence[bytes]) -> list[dict[str, Any]]:
        """Pairs of JPEG/PNG and WAV bytes -> [{"heatmap_png", "box", "score"}] for the page."""
        try:
            results = self.client.localize(list(images), list(sounds))
        except ServingError as error:
            if error.status is not None and 400 <= error.status < 500 and error.status != 404:
                raise UnsupportedFile(f"the model refused the files: {error}") from None
            raise ModelUnavailable(
                f"the model server at {self.server} did not answer ({error}); start it "
                f"(soundloc-dev-server --model_base_path=exports/soundloc, or TF Serving) or "
                f"pass --server") from None
        return [{"heatmap_png": _data_url(heatmap_png(r["heatmap"]), "image/png"),
                 "box": [round(v, 6) for v in r["box"]], "score": r["score"]} for r in results]

    def localize_video(self, data: bytes, name: str, clip_seconds: float) -> dict[str, Any]:
        samples = sample_video(data, name, clip_seconds)
        results = self.localize([s[1] for s in samples], [s[2] for s in samples])
        return {"samples": [{"time": round(t, 3), "frame": _data_url(jpeg, "image/jpeg"), **r}
                            for (t, jpeg, _), r in zip(samples, results)]}
