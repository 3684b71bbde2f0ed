"""Feature cache: the same loss as through the frozen towers, checked shards, right towers."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf.dataloaders import data
from soundloc_tf.modeling import int8_tower
from soundloc_tf.train import feature_cache, training
from soundloc_tf.config import get_config
from soundloc_tf.modeling.models import build_model, split_model

CONFIG = get_config("tiny", freeze_image_tower=True, freeze_audio_tower=True, batch_size=16)


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(3)
    return build_model(CONFIG)


@pytest.fixture(scope="module")
def caches(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    dataset = data.synthetic_dataset(CONFIG, 0, count=40)
    made = {}
    for dtype in ("float32", "float16", "bfloat16", "int8"):
        made[dtype] = str(root / dtype)
        manifest = feature_cache.write_cache(model, CONFIG, dataset, made[dtype], dtype=dtype,
                                             samples_per_shard=16)
        assert manifest["count"] == 40 and len(manifest["shards"]) == 3
    return made


def _int8_kernels() -> bool:
    try:
        int8_tower.check_supported()
    except ValueError:
        return False
    return True


def _live_losses(model, batch):
    outputs = model({"image": batch["image"], "waveform": batch["waveform"]}, training=True)
    annotator = training.pick_annotators(CONFIG, batch, tf.constant(0, tf.int64))
    return training.compute_losses(CONFIG, outputs, batch, CONFIG.batch_size, annotator)


def _losses_on_features(config, model, batch):
    return training.losses_on_features(config, split_model(model).localizer, batch)


def _cached_losses(model, directory):
    batch = next(iter(feature_cache.read_cache(CONFIG, directory, training=False, model=model)
                      .batch(CONFIG.batch_size)))
    return _losses_on_features(CONFIG, model, batch), batch


@pytest.mark.slow
def test_cached_loss_equals_the_live_loss(model, caches):
    batch = next(iter(data.synthetic_dataset(CONFIG, 0, count=CONFIG.batch_size)
                      .batch(CONFIG.batch_size)))
    live = {k: float(v) for k, v in _live_losses(model, batch).items()}
    assert live["supervised"] > 0  # both terms are exercised
    exact, cached_batch = _cached_losses(model, caches["float32"])
    assert [i.decode() for i in cached_batch["id"].numpy()] == \
        [i.decode() for i in batch["id"].numpy()]
    for key, value in live.items():
        assert float(exact[key]) == pytest.approx(value, rel=1e-5, abs=1e-6)
    half, _ = _cached_losses(model, caches["float16"])
    for key, value in live.items():
        assert float(half[key]) == pytest.approx(value, rel=2e-3, abs=1e-4)


@pytest.mark.slow
def test_cached_hard_way_loss_equals_the_live_one(model, caches):
    """The hard-way loss reads the cache's raw map, scaled after the product, as InfoNCE."""
    config = CONFIG.replace(unsupervised_loss="hard_way")
    batch = next(iter(data.synthetic_dataset(config, 0, count=config.batch_size)
                      .batch(config.batch_size)))
    outputs = model({"image": batch["image"], "waveform": batch["waveform"]}, training=True)
    live = float(training.compute_losses(config, outputs, batch, config.batch_size,
                                         None)["unsupervised"])
    cached_batch = next(iter(feature_cache.read_cache(config, caches["float32"], training=False,
                                                      model=model).batch(config.batch_size)))
    cached = float(_losses_on_features(config, model, cached_batch)["unsupervised"])
    assert live > 0.1 and cached == pytest.approx(live, rel=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 2e-2), ("int8", 2e-2)])
def test_smaller_caches_stay_close_to_the_live_loss(model, caches, dtype, tolerance):
    """bfloat16 (8-bit mantissa) and int8 (per-channel scales) lose little of the loss."""
    batch = next(iter(data.synthetic_dataset(CONFIG, 0, count=CONFIG.batch_size)
                      .batch(CONFIG.batch_size)))
    live = {k: float(v) for k, v in _live_losses(model, batch).items()}
    cached, _ = _cached_losses(model, caches[dtype])
    exact, _ = _cached_losses(model, caches["float32"])
    errors = {k: abs(float(cached[k]) - v) / abs(v) for k, v in live.items() if v}
    assert max(errors.values()) < tolerance, errors
    # Not just the same loss: the features themselves are close, and not bit-identical.
    read = lambda d: tf.cast(next(iter(feature_cache.read_cache(  # noqa: E731
        CONFIG, caches[d], training=False).batch(CONFIG.batch_size)))["visual_map"],
        tf.float32).numpy()
    reference, approximate = read("float32"), read(dtype)
    relative = np.abs(approximate - reference).max() / np.abs(reference).max()
    assert 0 < relative < 1e-2


