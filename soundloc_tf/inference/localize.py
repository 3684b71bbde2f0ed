"""Where is the sound? One image and one sound -> heat map, box and score, in memory.

`Localizer` runs a trained model (a run directory, an exported SavedModel,
or a Keras model) through exactly the decoding and post-processing of the
exported signatures (`soundloc_tf.inference.export`), so a result here matches what
TF Serving returns for the same files:

    localizer = Localizer.from_path("runs/tiny")            # or an export
    result = localizer.localize("dog.jpg", "bark.wav")
    result.heatmap, result.box, result.score

Images may be files or bytes (JPEG/PNG through the serving decoder, other
formats through Pillow), PIL images or arrays (uint8, uint16 or float in
[0, 1]; gray, RGB or RGBA).  Sounds may be WAV files or bytes (the serving
decoder), other formats soundfile reads, or `(samples, sample_rate)`.

Videos are in `soundloc_tf.inference.video`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from soundloc_tf.tf_logs import silenced_stderr
from soundloc_tf.inference import export, image_decode, signatures, wav_decode
from soundloc_tf.config import Config
from soundloc_tf.visualize import draw_boxes, overlay

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Localization:
    """One image-sound pair: heat map [H, H] in [0, 1], box [x1, y1, x2, y2], score."""

    heatmap: np.ndarray
    box: np.ndarray
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"box": [round(float(v), 6) for v in self.box], "score": round(self.score, 6)}

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """The heat map and box drawn over `image` (uint8 [H, W, 3], any size) -> uint8."""
        return render_overlays(image[None], self.heatmap[None], self.box[None])[0]


def render_overlays(images: np.ndarray, heatmaps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W, 3], heat maps [N, h, w], boxes [N, 4] -> uint8 overlays."""
    pictures = tf.convert_to_tensor(images, tf.float32) / 255.0
    blended = draw_boxes(overlay(pictures, heatmaps), tf.convert_to_tensor(boxes)[:, None])
    return tf.cast(tf.round(tf.clip_by_value(blended, 0.0, 1.0) * 255.0), tf.uint8).numpy()


_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


def _error_message(error: tf.errors.OpError) -> str:
    """The useful line of a graph error: the text of a failed in-graph check, or the first
    line that is not graph bookkeeping ({{function_node ...}}, node names, stack notes)."""
    text = _FUNCTION_NODE.sub("", error.message)
    if "assertion failed: [" in text:
        text = text.split("assertion failed: [", 1)[1]
        # The check's own text may end in "]" (e.g. "[1, 4096]"): drop only the wrapper's.
        return text.split("]\n", 1)[0] if "]\n" in text else text.strip()[:-1]
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Detected at node", "<stack traces", "[[")) \
                and line != "Graph execution error:":
            return line
    return type(error).__name__


def config_from_dict(fields: dict) -> Config:
    """A Config from its JSON form (lists back to tuples; unknown keys ignored)."""
    known = {f.name for f in dataclasses.fields(Config)}
    try:
        return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
                         if k in known})
    except TypeError as error:
        raise ValueError(f"the saved configuration is incomplete ({error})") from None


# What TensorFlow's loader raises for a damaged export: OpError (DataLossError, NotFound),
# FileNotFoundError for a missing variables/, IndexError ("Read less bytes than requested")
# for truncated variables.
_DAMAGED_EXPORT_ERRORS = (tf.errors.OpError, OSError, ValueError, IndexError, KeyError)


def load_saved_model(path: str):
    """tf.saved_model.load, with a damaged export (variables/ missing or truncated) as one
    ValueError line naming the path, instead of the loader's traceback."""
    try:
        return tf.saved_model.load(path)
    except _DAMAGED_EXPORT_ERRORS as error:
        reason = str(getattr(error, "message", None) or error).strip().splitlines()
        raise ValueError(f"cannot load the SavedModel ({type(error).__name__}: "
                         f"{reason[0] if reason else 'no message'}); its variables/ may be "
                         f"missing or truncated: export it again. Received: {path!r}") from None


