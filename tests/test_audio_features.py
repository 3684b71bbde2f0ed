"""config.audio_feature: which output of a pretrained audio tower is the sound feature."""

import os
from pathlib import Path

import numpy as np
import pytest

from soundloc_tf import config as config_lib
from soundloc_tf.config import get_config
from soundloc_tf.modeling import soundnet, yamnet
from soundloc_tf.modeling.models import build_audio_tower, build_model, split_model

MODELS = Path.home() / ".keras" / "models"
SOUNDNET_WEIGHTS = Path(os.environ.get("SOUNDLOC_SOUNDNET_WEIGHTS",
                                       MODELS / "soundnet8.weights.h5"))
YAMNET_WEIGHTS = MODELS / "yamnet.weights.h5"
needs_soundnet = pytest.mark.skipif(not SOUNDNET_WEIGHTS.is_file(), reason=(
    f"converted SoundNet-8 weights absent ({SOUNDNET_WEIGHTS}); make them with "
    "`soundloc-fetch-weights --what=soundnet`"))
needs_yamnet = pytest.mark.skipif(not YAMNET_WEIGHTS.is_file(), reason=(
    f"converted YAMNet weights absent ({YAMNET_WEIGHTS}); make them with "
    "`soundloc-fetch-weights --what=yamnet`"))
SOUNDNET_SECONDS = 10.0  # the shortest whole number of seconds SoundNet-8 takes
YAMNET_SECONDS = 1.0


def _soundnet_config(feature: str, **changes) -> config_lib.Config:
    width = config_lib.AUDIO_FEATURES["soundnet8"][feature]
    settings = {"audio_weights": "none", "clip_seconds": SOUNDNET_SECONDS, **changes}
    return get_config("paper", audio_feature=feature, audio_feature_dim=width, **settings)


def _yamnet_config(feature: str, **changes) -> config_lib.Config:
    width = config_lib.AUDIO_FEATURES["yamnet"][feature]
    settings = {"audio_weights": "none", "clip_seconds": YAMNET_SECONDS, **changes}
    return get_config("paper_yamnet", audio_feature=feature, audio_feature_dim=width, **settings)


def _noise(config: config_lib.Config, count: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal([count, config.num_samples])).astype("float32")


@pytest.mark.parametrize("tower, feature, width", [
    ("soundnet8", "class_logits", 1000), ("soundnet8", "class_probs", 1000),
    ("soundnet8", "scene_logits", 401), ("soundnet8", "scene_probs", 401),
    ("yamnet", "embedding", 1024), ("yamnet", "class_logits", 521),
    ("yamnet", "class_probs", 521)])
def test_each_audio_feature_has_its_width(tower, feature, width):
    config = (_soundnet_config if tower == "soundnet8" else _yamnet_config)(feature)
    model = build_audio_tower(config)
    assert model.name == "audio_tower" and not model.trainable
    assert model.output_shape == (None, width)
    assert model.predict(_noise(config), verbose=0).shape == (2, width)


def test_the_presets_keep_their_features():
    assert get_config("paper").resolved_audio_feature == "class_logits"
    assert get_config("paper").audio_feature_dim == 1000
    assert get_config("paper_yamnet").resolved_audio_feature == "embedding"
    assert get_config("paper_yamnet").audio_feature_dim == 1024
    assert get_config("tiny").resolved_audio_feature == "learned"


@pytest.mark.parametrize("feature", ["class_probs", "scene_probs"])
def test_soundnet_probabilities_are_distributions(feature):
    config = _soundnet_config(feature)
    probs = build_audio_tower(config).predict(_noise(config), verbose=0)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_yamnet_scores_are_per_class_and_need_not_sum_to_one():
    config = _yamnet_config("class_probs")
    scores = build_audio_tower(config).predict(_noise(config), verbose=0)
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    # Multi-label sigmoids: untrained ones sit near 0.5 each, summing to far more than 1.
    assert scores.sum(axis=1).min() > 100


@needs_yamnet
def test_yamnet_class_features_are_what_the_full_classifier_computes():
    import keras

    config = _yamnet_config("class_logits", audio_weights=str(YAMNET_WEIGHTS),
                            clip_seconds=3.0)
    waveform = _noise(config)
    full = yamnet.load_yamnet(config.num_samples, str(YAMNET_WEIGHTS), classes=True)
    expected_logits = full.predict(waveform, verbose=0)[1]
    logits = build_audio_tower(config).predict(waveform, verbose=0)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    # class_probs: the mean over the patches of each patch's sigmoid, as YAMNet's own
    # inference averages its scores (not the sigmoid of the mean logit).
    patches = yamnet.num_patches(config.num_samples)
    assert patches == 5  # 3 s: 298 frames, a 96-frame patch every 48
    per_patch = keras.Model(full.input, full.get_layer("logits").output).predict(
        waveform, verbose=0).reshape(2, patches, yamnet.NUM_CLASSES)
    probs = build_audio_tower(config.replace(audio_feature="class_probs")).predict(
        waveform, verbose=0)
    np.testing.assert_allclose(probs, (1 / (1 + np.exp(-per_patch))).mean(axis=1),
                               rtol=1e-5, atol=1e-6)
    assert np.abs(probs - 1 / (1 + np.exp(-logits))).max() > 1e-4