def test_16_bit_caches_halve_the_bytes_and_int8_quarters_them(caches):
    sizes = {k: sum(os.path.getsize(os.path.join(v, f)) for f in os.listdir(v)
                    if f.endswith(".tfrecord")) for k, v in caches.items()}
    # Per sample: a 12x12x64 map and a 128-d feature, 4, 2 or 1 bytes per number (int8 adds
    # 64 + 1 float32 scales).
    numbers = 12 * 12 * 64 + 128
    assert sizes["float32"] / 40 == pytest.approx(numbers * 4, rel=0.05)
    assert sizes["float16"] / 40 == pytest.approx(numbers * 2, rel=0.08)
    assert sizes["bfloat16"] / 40 == pytest.approx(numbers * 2, rel=0.08)
    assert sizes["int8"] / 40 == pytest.approx(numbers + 65 * 4, rel=0.15)


@pytest.mark.slow
def test_the_trainer_trains_the_models_localizer_from_the_cache(tmp_path,
                                                                 single_device_strategy):
    """The cached path is the Trainer's own step: the live model then has the trained heads."""
    config = CONFIG.replace(learning_rate=3e-3, train_steps=30, batch_size=16,
                            eval_every=10_000, log_every=10_000, num_summary_images=0)
    trainer = training.Trainer(config, str(tmp_path / "run"), single_device_strategy,
                               validation=data.synthetic_dataset(config, config.eval_seed,
                                                                 count=4),
                               log=lambda message: None)
    directory = str(tmp_path / "cache")
    feature_cache.write_cache(trainer.model, config,
                              data.synthetic_dataset(config, 0, count=16), directory)
    batch = next(iter(feature_cache.read_cache(config, directory, training=False).batch(16)))
    before = float(_losses_on_features(config, trainer.model, batch)["total"])
    trainer.use_feature_cache(feature_cache.cache_dataset_fn(config, directory, in_memory=True))
    trainer.train()
    assert int(trainer.step.numpy()) == 30
    after = float(_losses_on_features(config, trainer.model, batch)["total"])
    assert after < 0.9 * before
    # The localiser was trained in place: the live model computes the same loss.
    live = _live_losses(trainer.model,
                        next(iter(data.synthetic_dataset(config, 0, count=16).batch(16))))
    assert float(live["total"]) == pytest.approx(after, rel=2e-3)


def test_cache_refuses_other_towers_corruption_and_unfrozen_towers(model, caches, tmp_path):
    other = build_model(CONFIG)
    with pytest.raises(ValueError, match="other tower weights"):
        feature_cache.read_cache(CONFIG, caches["float16"], training=False, model=other)
    with pytest.raises(ValueError, match="frozen towers"):
        feature_cache.write_cache(model, CONFIG.replace(freeze_audio_tower=False),
                                  data.synthetic_dataset(CONFIG, 0, count=2), str(tmp_path))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(caches["float16"]):
        content = open(os.path.join(caches["float16"], name), "rb").read()
        if name.startswith("features-00001"):
            content = content[:-10] + bytes(10)
        (copy / name).write_bytes(content)
    with pytest.raises(ValueError, match="corrupted shard.*features-00001-of-00003"):
        feature_cache.read_cache(CONFIG, str(copy), training=True)