class Localizer:
    """A model plus the serving signatures' decoding and post-processing.

    `run(images [N, S, S, 3], waveforms [N, T]) -> {"heatmap", "box", "score"}`
    is either the Keras model wrapped by `signatures.localize_fn` or the
    SavedModel's `serving_tensors` signature.
    """

    def __init__(self, config: Config, run: Callable[[tf.Tensor, tf.Tensor], dict],
                 heatmap_size: int, owner: Any = None):
        self.config = config
        self.heatmap_size = heatmap_size
        self._run = run
        self._owner = owner  # keeps what `run` needs alive (a loaded SavedModel)
        s, sr, t = config.image_size, config.sample_rate, config.num_samples
        self._decode_image = tf.function(
            lambda contents: image_decode.decode_image(contents, s),
            input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
        self._decode_sound = tf.function(
            lambda contents: wav_decode.decode_sound(contents, config),
            input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
        self._fit_sound = tf.function(
            lambda samples, rate: wav_decode.fit_clip(wav_decode.resample(samples, rate, sr), t),
            input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int64)],
            autograph=False)
        self._resize = tf.function(
            lambda image: image_decode.resize_image(image, s),
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)], autograph=False)

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_model(cls, model, config: Config, heatmap_size: int | None = None) -> "Localizer":
        """An in-memory Keras model built by `models.build_model(config)`."""
        size = heatmap_size or config.eval_size
        s, t = config.image_size, config.num_samples
        run = tf.function(signatures.localize_fn(model, config, size), autograph=False,
                          input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32),
                                           tf.TensorSpec([None, t], tf.float32)])
        return cls(config, run, size)

    @classmethod
    def from_workdir(cls, workdir: PathLike, heatmap_size: int | None = None) -> "Localizer":
        """The latest checkpoint of a training run."""
        from soundloc_tf.train.run_dir import restore_model

        config, model, _ = restore_model(os.fspath(workdir))
        return cls.from_model(model, config, heatmap_size)

    @classmethod
    def from_saved_model(cls, path: PathLike) -> "Localizer":
        """An export: a version directory, or a model directory (its latest version)."""
        path = resolve_saved_model(os.fspath(path))
        info = export.read_export_info(path)
        config = config_from_dict(info["config"])
        loaded = load_saved_model(path)
        signature = loaded.signatures[signatures.TENSORS_SIGNATURE]

        def run(images, waveforms):
            return signature(image=images, waveform=waveforms)

        return cls(config, run, int(info["heatmap_size"]), owner=loaded)

    @classmethod
    def from_path(cls, path: PathLike, heatmap_size: int | None = None) -> "Localizer":
        """A run directory (has config.json) or an export (has saved_model.pb)."""
        path = os.fspath(path)
        if os.path.isfile(os.path.join(path, "config.json")):
            return cls.from_workdir(path, heatmap_size)
        if heatmap_size is not None:
            raise ValueError("heatmap_size is fixed when a model is exported; pass it to the "
                             f"export instead. Received: heatmap_size={heatmap_size}")
        return cls.from_saved_model(path)

    # -- inputs ----------------------------------------------------------------

    def prepare_image(self, image: Any) -> np.ndarray:
        """Any supported image -> float32 [S, S, 3] in [0, 1] (see the module docstring)."""
        if isinstance(image, (str, os.PathLike)):
            with open(image, "rb") as f:
                image = f.read()
        if isinstance(image, (bytes, bytearray)):
            data = bytes(image)
            if data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
                try:
                    # libjpeg prints its complaint to descriptor 2; the error says it too.
                    with silenced_stderr():
                        return self._decode_image(tf.constant(data)).numpy()
                except tf.errors.OpError as error:
                    raise ValueError(_error_message(error)) from None
            image = open_image(data)
        if _is_pil_image(image):
            image = np.asarray(exif_transpose(image).convert("RGB"))
        return self._resize(tf.constant(image_to_float(image))).numpy()

    def prepare_sound(self, sound: Any) -> np.ndarray:
        """Any supported sound -> float32 [config.num_samples] at config.sample_rate."""
        if isinstance(sound, (str, os.PathLike)):
            with open(sound, "rb") as f:
                sound = f.read()
        if isinstance(sound, (bytes, bytearray)):
            data = bytes(sound)
            if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
                try:
                    return self._decode_sound(tf.constant(data)).numpy()
                except tf.errors.OpError as error:
                    raise ValueError(_error_message(error)) from None
            sound = _read_with_soundfile(data)
        if not (isinstance(sound, tuple) and len(sound) == 2):
            raise ValueError("a sound is a file path, file bytes or (samples, sample_rate). "
                             f"Received: {type(sound).__name__}")
        samples, rate = sound
        samples = mono(samples)
        rate = _check_rate(rate)
        count = min(len(samples), int(math.ceil(self.config.clip_seconds * rate)))
        start = (len(samples) - count) // 2
        return self._fit_sound(tf.constant(samples[start:start + count]),
                               tf.constant(rate, tf.int64)).numpy()

    # -- running ---------------------------------------------------------------

    def predict(self, images: np.ndarray, waveforms: np.ndarray,
                batch_size: int = 32) -> dict[str, np.ndarray]:
        """Prepared images [N, S, S, 3] and waveforms [N, T] -> heatmap, box, score arrays."""
        images = np.asarray(images, np.float32)
        waveforms = np.asarray(waveforms, np.float32)
        s, t = self.config.image_size, self.config.num_samples
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or waveforms.shape[1:] != (t,) \
                or len(images) != len(waveforms) or len(images) == 0:
            raise ValueError(f"need images [N, {s}, {s}, 3] and waveforms [N, {t}] with the same "
                             f"N >= 1. Received: {images.shape} and {waveforms.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in signatures.OUTPUT_KEYS}
        for start in range(0, len(images), batch_size):
            try:
                out = self._run(tf.constant(images[start:start + batch_size]),
                                tf.constant(waveforms[start:start + batch_size]))
            except tf.errors.OpError as error:
                raise ValueError(_error_message(error)) from None
            for key in signatures.OUTPUT_KEYS:
                parts[key].append(out[key].numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    def localize(self, image: Any, sound: Any) -> Localization:
        """One image and one sound -> `Localization`."""
        out = self.predict(self.prepare_image(image)[None], self.prepare_sound(sound)[None])
        return Localization(out["heatmap"][0], out["box"][0], float(out["score"][0]))


def localize(image: Any, sound: Any, model: Any, config: Config | None = None) -> Localization:
    """Localises `sound` in `image` with `model`: a `Localizer`, a path (run directory or
    export) or a Keras model (then `config` is required)."""
    if isinstance(model, Localizer):
        localizer = model
    elif isinstance(model, (str, os.PathLike)):
        localizer = Localizer.from_path(model)
    elif config is not None:
        localizer = Localizer.from_model(model, config)
    else:
        raise ValueError("pass config= with a Keras model. Received: config=None")
    return localizer.localize(image, sound)


# ---------------------------------------------------------------------------
# Files and arrays.


def resolve_saved_model(path: str) -> str:
    """`path` if it holds saved_model.pb, else its highest integer version subdirectory."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted((int(d) for d in (os.listdir(path) if os.path.isdir(path) else [])
                       if d.isascii() and d.isdigit()
                       and os.path.isfile(os.path.join(path, d, "saved_model.pb"))),
                      reverse=True)
    if not versions:
        raise ValueError("neither a run directory (config.json) nor an export (saved_model.pb, "
                         f"or version subdirectories holding one). Received: {path!r}")
    return os.path.join(path, str(versions[0]))


def image_to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float [H, W], [H, W, 1|3|4] -> float32 RGB [H, W, 3] in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"an image array is [H, W] or [H, W, 1|3|4]. Received: shape "
                         f"{image.shape}")
    if max(image.shape[:2]) > image_decode.MAX_IMAGE_SIDE:
        raise ValueError(f"each image side must be at most {image_decode.MAX_IMAGE_SIDE} pixels. "
                         f"Received: shape {image.shape}")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
        if not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0:
            raise ValueError("a float image must hold finite values in [0, 1]. Received: "
                             f"range [{np.nanmin(image)}, {np.nanmax(image)}]")
    else:
        raise ValueError(f"image arrays are uint8, uint16 or float. Received: dtype={image.dtype}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[..., :3]


def mono(samples: np.ndarray) -> np.ndarray:
    """[F] or [F, channels] -> float32 [F], channels averaged; at least one finite sample."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "fiu" or samples.ndim not in (1, 2) or samples.size == 0:
        raise ValueError("samples are a non-empty numeric array [frames] or [frames, channels]. "
                         f"Received: shape {samples.shape}, dtype {samples.dtype}")
    samples = samples.astype(np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if not np.all(np.isfinite(samples)):
        raise ValueError("the sound holds NaN or infinite samples")
    return samples


def _check_rate(rate: Any) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or \
            not wav_decode.MIN_SAMPLE_RATE <= rate <= wav_decode.MAX_SAMPLE_RATE:
        raise ValueError(f"the sample rate must be an integer in [{wav_decode.MIN_SAMPLE_RATE}, "
                         f"{wav_decode.MAX_SAMPLE_RATE}] Hz. Received: {rate!r}")
    return int(rate)


def _is_pil_image(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(value, Image.Image)


def open_image(source: Any):
    """A file path or file bytes -> a loaded PIL image, its size checked before its pixels
    are decoded: each side at most image_decode.MAX_IMAGE_SIDE (a header claiming 30000 x 30000
    is a one-line ValueError, not Pillow's DecompressionBombError).

    Args:
        source: a path or the file's bytes.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    described = f"{len(source)} bytes" if isinstance(source, (bytes, bytearray)) else repr(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            if max(image.size) > image_decode.MAX_IMAGE_SIDE:
                raise ValueError(f"image is {image.size[0]}x{image.size[1]} pixels (width x "
                                 f"height); each side must lie in "
                                 f"[1, {image_decode.MAX_IMAGE_SIDE}]")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses before the size is known to the caller; its message has the count.
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        raise ValueError(f"image has {pixels.group(1) if pixels else 'too many'} pixels; each "
                         f"side must lie in [1, {image_decode.MAX_IMAGE_SIDE}]") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:  # SyntaxError: bad headers
        raise ValueError(f"not an image file Pillow can read ({described}; "
                         f"{type(error).__name__})") from None
    return image


def exif_transpose(image):
    """A PIL image turned as its EXIF orientation says (as browsers and the graph show it)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def _read_with_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"not a sound file (WAV, or a format soundfile reads) ({len(data)} "
                         f"bytes; {type(error).__name__})") from None
    if len(samples) == 0:
        raise ValueError("the sound file holds no samples")
    return samples, int(rate)
