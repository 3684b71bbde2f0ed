"""The localiser's formula, the towers' shapes and the VGG16 weight loading."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf.config import get_config
from soundloc_tf.modeling import models
from soundloc_tf.modeling.models import SoundAttention, build_image_tower, build_model


def _hand_made_map():
    visual = np.zeros([1, 2, 2, 2], np.float32)
    visual[0, 0, 0] = [2.0, 0.0]   # cos with h = 1
    visual[0, 0, 1] = [0.0, 3.0]   # cos = 0
    visual[0, 1, 0] = [-1.0, 0.0]  # cos = -1
    visual[0, 1, 1] = [1.0, 1.0]   # cos = 1/sqrt(2)
    return visual, np.array([[1.0, 0.0]], np.float32)


def test_attention_is_softmax_of_relu_cosine_over_temperature():
    visual, sound = _hand_made_map()
    attention, cosine, score, unit, attended = SoundAttention(0.5)([visual, sound])
    expected_cos = np.array([[1.0, 0.0], [-1.0, 1 / np.sqrt(2)]])
    np.testing.assert_allclose(cosine.numpy()[0], expected_cos, atol=1e-6)
    logits = np.maximum(expected_cos, 0).ravel() / 0.5
    alpha = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(attention.numpy()[0].ravel(), alpha, rtol=1e-5)
    # attended vector from the un-normalised features
    np.testing.assert_allclose(attended.numpy()[0], alpha @ visual[0].reshape(4, 2), rtol=1e-5)
    assert score.numpy()[0] == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(unit.numpy(), axis=-1), 1.0, rtol=1e-5)


def test_attention_without_relu_keeps_negative_cosines_apart():
    visual, sound = _hand_made_map()
    attention = SoundAttention(0.5, relu=False)([visual, sound])[0].numpy()[0]
    with_relu = SoundAttention(0.5)([visual, sound])[0].numpy()[0]
    assert attention[1, 0] < attention[0, 1]  # cos -1 below cos 0
    assert with_relu[1, 0] == pytest.approx(with_relu[0, 1])  # ReLU makes them equal


def test_paper_attention_is_nearly_uniform_at_temperature_one():
    """The note's observation: ReLU(cos) in [0, 1] over 400 cells spans at most e."""
    visual = np.random.default_rng(0).standard_normal([1, 20, 20, 8]).astype(np.float32)
    sound = np.eye(8, dtype=np.float32)[:1]
    attention = SoundAttention(1.0)([visual, sound])[0].numpy()
    assert attention.max() / attention.min() <= np.e + 1e-4


def test_model_outputs_on_tiny_preset():
    config = get_config("tiny")
    model = build_model(config)
    out = model({"image": tf.zeros([2, 96, 96, 3]), "waveform": tf.zeros([2, 8000])})
    assert out["attention"].shape == (2, 12, 12)
    np.testing.assert_allclose(out["attention"].numpy().sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert out["visual_feature"].shape == out["audio_feature"].shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(out["sound_embedding"].numpy(), axis=-1), 1.0,
                               rtol=1e-5)


def test_paper_preset_gives_20x20x512_map_before_relu(tmp_path):
    config = get_config("paper", image_weights="none")
    tower = build_image_tower(config)
    assert tower.output.shape[1:] == (20, 20, 512)
    assert tower.get_layer("block5_conv3").activation is keras.activations.linear
    assert not tower.trainable  # the paper freezes VGG16


