"""Shared helpers of the serving tests (test_export, test_serving, test_localize).

`exported` trains a 2-step tiny run and exports it once per pytest process
(a module-level cache, so importing the fixture into several test modules
still trains once): version 1 with the default 224 x 224 heat map and
version 2 with a 32 x 32 one, so version routing is visible in the answers.
The media helpers write real files with Pillow, the `wave` module,
soundfile and PyAV.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL_HEATMAP = 32


@dataclasses.dataclass(frozen=True)
class Exported:
    workdir: Path
    export_base: Path
    model_dir: Path  # <export_base>/soundloc
    config: object  # soundloc_tf.config.Config
    export_seconds: float

    def version(self, number: int = 1) -> Path:
        return self.model_dir / str(number)


_CACHE: dict[str, Exported] = {}


def _train_and_export(root: Path) -> Exported:
    import time

    import tensorflow as tf

    from soundloc_tf.dataloaders import data
    from soundloc_tf.inference import export
    from soundloc_tf.config import get_config
    from soundloc_tf.train.training import Trainer

    config = get_config("tiny", train_steps=2, batch_size=4, eval_every=1000, checkpoint_every=1,
                        num_summary_images=0, log_every=1000)
    workdir = root / "run"
    # One device: no collectives shared with the other tests' MirroredStrategy.
    strategy = tf.distribute.OneDeviceStrategy(tf.config.list_logical_devices("CPU")[0].name)
    Trainer(config, str(workdir), strategy,
            validation=data.synthetic_dataset(config, config.eval_seed, count=4),
            log=lambda _: None).train()
    base = root / "exports"
    started = time.perf_counter()
    first = export.export_run(str(workdir), str(base))
    seconds = time.perf_counter() - started
    second = export.export_run(str(workdir), str(base), heatmap_size=SMALL_HEATMAP)
    assert (first, second) == (str(base / "soundloc" / "1"), str(base / "soundloc" / "2"))
    return Exported(workdir, base, base / "soundloc", config, seconds)


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    if "run" not in _CACHE:
        _CACHE["run"] = _train_and_export(tmp_path_factory.mktemp("serving"))
    return _CACHE["run"]


# ---------------------------------------------------------------------------
# Media.


def scenes(config, count: int = 3) -> list[dict[str, np.ndarray]]:
    """Held-out synthetic scenes as numpy: image float [S, S, 3], waveform [T], boxes."""
    from soundloc_tf.dataloaders import data

    return [{k: v.numpy() for k, v in s.items()}
            for s in data.synthetic_dataset(config, config.eval_seed, count=count)]


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(pixels: np.ndarray, palette: bool = False) -> bytes:
    """uint8 gray/RGB/RGBA or uint16 gray (16-bit PNG) pixels -> PNG bytes."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if palette:
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def wav_bytes(samples: np.ndarray, rate: int, sample_width: int = 2) -> bytes:
    """PCM WAV through the standard `wave` module; samples [F] or [F, channels] in [-1, 1]."""
    samples = np.asarray(samples, np.float64)
    if samples.ndim == 1:
        samples = samples[:, None]
    clipped = np.clip(samples, -1.0, 1.0)
    if sample_width == 1:
        raw = np.round(clipped * 127.0 + 128.0).astype(np.uint8).tobytes()
    else:
        raw = np.round(clipped * 32767.0).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(sample_width)
        w.setframerate(rate)
        w.writeframes(raw)
    return out.getvalue()


def soundfile_wav(samples: np.ndarray, rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    """WAV encodings `wave` cannot write (24/32-bit PCM, float, WAVE_FORMAT_EXTENSIBLE)."""
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, samples, rate, subtype=subtype, format=fmt)
    return out.getvalue()


def write_video(path: Path, frames: list[np.ndarray], audio: np.ndarray | None, fps: int,
                sample_rate: int) -> Path:
    """H.264 (+ AAC mono) MP4 with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        # Every stream is added before the first packet is written.
        sound = container.add_stream("aac", rate=sample_rate, layout="mono") \
            if audio is not None else None
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = sample_rate, 0
            for packet in list(sound.encode(frame)) + list(sound.encode(None)):
                container.mux(packet)
    return path


# ---------------------------------------------------------------------------
# Programs.


def run_module(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <module> args` from the repository root, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)


def saved_model_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The venv's saved_model_cli (the module itself where the script is missing)."""
    script = Path(sys.executable).parent / "saved_model_cli"
    command = [str(script)] if script.exists() else \
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(command + list(args), env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2 and a single 'error: ...' line on stderr holding `fragments`."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