@pytest.mark.slow
def test_trainer_on_the_cache_takes_the_same_steps_as_live_frozen_training(tmp_path,
                                                                           mirrored_strategy):
    """Three Trainer steps from a float32 cache end at the weights of three live frozen steps."""
    config = CONFIG.replace(batch_size=8, train_steps=3, learning_rate=3e-3, eval_every=100,
                            checkpoint_every=100, num_summary_images=0)
    validation = data.synthetic_dataset(config, config.eval_seed, count=4)
    live = training.Trainer(config, str(tmp_path / "live"), mirrored_strategy,
                            validation=validation, log=lambda message: None)
    cached = training.Trainer(config, str(tmp_path / "cached"), mirrored_strategy,
                              validation=validation, log=lambda message: None)
    directory = str(tmp_path / "cache")
    feature_cache.write_cache(cached.model, config, data.synthetic_dataset(config, 0, count=24),
                              directory, dtype="float32")
    cached.use_feature_cache(lambda start: feature_cache.read_cache(
        config, directory, training=False, start=start))
    # Same seed, same initial weights; the live stream is the cached scenes in the same order.
    live.dataset_fn = lambda start: data.synthetic_dataset(config, 0, start=start)
    live_losses, cached_losses = live.train(), cached.train()
    assert cached_losses["total"] == pytest.approx(live_losses["total"], rel=1e-4)
    for a, b in zip(live.model.get_layer("localizer").weights,
                    cached.model.get_layer("localizer").weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)
    changed = [not np.allclose(a.numpy(), b.numpy()) for a, b in zip(
        cached.model.get_layer("localizer").weights,
        build_model(config).get_layer("localizer").weights)]
    assert any(changed)  # the steps did train the localiser


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["infonce", "triplet", "hard_way"])
def test_xla_compiled_update_takes_the_same_steps_as_the_uncompiled_one(tmp_path, caches,
                                                                        single_device_strategy,
                                                                        loss):
    """xla_heads on one replica: the same losses and localiser weights after three steps."""
    config = CONFIG.replace(batch_size=8, train_steps=3, learning_rate=3e-3, eval_every=100,
                            checkpoint_every=100, num_summary_images=0, label_fraction=0.5,
                            unsupervised_loss=loss)
    validation = data.synthetic_dataset(config, config.eval_seed, count=4)
    runs = {}
    for xla in (False, True):
        trainer = training.Trainer(config.replace(xla_heads=xla), str(tmp_path / str(xla)),
                                   single_device_strategy, validation=validation,
                                   log=lambda message: None)
        trainer.use_feature_cache(lambda start: feature_cache.read_cache(
            config, caches["float32"], training=False, start=start))
        assert trainer.xla_update is xla
        runs[xla] = trainer, trainer.train()
    (plain, plain_losses), (compiled, compiled_losses) = runs[False], runs[True]
    assert plain_losses["supervised"] > 0  # the annotator choice reached the compiled update
    for key in ("unsupervised", "supervised", "total"):
        assert compiled_losses[key] == pytest.approx(plain_losses[key], rel=1e-4)
    for a, b in zip(plain.model.get_layer("localizer").weights,
                    compiled.model.get_layer("localizer").weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)


def test_xla_update_is_off_on_several_replicas(tmp_path, mirrored_strategy):
    config = CONFIG.replace(num_summary_images=0)
    trainer = training.Trainer(config, str(tmp_path), mirrored_strategy,
                               validation=data.synthetic_dataset(config, config.eval_seed,
                                                                 count=2),
                               log=lambda message: None)
    trainer.use_feature_cache(lambda start: None)
    assert trainer.strategy.num_replicas_in_sync == 2
    assert not trainer.xla_update


def test_a_bfloat16_image_tower_does_not_reuse_a_float32_cache(model):
    """Same weights, other arithmetic: other features, so another fingerprint."""
    bf16 = build_model(CONFIG.replace(image_tower_precision="bfloat16"))
    bf16.set_weights(model.get_weights())
    assert feature_cache.fingerprint(*split_model(bf16)[:2]) != \
        feature_cache.fingerprint(*split_model(model)[:2])


def test_in_memory_reading_gives_the_streamed_samples_in_the_same_order(caches):
    """Parsed once and held in RAM: the same seeded order, the same resumption at `start`."""
    def ids_and_maps(in_memory, start):
        stream = feature_cache.read_cache(CONFIG, caches["float16"], training=True, seed=3,
                                          start=start, in_memory=in_memory)
        batch = next(iter(stream.batch(60)))  # 60 > the 40 cached: crosses into epoch two
        return batch["id"].numpy().tolist(), batch["visual_map"].numpy()

    for start in (0, 7):
        streamed_ids, streamed_maps = ids_and_maps(False, start)
        held_ids, held_maps = ids_and_maps(True, start)
        assert held_ids == streamed_ids
        np.testing.assert_array_equal(held_maps, streamed_maps)
        if start == 0:  # one shuffled epoch: every sample once, not in written order
            first_epoch = streamed_ids[:40]
            assert len(set(first_epoch)) == 40 and first_epoch != sorted(first_epoch)


def test_a_cache_fits_in_memory_when_under_half_the_available_ram(caches, monkeypatch):
    with open(os.path.join(caches["float16"], "manifest.json")) as f:
        manifest = json.load(f)
    size = sum(os.path.getsize(os.path.join(caches["float16"], f))
               for f in os.listdir(caches["float16"]) if f.endswith(".tfrecord"))
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 2 * size + 1000)
    assert feature_cache.fits_in_memory(manifest)
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 2 * size - 1000)
    assert not feature_cache.fits_in_memory(manifest)
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: None)
    assert not feature_cache.fits_in_memory(manifest)


