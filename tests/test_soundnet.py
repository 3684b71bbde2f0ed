"""SoundNet-8: geometry, conversion checks, the paper's audio tower, and real recordings."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from soundloc_tf import config as config_lib
from soundloc_tf.dataloaders import audio_io
from soundloc_tf.modeling import soundnet
from soundloc_tf.config import get_config

WEIGHTS = Path(os.environ.get("SOUNDLOC_SOUNDNET_WEIGHTS",
                              Path.home() / ".keras" / "models" / "soundnet8.weights.h5"))
CLASSES = WEIGHTS.with_name(WEIGHTS.name.replace(".weights.h5", ".classes.json"))
SOUNDS = Path(__file__).resolve().parents[1].parent / "shared" / "realsets" / "stamps" / "sounds"
DOGS = range(151, 269)  # ImageNet's dog breeds
BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))
BOWED_STRINGS = (486, 889)  # cello, violin


def test_geometry_matches_the_release():
    # 20 s at 22,050 Hz gives 4 conv8 steps, as in the Torch model.
    assert soundnet.output_length(441000) == 4
    assert soundnet.min_samples() == config_lib.SOUNDNET8_MIN_SAMPLES
    assert soundnet.output_length(soundnet.min_samples()) == 1
    assert soundnet.output_length(soundnet.min_samples() - 1) < 1
    model = soundnet.build_soundnet8(soundnet.min_samples())
    assert model.output_shape == (None, 1000)
    assert model.count_params() == 11_071_384  # conv1..conv8 + batch-norm statistics
    with pytest.raises(ValueError, match="at least 209374 samples"):
        soundnet.build_soundnet8(22050 * 5)


def _params(model, bad=None):
    params = {}
    for name, filters, kernel, *_ in soundnet.LAYERS + (soundnet.CONV8 + (0,),):
        conv = model.get_layer(name)
        k, cin, cout = conv.kernel.shape
        entry = {"weights": np.zeros([k, 1, cin, cout], np.float32),
                 "biases": np.zeros([cout], np.float32)}
        if name != "conv8":
            entry.update(gamma=np.ones(cout), beta=np.zeros(cout), mean=np.zeros(cout),
                         var=np.ones(cout))
        params[name] = entry
    if bad:
        params[bad]["weights"] = params[bad]["weights"][:-1]
    return params


def test_conversion_checks_every_shape():
    model = soundnet.build_soundnet8(soundnet.min_samples())
    params = _params(model)
    params["conv3"]["weights"][:] = 0.5
    soundnet.assign_npy_weights(model, params)
    np.testing.assert_array_equal(model.get_layer("conv3").kernel.numpy(), 0.5)
    with pytest.raises(ValueError, match="kernel shape mismatch for conv5"):
        soundnet.assign_npy_weights(model, _params(model, bad="conv5"))
    del params["conv8"]
    with pytest.raises(ValueError, match="missing 'conv8'"):
        soundnet.assign_npy_weights(model, params)


def test_soundnet8_is_the_audio_tower_of_the_paper_config():
    from soundloc_tf.modeling.models import build_audio_tower

    assert get_config("paper").audio_tower == "soundnet8"
    config = get_config("paper", clip_seconds=10.0, audio_weights="none")
    tower = build_audio_tower(config)
    assert tower.output_shape == (None, 1000) and not tower.trainable
    with pytest.raises(ValueError, match="needs sample_rate=22050"):
        get_config("tiny", audio_tower="soundnet8")
    with pytest.raises(ValueError, match="at least 209374 samples"):
        get_config("paper", audio_tower="soundnet8", clip_seconds=5.0)
    with pytest.raises(ValueError, match="audio_weights apply only"):
        get_config("tiny", audio_weights="x.weights.h5")
    with pytest.raises(ValueError, match="the SoundNet-8 weights file is missing"):
        build_audio_tower(config.replace(audio_weights="/nonexistent.weights.h5"))


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=(
    f"converted SoundNet-8 weights absent ({WEIGHTS}); make them with "
    "`soundloc-fetch-weights --what=soundnet`"))
@pytest.mark.skipif(not SOUNDS.is_dir(), reason=f"real recordings absent: {SOUNDS}")
def test_top_imagenet_classes_of_real_recordings_are_plausible():
    from soundloc_tf.modeling.models import build_audio_tower

    config = get_config("paper", audio_tower="soundnet8", audio_weights=str(WEIGHTS))
    tower = build_audio_tower(config)
    names = ["violin", "cello", "fox", "blackbird", "hen", "crow", "lark", "cuckoo"]
    clips = np.stack([soundnet.prepare_waveform(
        audio_io.load_audio(str(SOUNDS / f"{n}__0.wav"), 22050), config.num_samples)
        for n in names])
    logits = dict(zip(names, tower.predict(clips, batch_size=4, verbose=0)))
    rank = {n: np.argsort(np.argsort(-v)) for n, v in logits.items()}  # 0 = top
    top5 = {n: list(np.argsort(-v)[:5]) for n, v in logits.items()}
    if CLASSES.is_file():
        imagenet = json.load(open(CLASSES))["imagenet"]
        assert imagenet[889].startswith("violin") and imagenet[486].startswith("cello")
    assert 889 in top5["violin"]  # violin: 2nd of 1000 (accordion 1st)
    assert sum(c in DOGS for c in top5["fox"]) >= 3  # a fox's bark: dog breeds
    assert any(c in BIRDS for c in top5["blackbird"])  # toucan, macaw
    assert any(c in BIRDS for c in top5["hen"])  # goose
    strings = lambda n: min(rank[n][c] for c in BOWED_STRINGS)
    birds = ("blackbird", "hen", "crow", "lark", "cuckoo")
    assert max(strings("violin"), strings("cello")) < 25
    assert min(strings(n) for n in birds) > 100


# ---------------------------------------------------------------------------
# The other pretrained tower: VGG16 with HED (edge detection) weights.

HED = Path(os.environ.get("SOUNDLOC_HED_WEIGHTS",
                          Path.home() / ".keras" / "models" / "hed_bsds500.weights.h5"))


@pytest.mark.skipif(not HED.is_file(), reason=(
    f"HED weights absent ({HED}); fetch them with `soundloc-fetch-weights --what=hed`"))
def test_hed_weights_load_into_the_vgg16_tower():
    import h5py
    import tensorflow as tf

    from soundloc_tf.modeling.models import build_image_tower

    config = get_config("paper", image_weights="hed", image_size=64)
    tower = build_image_tower(config)
    with h5py.File(HED, "r") as f:
        kernel = f["block1/layers/conv2d/vars/0"][()]
        last = f["block5/layers/conv2d_2/vars/0"][()]
    np.testing.assert_array_equal(tower.get_layer("block1_conv1").kernel.numpy(), kernel)
    np.testing.assert_array_equal(tower.get_layer("block5_conv3").kernel.numpy(), last)
    # Edge weights respond to a step edge more than to a flat image.
    step = np.zeros([1, 64, 64, 3], np.float32)
    step[:, :, 32:] = 1.0
    flat = np.full([1, 64, 64, 3], 0.5, np.float32)
    conv1 = tf.keras.Model(tower.input, tower.get_layer("block1_conv2").output)
    edge = conv1(step).numpy()[0, 8:-8]
    assert edge[:, 30:34].mean() > 3 * edge[:, 8:24].mean()
    assert np.abs(conv1(flat).numpy()[0, 8:-8, 8:-8]).mean() < edge[:, 30:34].mean()
