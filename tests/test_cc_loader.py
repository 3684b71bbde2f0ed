"""TF Serving's own loader, tensorflow::LoadSavedModel, on a real export.

TF Serving cannot run here (no Docker), but the C++ loader it uses ships in the
tensorflow-cpu wheel (libtensorflow_cc.so.2 and its headers).  serving/cc/load_saved_model.cc
is built against the installed wheel, loads the export with the "serve" tag, replays its
warm-up records as TF Serving does, and runs `serving_default` on JPEG and WAV bytes and
`serving_tensors` on tensors.  Its outputs must equal the Python signature calls within
1e-6 (measured: bit-identical, the same kernels run on both sides).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from serving_fixtures import ROOT, exported, jpeg_bytes, scenes, to_uint8, wav_bytes  # noqa: F401

SOURCE = ROOT / "serving" / "cc" / "load_saved_model.cc"
TOLERANCE = 1e-6

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="no C++ compiler (g++) to build the LoadSavedModel "
                                       "program; CI has one (apt-get install g++)")


def build_loader(output: Path) -> tuple[Path, float]:
    """Compiles the loader at -O0 against the installed wheel: (binary, seconds)."""
    import tensorflow as tf

    library_dir = tf.sysconfig.get_lib()
    # --no-as-needed: without it the session factory's library is dropped and loading fails
    # with "No session factory registered".
    command = ["g++", "-O0", "-w", *tf.sysconfig.get_compile_flags(), str(SOURCE), "-o",
               str(output), f"-L{library_dir}", "-Wl,--no-as-needed",
               "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2",
               f"-Wl,-rpath,{library_dir}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, time.perf_counter() - started


@pytest.fixture(scope="module")
def loader(tmp_path_factory) -> Path:
    binary, seconds = build_loader(tmp_path_factory.mktemp("cc") / "load_saved_model")
    assert seconds < 600  # measured ~13 s on 2 cores
    return binary


@pytest.mark.slow
def test_load_saved_model_in_cc_agrees_with_python(loader, exported, tmp_path):
    import tensorflow as tf

    scene = scenes(exported.config, 1)[0]
    image, sound = jpeg_bytes(to_uint8(scene["image"])), wav_bytes(scene["waveform"], 8000)
    files = {"image": image, "sound": sound,
             "image.f32": scene["image"].astype("<f4").tobytes(),
             "waveform.f32": scene["waveform"].astype("<f4").tobytes()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    export_dir = exported.version(1)
    result = subprocess.run([str(loader), str(export_dir), str(out),
                             *(str(tmp_path / n) for n in files)],
                            capture_output=True, text=True, timeout=600,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    # The export's warm-up records: a JPEG and a PNG request, and a tensors one.
    assert result.stdout.splitlines() == [f"loaded {export_dir}", "warmup 2 requests",
                                          "serving_default ok", "serving_tensors ok"]

    signatures = tf.saved_model.load(str(export_dir)).signatures
    python = {
        "serving_default": signatures["serving_default"](
            image_bytes=tf.constant([image]), wav_bytes=tf.constant([sound])),
        "serving_tensors": signatures["serving_tensors"](
            image=tf.constant(scene["image"][None]), waveform=tf.constant(scene["waveform"][None])),
    }
    for signature, outputs in python.items():
        for key, expected in outputs.items():
            got = np.fromfile(out / f"{signature}.{key}.f32", "<f4")
            assert got.size == expected.numpy().size, (signature, key)
            np.testing.assert_allclose(got, expected.numpy().reshape(-1), rtol=0,
                                       atol=TOLERANCE, err_msg=f"{signature}.{key}")


@pytest.mark.slow
def test_the_cc_loader_reports_a_missing_export_in_one_line(loader, tmp_path):
    result = subprocess.run([str(loader), str(tmp_path / "missing"), str(tmp_path), "a", "b",
                             "c", "d"], capture_output=True, text=True, timeout=300,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: LoadSavedModel: ")
