"""Exports a trained model as a TensorFlow Serving SavedModel.

The SavedModel is written with `keras.export.ExportArchive` in TF Serving's
versioned layout, `<export_base>/<model_name>/<version>/`, first into a
hidden temporary directory that is renamed into place when complete, so a
server polling the base path never sees half a model.  It serves the two
signatures of `signatures` (bytes or tensors in; heat map, box and score
out), whose decoders are `image_decode` and `wav_decode` and whose box is
`heatmap_boxes`'s.

The export also holds assets.extra/tf_serving_warmup_requests, real
requests to both signatures that TF Serving replays before serving the
version (the format: soundloc_tf.warmup), and assets.extra/soundloc_export.json,
the settings it was written with.  On a full disk the export fails with one
OSError line and leaves no staging directory behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf.config import Config
from soundloc_tf.inference.image_decode import MAX_IMAGE_SIDE
from soundloc_tf.inference.signatures import (BYTES_SIGNATURE, TENSORS_SIGNATURE,
                                              serving_functions, signature_summary)
from soundloc_tf.inference.wav_decode import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from soundloc_tf.warmup import WARMUP_PATH, write_warmup_records
from soundloc_tf.wav_encode import wav_bytes

# TF Serving ignores assets.extra/; tools read the export's settings from here.
EXPORT_INFO_PATH = os.path.join("assets.extra", "soundloc_export.json")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# The largest version TF Serving can address (int64).
MAX_VERSION = 2 ** 63 - 1


def next_version(model_dir: str) -> int:
    """1 + the largest integer version directory in `model_dir` (1 when none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir)
                # isascii: '²'.isdigit() is True but int('²') fails (N12).
                if d.isascii() and d.isdigit() and os.path.isdir(os.path.join(model_dir, d))]
    return max(versions, default=0) + 1


def export_model(model: keras.Model, config: Config, export_base: str,
                 model_name: str = "soundloc", version: int | None = None,
                 heatmap_size: int | None = None, extra_info: dict | None = None) -> str:
    """Writes <export_base>/<model_name>/<version>/ and returns its path.

    The directory appears complete or not at all; an existing version is never overwritten.

    Args:
        model: the localization model (inputs "image", "waveform"; outputs "attention",
            "score").
        config: the configuration it was built with (sizes, sample rate, box threshold).
        export_base: the folder holding one folder per model name.
        model_name: letters, digits, '_', '.' or '-', not starting with '.' or '-'.
        version: an integer in [1, MAX_VERSION]; default: the next one.
        heatmap_size: side of the served heat maps, in [8, 1024]; default config.eval_size.
        extra_info: more entries for the export's settings file (EXPORT_INFO_PATH).
    """
    if not _MODEL_NAME.fullmatch(model_name or ""):
        raise ValueError("model_name must be letters, digits, '_', '.' or '-', not starting "
                         f"with '.' or '-'. Received: model_name={model_name!r}")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or not 1 <= version <= MAX_VERSION):
        # TF Serving addresses versions as int64 (gRPC's Int64Value): a larger one is
        # written but can never be asked for.
        raise ValueError(f"version must be an integer in [1, {MAX_VERSION}] (int64, as TF "
                         f"Serving addresses versions). Received: version={version!r}")
    heatmap_size = heatmap_size or config.eval_size
    if not 8 <= heatmap_size <= 1024:
        raise ValueError(f"heatmap_size must lie in [8, 1024]. Received: "
                         f"heatmap_size={heatmap_size}")
    model_dir = os.path.join(export_base, model_name)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the export directory. Received: {model_dir!r} "
                         f"({error.strerror})") from None
    version = next_version(model_dir) if version is None else version
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise ValueError(f"version {version} already exists; pick another --version or leave "
                         f"it out for the next one. Received: {final!r}")

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, signature) in serving_functions(model, config, heatmap_size).items():
        archive.add_endpoint(name, fn, input_signature=signature)

    # Hidden name: TF Serving only loads directories named by an integer.
    staging = os.path.join(model_dir, f".{version}.tmp-{os.getpid()}")
    started = time.perf_counter()
    try:
        archive.write_out(staging, verbose=False)
        write_warmup_records(os.path.join(staging, WARMUP_PATH), model_name,
                             warmup_requests(config))
        info = {
            "model_name": model_name, "version": version,
            "signatures": signature_summary(config, heatmap_size),
            "limits": {"max_image_side": MAX_IMAGE_SIDE,
                       "sample_rate_range_hz": [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]},
            "heatmap_size": heatmap_size, "box_threshold": config.ciou_threshold,
            "config": dataclasses.asdict(config),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "export_seconds": round(time.perf_counter() - started, 2),
            **(extra_info or {}),
        }
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        with open(os.path.join(staging, EXPORT_INFO_PATH), "w") as f:
            json.dump(info, f, indent=1)
        os.rename(staging, final)
    except (tf.errors.OpError, OSError) as error:  # a full disk is ResourceExhaustedError in TF
        shutil.rmtree(staging, ignore_errors=True)
        reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
        reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", reason)
        raise OSError(f"cannot write the export ({reason.strip().splitlines()[0]}); nothing "
                      f"was left behind. Received: {model_dir!r}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def warmup_requests(config: Config) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) of real requests: a JPEG and a PNG with WAV tones, and tensors."""
    s, rate = config.image_size, config.sample_rate
    ramp = np.linspace(0.0, 1.0, s, dtype=np.float32)
    pixels = tf.constant(np.round(np.stack(np.broadcast_arrays(
        ramp[:, None], ramp[None, :], 0.5), axis=-1) * 255).astype(np.uint8))
    t = np.arange(int(config.clip_seconds * rate), dtype=np.float32) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    wav = wav_bytes(tone, rate)
    images = np.array([tf.io.encode_jpeg(pixels).numpy(), tf.io.encode_png(pixels).numpy()],
                      dtype=object)
    return [
        (BYTES_SIGNATURE, {"image_bytes": images, "wav_bytes": np.array([wav, wav], object)}),
        (TENSORS_SIGNATURE, {"image": np.full([1, s, s, 3], 0.5, np.float32),
                             "waveform": tone[None, :config.num_samples]}),
    ]


def export_run(workdir: str, export_base: str, model_name: str = "soundloc",
               version: int | None = None, heatmap_size: int | None = None) -> str:
    """Exports the latest checkpoint of a training run (see `export_model`)."""
    from soundloc_tf.train.run_dir import restore_model

    config, model, step = restore_model(workdir)
    return export_model(model, config, export_base, model_name, version, heatmap_size,
                        extra_info={"step": step, "workdir": os.path.abspath(workdir)})


def read_export_info(path: str) -> dict:
    """The settings an export was written with, from its assets.extra/ file."""
    try:
        with open(os.path.join(path, EXPORT_INFO_PATH)) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"not a soundloc export (no readable {EXPORT_INFO_PATH}). Received: "
                         f"{path!r} ({type(error).__name__})") from None