@needs_soundnet
def test_soundnet_class_features_come_from_the_released_object_head():
    config = _soundnet_config("class_logits", audio_weights=str(SOUNDNET_WEIGHTS),
                              clip_seconds=20.0)
    waveform = _noise(config, count=1)
    logits = build_audio_tower(config).predict(waveform, verbose=0)
    # The default tower is the one it always was: conv8's logits averaged over 4 steps.
    reference = soundnet.build_soundnet8(config.num_samples)
    reference.load_weights(str(SOUNDNET_WEIGHTS))
    np.testing.assert_allclose(logits, reference.predict(waveform, verbose=0), rtol=1e-5)
    probs = build_audio_tower(config.replace(audio_feature="class_probs")).predict(
        waveform, verbose=0)
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
    assert np.argmax(probs) == np.argmax(logits)


@needs_soundnet
def test_scene_features_ask_for_a_weights_file_with_both_heads(tmp_path):
    import h5py

    with h5py.File(SOUNDNET_WEIGHTS, "r") as f:
        shapes = []
        f.visititems(lambda _, item: shapes.append(getattr(item, "shape", None)))
    if (8, 1024, soundnet.CONV8_PLACES[1]) in shapes:
        pytest.skip("this weights file holds the scene head too")
    config = _soundnet_config("scene_probs", audio_weights=str(SOUNDNET_WEIGHTS))
    with pytest.raises(ValueError, match="scene features need a file with both heads"):
        build_audio_tower(config)


@needs_soundnet
@pytest.mark.slow
def test_soundnet_wraps_a_clip_whose_last_step_would_read_the_padding():
    # 10 s gives conv7 8 positions and one conv8 step over all of them, the last being
    # the padding artefact: unwrapped, its logits spread 30-50 times wider than on 20 s
    # and the same classes win for any sound.
    assert soundnet.wrap_samples(441000) == 0
    short = int(SOUNDNET_SECONDS * soundnet.SAMPLE_RATE)
    assert soundnet.wrap_samples(short) > 0
    assert soundnet.output_length(short + soundnet.wrap_samples(short)) == \
        soundnet.output_length(short) == 1
    spread = {}
    for seconds in (SOUNDNET_SECONDS, 20.0):
        config = _soundnet_config("class_logits", audio_weights=str(SOUNDNET_WEIGHTS),
                                  clip_seconds=seconds)
        logits = build_audio_tower(config).predict(_noise(config, count=1), verbose=0)
        spread[seconds] = float(logits.std())
    assert spread[SOUNDNET_SECONDS] < 2 * spread[20.0]
    assert spread[20.0] < 5


def _tiny_yamnet(feature: str) -> config_lib.Config:
    return get_config("tiny", audio_tower="yamnet", sample_rate=yamnet.SAMPLE_RATE,
                      audio_feature=feature,
                      audio_feature_dim=config_lib.AUDIO_FEATURES["yamnet"][feature],
                      freeze_image_tower=True, freeze_audio_tower=True, batch_size=4)


def test_a_cache_with_one_audio_feature_is_not_reused_for_another(tmp_path):
    from soundloc_tf.dataloaders import data
    from soundloc_tf.train import feature_cache

    logits_config, probs_config = _tiny_yamnet("class_logits"), _tiny_yamnet("class_probs")
    logits_model, probs_model = build_model(logits_config), build_model(probs_config)
    probs_model.set_weights(logits_model.get_weights())  # the same weights, other features
    towers = [split_model(m)[:2] for m in (logits_model, probs_model)]
    assert feature_cache.fingerprint(*towers[0]) != feature_cache.fingerprint(*towers[1])
    directory = str(tmp_path / "cache")
    manifest = feature_cache.write_cache(
        logits_model, logits_config, data.synthetic_dataset(logits_config, 0, count=4),
        directory, batch_size=4)
    assert manifest["audio_feature"] == "class_logits" and manifest["audio_dim"] == 521
    with pytest.raises(ValueError, match="holds audio_feature='class_logits'"):
        feature_cache.read_cache(probs_config, directory, training=False)
    with pytest.raises(ValueError, match="holds audio_feature='class_logits'"):
        feature_cache.ensure_cache(probs_model, probs_config,
                                   data.synthetic_dataset(probs_config, 0, count=4), directory)
    feature_cache.read_cache(logits_config, directory, training=False, model=logits_model)


def test_the_default_feature_keeps_the_towers_fingerprint():
    from soundloc_tf.train import feature_cache

    config = _tiny_yamnet("embedding")
    explicit = build_audio_tower(config)
    default = build_audio_tower(config.replace(audio_feature="default"))
    default.set_weights(explicit.get_weights())
    plain = yamnet.build_yamnet(config.num_samples, name="audio_tower")
    plain.set_weights(explicit.get_weights())
    assert feature_cache.fingerprint(explicit) == feature_cache.fingerprint(default) == \
        feature_cache.fingerprint(plain)


@pytest.mark.parametrize("preset, changes, message", [
    ("paper", {"audio_feature": "embedding"},
     r"audio_tower='soundnet8' gives audio_feature in .*Received: audio_feature='embedding'"),
    ("paper_yamnet", {"audio_feature": "scene_probs"},
     r"audio_tower='yamnet' gives audio_feature in .*Received: audio_feature='scene_probs'"),
    ("tiny", {"audio_feature": "class_probs"},
     r"audio_tower='logmel' gives audio_feature in .*Received: audio_feature='class_probs'"),
    ("paper_yamnet", {"audio_feature": "class_probs"},
     r"gives 521-d features with audio_feature='class_probs'. Received: "
     r"audio_feature_dim=1024, audio_feature='class_probs'"),
    ("paper", {"audio_feature": "scene_logits"},
     r"gives 401-d features with audio_feature='scene_logits'. Received: "
     r"audio_feature_dim=1000"),
])
def test_bad_audio_features_are_refused_with_the_field_named(preset, changes, message):
    with pytest.raises(ValueError, match=message):
        get_config(preset, **changes)