def test_an_int8_cache_is_counted_at_its_dequantised_size(caches, monkeypatch):
    # read_cache widens int8 features to float32, so in RAM they take 4x their file bytes.
    with open(os.path.join(caches["int8"], "manifest.json")) as f:
        manifest = json.load(f)
    on_disk = sum(s["bytes"] for s in manifest["shards"])
    features = manifest["count"] * (np.prod(manifest["visual_shape"]) + manifest["audio_dim"])
    assert feature_cache.in_memory_bytes(manifest) == on_disk + 3 * features
    held = {k: v for k, v in next(iter(feature_cache.read_cache(
        CONFIG, caches["int8"], training=False))).items() if k in ("visual_map", "audio_feature")}
    assert sum(v.numpy().nbytes for v in held.values()) == 4 * features / manifest["count"]
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 2 * on_disk + 1000)
    assert not feature_cache.fits_in_memory(manifest)  # on-disk size alone would say it fits


def test_trainer_refuses_a_cache_for_towers_that_train(tmp_path, single_device_strategy):
    config = CONFIG.replace(freeze_image_tower=False)
    trainer = training.Trainer(config, str(tmp_path), single_device_strategy,
                               log=lambda message: None,
                               validation=data.synthetic_dataset(config, config.eval_seed,
                                                                 count=2))
    with pytest.raises(ValueError, match="both towers frozen.*freeze_image_tower=False"):
        trainer.use_feature_cache(lambda start: None)


@pytest.mark.skipif(not _int8_kernels(), reason="TensorFlow here has no oneDNN int8 kernels")
def test_an_int8_tower_cache_records_its_ranges_and_keeps_the_loss(model, caches, tmp_path):
    directory = str(tmp_path / "int8_tower")
    dataset = data.synthetic_dataset(CONFIG, 0, count=40)
    manifest = feature_cache.write_cache(model, CONFIG, dataset, directory, dtype="float32",
                                         image_tower="int8")
    assert manifest["image_tower"] == "int8" and len(manifest["int8_ranges"]) == 7
    assert manifest["towers_sha256"] == feature_cache.fingerprint(
        *split_model(model)[:2])  # the same weights; the arithmetic is recorded
    exact, _ = _cached_losses(model, caches["float32"])
    quantized, _ = _cached_losses(model, directory)
    errors = {k: abs(float(quantized[k]) - float(v)) / abs(float(v))
              for k, v in exact.items() if float(v)}
    assert 0 < max(errors.values()) < 2e-2, errors
    # A rerun that asks for other features is refused, not silently served these.
    with pytest.raises(ValueError, match=r"holds other features.*'image_tower': 'int8'"):
        feature_cache.ensure_cache(model, CONFIG, dataset, directory, dtype="float32",
                                   log=lambda _: None)
    reused = feature_cache.ensure_cache(model, CONFIG, dataset, directory, dtype="float32",
                                        image_tower="int8", log=lambda _: None)
    assert reused["int8_ranges"] == manifest["int8_ranges"]
    with pytest.raises(ValueError, match="image_tower must be one of"):
        feature_cache.write_cache(model, CONFIG, dataset, str(tmp_path / "x"),
                                  image_tower="int4")


@pytest.mark.skipif(not _int8_kernels(), reason="TensorFlow here has no oneDNN int8 kernels")
def test_an_int8_cache_build_sees_tower_weights_changed_since_the_last_one(tmp_path):
    # The int8 tower copies the weights; a second build after new weights must use them.
    config = CONFIG
    model = build_model(config)
    dataset = data.synthetic_dataset(config, 0, count=16)
    read = lambda d: next(iter(feature_cache.read_cache(  # noqa: E731
        config, d, training=False).batch(16)))["visual_map"].numpy()
    feature_cache.write_cache(model, config, dataset, str(tmp_path / "a"), image_tower="int8")
    last = split_model(model)[0].get_layer("block4_conv2")
    last.kernel.assign(last.kernel * 2.0)  # the last convolution: no calibrated range moves
    feature_cache.write_cache(model, config, dataset, str(tmp_path / "b"), image_tower="int8")
    ratio = np.abs(read(str(tmp_path / "b"))).sum() / np.abs(read(str(tmp_path / "a"))).sum()
    assert ratio > 1.5, ratio