def test_vgg16_weights_load_from_a_file_and_match_keras_vgg16(tmp_path):
    reference = keras.applications.VGG16(include_top=False, weights=None,
                                         input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16.weights.h5")
    reference.save_weights(path)
    config = get_config("paper", image_size=32, image_weights=path)
    tower = build_image_tower(config)
    image = np.random.default_rng(1).uniform(size=[1, 32, 32, 3]).astype(np.float32)
    caffe = keras.applications.vgg16.preprocess_input(image * 255.0)
    expected = reference.get_layer("block5_conv3").output
    block5 = keras.Model(reference.input, expected)(caffe).numpy()
    ours = tower(image).numpy()
    # Keras's block5_conv3 includes the ReLU; ours is the pre-activation.
    np.testing.assert_allclose(np.maximum(ours, 0), block5, rtol=1e-4, atol=1e-3)
    assert ours.min() < 0


def test_mismatched_weights_file_is_a_clear_error(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "other.weights.h5")
    other.save_weights(path)
    with pytest.raises(ValueError, match="does not fit keras.applications.VGG16"):
        build_image_tower(get_config("paper", image_size=32, image_weights=path))


def test_missing_weights_file_is_a_clear_error():
    with pytest.raises(ValueError, match="Received: image_weights='/nope.h5'"):
        build_image_tower(get_config("paper", image_size=32, image_weights="/nope.h5"))


def test_global_batch_norm_is_exact_on_features_with_a_large_mean():
    # Features like the pooled ReLU outputs: a mean far above their spread.
    from soundloc_tf.modeling.models import GlobalBatchNorm

    rng = np.random.default_rng(0)
    x = (300.0 + 0.1 * rng.standard_normal([64, 3])).astype(np.float32)
    layer = GlobalBatchNorm(momentum=0.5, epsilon=1e-6)
    y = layer(x, training=True).numpy()
    x64 = x.astype(np.float64)
    exact_variance = x64.var(0)
    expected = (x64 - x64.mean(0)) / np.sqrt(exact_variance + 1e-6)
    np.testing.assert_allclose(y, expected, atol=3e-3)  # the float32 mean's own rounding
    # The one-pass E[x^2] - E[x]^2 in float32 gets the variance wrong (even negative here).
    one_pass = (np.mean(x * x, axis=0) - np.mean(x, axis=0) ** 2).astype(np.float64)
    assert np.max(np.abs(one_pass / exact_variance - 1.0)) > 0.05
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * x64.mean(0), rtol=1e-6)
    # Inference uses the moving statistics; a frozen layer never updates them.
    layer.trainable = False
    before = layer.moving_mean.numpy().copy()
    layer(x, training=True)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), before)


def test_global_batch_norm_on_two_replicas_equals_one(mirrored_strategy):
    from soundloc_tf.modeling.models import GlobalBatchNorm

    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2
    x = (50.0 + np.random.default_rng(1).standard_normal([8, 4])).astype(np.float32)
    single = GlobalBatchNorm()(x, training=True).numpy()
    with strategy.scope():
        layer = GlobalBatchNorm()
        layer.build((None, 4))
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x).batch(8))
    parts = strategy.run(lambda batch: layer(batch, training=True), args=(next(iter(dataset)),))
    mirrored = np.concatenate([p.numpy() for p in strategy.experimental_local_results(parts)])
    np.testing.assert_allclose(mirrored, single, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.01 * x.mean(0), rtol=1e-5)


def test_bfloat16_image_tower_computes_in_bf16_and_hands_on_float32():
    """image_tower_precision="bfloat16": bf16 convolutions, float32 weights and map, and a
    map within bf16's rounding of the float32 tower's with the same weights."""
    config = get_config("tiny")
    keras.utils.set_random_seed(0)
    reference = build_image_tower(config)
    tower = build_image_tower(config.replace(image_tower_precision="bfloat16"))
    tower.set_weights(reference.get_weights())
    assert tower.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in tower.weights)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    images = tf.random.stateless_uniform([4, 96, 96, 3], seed=[1, 2])
    got, want = tower(images).numpy(), reference(images).numpy()
    assert got.dtype == np.float32
    error = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-5 < error < 0.03  # bf16 arithmetic did run, and only rounds


def test_visual_projection_starts_as_the_identity_and_is_trainable():
    config = get_config("tiny")
    plain = models.build_localizer(config)
    projected = models.build_localizer(config.replace(visual_projection=True))
    layer = projected.get_layer("visual_projection")
    np.testing.assert_array_equal(layer.kernel.numpy(), np.eye(config.visual_dim))
    # The same heads' weights: at initialisation the projected map gives the same attention.
    for source in plain.layers:
        if source.weights:
            projected.get_layer(source.name).set_weights(source.get_weights())
    rng = np.random.default_rng(0)
    visual = rng.normal(size=(2, config.map_size, config.map_size, config.visual_dim))
    audio = rng.normal(size=(2, config.audio_feature_dim))
    inputs = [visual.astype("float32"), audio.astype("float32")]
    np.testing.assert_allclose(projected(inputs)["attention"].numpy(),
                               plain(inputs)["attention"].numpy(), atol=1e-6)
    assert any(w is layer.kernel for w in projected.trainable_weights)
