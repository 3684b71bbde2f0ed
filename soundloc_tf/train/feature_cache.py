"""A feature cache for frozen towers: run VGG16 and the audio tower once, train the rest.

With both towers frozen (the paper's re-implementation freezes VGG16; a
pretrained SoundNet-8 is usually frozen too), every step recomputes the same
conv maps.  `write_cache` stores, per sample, the visual map [m, m, C] and the
audio feature [D] (float16 by default: half the bytes; float32 for exact
replay) next to the boxes, flags and id, in checksummed TFRecord shards like
`records`.  `read_cache` streams them back, and `training.Trainer.use_feature_cache`
trains the localiser and heads on them with the trainer's own step (the same loss,
update and non-finite check as a live step).

`image_tower="int8"` builds the cache through `int8_tower` (faster than float32
for VGG16 where oneDNN has int8 kernels); the manifest records it.

The cache fixes the image crop and audio window of each sample: no per-step
augmentation.  Its manifest holds a fingerprint of the towers' weights, and
`read_cache` refuses a cache made by other towers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf.dataloaders import data, records
from soundloc_tf.modeling import int8_tower
from soundloc_tf.config import AUDIO_FEATURES, Config
from soundloc_tf.modeling.models import AudioFeatureName, split_model
from soundloc_tf.modeling.soundnet import WrapAround

CACHE_FORMAT = "soundloc-feature-cache"
# Storage types.  int8 is symmetric and linear with one float32 scale per sample and
# channel of the visual map and one per audio feature vector (max |x| -> 127): half
# the bytes of float16 again, at a relative loss error measured in the tests.
DTYPES = {"float16": tf.float16, "bfloat16": tf.bfloat16, "float32": tf.float32,
          "int8": tf.int8}
INT8_MAX = 127.0
# The image tower a cache build runs: "model", the model's own (float32, or bfloat16 under
# image_tower_precision=bfloat16); "int8", that tower through oneDNN int8 convolutions
# (`int8_tower`), faster than float32 for VGG16 on AVX-512 VNNI CPUs.
CACHE_IMAGE_TOWERS = ("model", "int8")
PROGRESS_SECONDS = 5.0  # between progress lines while caching
# in_memory="auto" holds a cache in RAM when it takes under this share of the available
# memory: the shuffle buffer, the model and the batches need the rest.
IN_MEMORY_FRACTION = 0.5
# The most samples a cache shard holds: several shards let workers read the cache by file.
SAMPLES_PER_SHARD = 2000


def fingerprint(*models: keras.Model) -> str:
    """sha256 over the towers' weights and arithmetic: a cache is valid only for these."""
    digest = hashlib.sha256()
    for model in models:
        # A bfloat16 tower gives other features from the same weights; float32 towers add
        # nothing here, so their caches keep the fingerprints they were written with.
        policies = sorted({layer.dtype_policy.name for layer in model.layers} - {"float32"})
        if policies:
            digest.update(f"dtype policies {policies}".encode())
        # Weightless layers that change the features: the audio feature a tower outputs where
        # it is not the tower's default (SoundNet-8's class_logits and class_probs share
        # every weight), and SoundNet-8's wrap-around of clips whose last conv8 step would
        # read conv7's padding. Towers without them keep their old fingerprints.
        for layer in model.layers:
            if isinstance(layer, AudioFeatureName):
                digest.update(f"audio feature {layer.feature}".encode())
            elif isinstance(layer, WrapAround):
                digest.update(f"wrap around {layer.samples}".encode())
        for weight in model.weights:
            digest.update(weight.path.encode())
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def check_cache_settings(config: Config, dtype: str, image_tower: str) -> None:
    """The checks every cache build makes before any work: a storage type and image tower
    it knows, frozen towers, and int8 instructions where the int8 tower is asked for."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}. Received: dtype={dtype!r}")
    if image_tower not in CACHE_IMAGE_TOWERS:
        raise ValueError(f"image_tower must be one of {CACHE_IMAGE_TOWERS}. Received: "
                         f"image_tower={image_tower!r}")
    if not (config.freeze_image_tower and config.freeze_audio_tower):
        raise ValueError("a feature cache is only valid for frozen towers. Received: "
                         f"freeze_image_tower={config.freeze_image_tower}, "
                         f"freeze_audio_tower={config.freeze_audio_tower}")
    if image_tower == "int8":
        int8_tower.check_supported()


def write_cache(model: keras.Model, config: Config, dataset: tf.data.Dataset, directory: str,
                batch_size: int = 16, dtype: str = "float16",
                samples_per_shard: int = SAMPLES_PER_SHARD,
                progress: Callable[[int], None] | None = None,
                image_tower: str = "model") -> dict:
    """Runs the frozen towers over an unbatched `dataset` once and stores the features.

    `progress(samples_written)` is called after every batch. `image_tower="int8"`
    calibrates the int8 tower on the dataset's first `int8_tower.CALIBRATION_IMAGES`
    images and records its ranges in the manifest.
    """
    check_cache_settings(config, dtype, image_tower)  # before anything is written
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, records.MANIFEST)):
        raise ValueError(f"the directory already holds a cache. Received: {directory!r}")
    image_model, audio_model, _ = split_model(model)
    ranges = None
    if image_tower == "int8":
        calibration = next(iter(dataset.take(int8_tower.CALIBRATION_IMAGES)
                                .batch(int8_tower.CALIBRATION_IMAGES)), None)
        if calibration is None:
            raise ValueError("the dataset is empty; nothing to cache")
        ranges = tuple(int8_tower.calibrate(image_model, calibration["image"]))
    features = _feature_function(model, dtype, ranges)

    started = time.perf_counter()
    count = 0

    def serialized() -> Iterator[bytes]:
        nonlocal count
        for batch in dataset.batch(batch_size).prefetch(2):
            arrays = {k: t.numpy() for k, t in features(batch).items()}
            visual, audio = arrays["visual"], arrays["audio"]
            for i in range(visual.shape[0]):
                feature = {
                    "visual": records._bytes(visual[i].tobytes()),
                    "audio": records._bytes(audio[i].tobytes()),
                    "boxes": tf.train.Feature(float_list=tf.train.FloatList(
                        value=batch["boxes"][i].numpy().reshape(-1))),
                    "labeled": records._int64([int(batch["labeled"][i])]),
                    "class_id": records._int64([int(batch["class_id"][i])]),
                    "id": records._bytes(batch["id"][i].numpy()),
                }
                for name in ("visual_scale", "audio_scale"):
                    if name in arrays:
                        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
                            value=arrays[name][i].reshape(-1)))
                yield tf.train.Example(features=tf.train.Features(
                    feature=feature)).SerializeToString()
                count += 1
            if progress is not None:
                progress(count)

    entries = records.write_shards(serialized(), directory, "features", samples_per_shard)
    if not entries:
        raise ValueError("the dataset is empty; nothing to cache")
    manifest = {
        "format": CACHE_FORMAT, "version": 1, "count": count, "dtype": dtype,
        "visual_shape": [config.map_size, config.map_size, config.visual_dim],
        "audio_dim": config.audio_feature_dim,
        "audio_feature": config.resolved_audio_feature,
        "towers_sha256": fingerprint(image_model, audio_model),
        "image_tower": image_tower,
        **({"int8_ranges": list(ranges)} if ranges is not None else {}),
        "shards": entries, "seconds": round(time.perf_counter() - started, 2),
    }
    records._atomic_write_text(os.path.join(directory, records.MANIFEST),
                               json.dumps(manifest, indent=1))
    return manifest


def read_cache(config: Config, directory: str, training: bool, seed: int = 0, start: int = 0,
               model: keras.Model | None = None, in_memory: bool = False, part: int = 0,
               parts: int = 1) -> tf.data.Dataset:
    """Cached features -> {visual_map, audio_feature, boxes, labeled, class_id, id}.

    The features come in the cache's storage type (int8 is dequantised to
    float32): 16-bit maps cross the input pipeline at half the bytes, and the
    training step casts them to float32 (inside XLA when it is compiled), so
    streaming moves fewer bytes. `in_memory` parses every
    sample once and keeps it in RAM (`in_memory_bytes` of it): later
    epochs cost a shuffle and a batch copy, not a read and a parse, which
    is what streaming spends its cores on. The order of samples is
    the same either way.
    Verifies the shard checksums, and with `model` that the cache was made by
    its towers.  Training streams are shuffled (seeded), repeated, and skip
    `start` samples, as `records.read_records` does.  With `parts` > 1 only part
    `part` is read and verified: the shards part, part + parts, ... (`part_files`).
    """
    path = os.path.join(directory, records.MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"no readable feature-cache manifest. Received: {path!r} "
                         f"({error})") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"not a feature cache. Received: {directory!r}")
    shape = [config.map_size, config.map_size, config.visual_dim]
    if manifest["visual_shape"] != shape or manifest["audio_dim"] != config.audio_feature_dim:
        raise ValueError(f"the cache was made for other towers: visual {manifest['visual_shape']}"
                         f", audio {manifest['audio_dim']}; this config needs {shape}, "
                         f"{config.audio_feature_dim}. Received: {directory!r}")
    # Caches written before the field existed hold the tower's default feature.
    built = manifest.get("audio_feature", next(iter(AUDIO_FEATURES[config.audio_tower])))
    if built != config.resolved_audio_feature:
        raise ValueError(f"the cache holds audio_feature={built!r}; this config needs "
                         f"{config.resolved_audio_feature!r}. Received: {directory!r}")
    if model is not None and fingerprint(*split_model(model)[:2]) != manifest["towers_sha256"]:
        raise ValueError(f"the cache was made with other tower weights; rebuild it. "
                         f"Received: {directory!r}")
    files = part_files(directory, manifest, part, parts)
    records.verify_shards(records.RecordSet(directory, manifest, files))
    quantized = manifest["dtype"] == "int8"
    dtype = DTYPES[manifest["dtype"]]
    spec = {
        "visual": tf.io.FixedLenFeature([], tf.string),
        "audio": tf.io.FixedLenFeature([], tf.string),
        "boxes": tf.io.FixedLenFeature([data.MAX_ANNOTATORS * data.MAX_BOXES * 4], tf.float32),
        "labeled": tf.io.FixedLenFeature([], tf.int64),
        "class_id": tf.io.FixedLenFeature([], tf.int64),
        "id": tf.io.FixedLenFeature([], tf.string),
    }
    if quantized:
        spec["visual_scale"] = tf.io.FixedLenFeature([shape[-1]], tf.float32)
        spec["audio_scale"] = tf.io.FixedLenFeature([1], tf.float32)

    def parse(serialized):
        f = tf.io.parse_single_example(serialized, spec)
        visual = tf.reshape(tf.io.decode_raw(f["visual"], dtype), shape)
        audio = tf.reshape(tf.io.decode_raw(f["audio"], dtype), [config.audio_feature_dim])
        if quantized:
            visual = tf.cast(visual, tf.float32) * f["visual_scale"]
            audio = tf.cast(audio, tf.float32) * f["audio_scale"]
        return {
            "visual_map": visual,
            "audio_feature": audio,
            "boxes": tf.reshape(f["boxes"], [data.MAX_ANNOTATORS, data.MAX_BOXES, 4]),
            "labeled": f["labeled"] > 0,
            "class_id": tf.cast(f["class_id"], tf.int32),
            "id": f["id"],
        }

    dataset = tf.data.TFRecordDataset(list(files))
    if in_memory:
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True).cache()
    # The shuffle's permutation depends on its seed and the stream's length, not on what
    # the elements hold, so serialised and parsed samples come out in the same order.
    if training:
        dataset = dataset.shuffle(records.SHUFFLE_BUFFER, seed=seed,
                                  reshuffle_each_iteration=True).repeat()
    if start:
        dataset = dataset.skip(start)
    if in_memory:
        return dataset
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def part_files(directory: str, manifest: dict, part: int, parts: int) -> tuple[str, ...]:
    """The shard files of part `part` when the cache is read in `parts` parts: every
    `parts`-th shard from shard `part` (the split `tf.data`'s FILE auto-sharding makes).

    Raises:
      ValueError: `part` is not one of the `parts`, or the cache holds fewer shards than
        `parts` (a part would be empty).
    """
    shards = manifest["shards"]
    if not 0 <= part < parts or len(shards) < parts:
        raise ValueError(f"part {part} of {parts}: reading a cache in {parts} parts needs "
                         f"at least {parts} shards (rebuild it in an empty directory with "
                         f"these settings). Received: {directory!r} holds {len(shards)}")
    return tuple(os.path.join(directory, s["file"]) for s in shards[part::parts])


def shard_size(count: int, parts: int = 1) -> int:
    """Samples per shard for a cache of `count` samples read in `parts` parts: at most
    `SAMPLES_PER_SHARD`, in at least `parts` shards (a multiple of them but for one short
    shard), so the parts hold near-equal shares (within one shard).

    Args:
      count: the samples the cache will hold.
      parts: the parts it will be read in (`part_files`).

    Raises:
      ValueError: fewer samples than parts (a part would be empty).
    """
    if count < parts:
        raise ValueError(f"a cache read in {parts} parts needs at least one sample per part. "
                         f"Received: {count} samples")
    shards = parts * -(-count // (parts * SAMPLES_PER_SHARD))
    return count // shards


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def in_memory_bytes(manifest: dict) -> int:
    """The RAM a cache takes held in memory: about its files' size, except that int8
    features are held dequantised (`read_cache` widens them to float32), 4x their bytes."""
    size = sum(shard["bytes"] for shard in manifest["shards"])
    if manifest["dtype"] == "int8":
        elements = manifest["count"] * (int(np.prod(manifest["visual_shape"]))
                                        + manifest["audio_dim"])
        size += 3 * elements
    return size


def fits_in_memory(manifest: dict | Sequence[dict],
                   fraction: float = IN_MEMORY_FRACTION) -> bool:
    """Whether the cache `manifest` describes (or the caches of a list, together), held in
    memory, takes less than `fraction` of the available RAM."""
    manifests = [manifest] if isinstance(manifest, dict) else manifest
    available = available_memory_bytes()
    return (available is not None
            and sum(in_memory_bytes(m) for m in manifests) < fraction * available)


# One traced tower function per (model, dtype, int8 ranges): caching several datasets with
# one model (or warming up before a timed run) traces the towers once. For the int8 tower
# that also saves its constants' set-up (oneDNN reorders every filter once per graph).
_FEATURE_FUNCTIONS: "weakref.WeakKeyDictionary[keras.Model, dict]" = weakref.WeakKeyDictionary()


def _feature_function(model: keras.Model, dtype: str,
                      int8_ranges: tuple[float, ...] | None = None) -> Callable[[dict], dict]:
    """The towers' features for a batch, stored as `dtype`; the image tower runs in int8
    with `int8_ranges` where they are given."""
    per_model = _FEATURE_FUNCTIONS.setdefault(model, {})
    image_tower, audio_tower, _ = split_model(model)
    # The int8 tower holds a copy of the weights: a tower changed since (restored from
    # another checkpoint) needs a new one.
    key = (dtype, int8_ranges, fingerprint(image_tower) if int8_ranges else None)
    if key in per_model:
        return per_model[key]
    if int8_ranges is None:
        run_image_tower = lambda images: image_tower(images, training=False)  # noqa: E731
    else:
        run_image_tower = int8_tower.Int8ImageTower(image_tower, int8_ranges)

    @tf.function(reduce_retracing=True)
    def features(batch):
        visual = tf.cast(run_image_tower(batch["image"]), tf.float32)
        audio = tf.cast(audio_tower(batch["waveform"], training=False), tf.float32)
        if dtype != "int8":
            return {"visual": tf.cast(visual, DTYPES[dtype]),
                    "audio": tf.cast(audio, DTYPES[dtype])}
        visual_scale = _int8_scale(visual, axis=[1, 2])  # [B, C]
        audio_scale = _int8_scale(audio, axis=[1])  # [B]
        return {"visual": _quantize(visual, visual_scale[:, None, None, :]),
                "audio": _quantize(audio, audio_scale[:, None]),
                "visual_scale": visual_scale, "audio_scale": audio_scale}

    per_model[key] = features
    return features


def _int8_scale(x: tf.Tensor, axis: list[int]) -> tf.Tensor:
    """max |x| / 127 over `axis` (1 where x is all zeros, so zeros stay zeros)."""
    peak = tf.reduce_max(tf.abs(x), axis=axis)
    return tf.where(peak > 0, peak / INT8_MAX, tf.ones_like(peak))


def _quantize(x: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(x / scale), -INT8_MAX, INT8_MAX), tf.int8)


def ensure_cache(model: keras.Model, config: Config, source: tf.data.Dataset, directory: str,
                 log: Callable[[str], None] = print, dtype: str = "float16",
                 image_tower: str = "model", samples_per_shard: int = SAMPLES_PER_SHARD,
                 parts: int = 1, read_parts: Sequence[int] | None = None) -> dict:
    """The manifest of the cache in `directory`, written from `source` first if absent.

    An existing cache is reused only if `model`'s towers made it (checked by
    `read_cache`) with the asked-for storage type and image tower, so a rerun or
    a resumed run never recomputes the towers, and never silently trains on
    features other than those asked for.

    Args:
      model, config, source, directory: the towers, the run's config, the unbatched
        pairs to cache and where the cache lives.
      log: where the summary line goes.
      dtype, image_tower, samples_per_shard: how a new cache is written (`write_cache`).
      parts: the parts the run reads the cache in (`part_files`): a reused cache must hold
        at least as many shards.
      read_parts: the parts this process reads (a worker's share); a reused cache's
        checksums are verified on their shards only. None: every part.
    """
    path = os.path.join(directory, records.MANIFEST)
    if os.path.exists(path):
        for part in range(parts) if read_parts is None else read_parts:
            # validates (the towers, the checksums of this part's shards), or raises
            read_cache(config, directory, training=False, model=model, part=part, parts=parts)
        with open(path) as f:
            manifest = json.load(f)
        built = {"dtype": manifest["dtype"], "image_tower": manifest.get("image_tower", "model")}
        asked = {"dtype": dtype, "image_tower": image_tower}
        if built != asked:
            raise ValueError(f"the cache in {directory!r} holds other features ({built}); "
                             "point to another directory or remove it to rebuild. Received: "
                             f"{asked}")
        log(f"Feature cache {directory}: {manifest['count']} samples (reused)")
        return manifest
    started = last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= PROGRESS_SECONDS:
            last = now
            print(f"\rcaching tower outputs: {done} samples, "
                  f"{done / (now - started):.1f}/s", end="", flush=True)

    manifest = write_cache(model, config, source, directory, dtype=dtype, progress=progress,
                           image_tower=image_tower, samples_per_shard=samples_per_shard)
    print(flush=True)
    size = sum(s["bytes"] for s in manifest["shards"])
    log(f"Feature cache {directory}: {manifest['count']} samples in {manifest['seconds']:.0f} s "
        f"({manifest['count'] / max(manifest['seconds'], 1e-9):.1f} samples/s), "
        f"{size / manifest['count'] / 1e3:.0f} kB per sample ({dtype}, image tower: "
        f"{image_tower})")
    return manifest


# start (a global sample index: step x global batch), input context -> that input
# pipeline's share of the training stream, unbatched (as `training.PipelineDatasetFn`).
PipelineFn = Callable[[int, tf.distribute.InputContext], tf.data.Dataset]


def cache_pipeline_fn(config: Config, directory: str | Sequence[str], in_memory: bool = False,
                      weights: Sequence[float] | None = None, parts: int = 1) -> PipelineFn:
    """A `Trainer` pipeline function over the cache read in `parts` parts, each input
    pipeline (worker) reading only the shards of its own parts.

    Part p is a seeded shuffle of the shards p, p + parts, ... (`part_files`), and every
    global batch takes batch_size / parts samples from each part in turn: part 0's, then
    part 1's, ... The stream so depends on `parts`, not on the number of workers: pipeline
    i of n reads parts i * parts/n to (i + 1) * parts/n - 1, and its batches are its slice
    of each global batch (`distribute_datasets_from_function` hands replica i the i-th).
    One process with the same `parts` trains on the same global batches, and a resume
    skips step x batch_size / parts samples of every part. parts=1 is `read_cache`'s one
    stream over every shard.

    Args:
      config: the run's config (train_seed seeds the shuffles and the mix; batch_size is
        the global batch).
      directory: one cache, or one cache per record set of a mixed run.
      in_memory: hold the caches in RAM (see `read_cache`): each worker holds its parts.
      weights: with several caches, each one's share of the mix (`records.mix_datasets`
        with the run's seed: the same choice of set, element by element, as
        `records.read_record_sets` makes); with several parts, each part mixes its
        shards of every cache.
      parts: the parts the cache is read in; it must divide the global batch.

    Raises:
      ValueError: several caches without one weight each, or `parts` not dividing the
        global batch; when called, `parts` not a multiple of the input pipelines.
    """
    several = not isinstance(directory, str)
    if several and (weights is None or len(weights) != len(directory)):
        raise ValueError(f"several caches need one weight each. Received: "
                         f"directory={directory!r}, weights={weights!r}")
    if parts < 1 or config.batch_size % parts:
        raise ValueError(f"the global batch takes one slice from each of the cache's parts; "
                         f"the parts must divide it. Received: parts={parts}, batch_size="
                         f"{config.batch_size}")
    block = config.batch_size // parts

    def part_stream(part: int, start: int) -> tf.data.Dataset:
        if not several:
            return read_cache(config, directory, training=True, seed=config.train_seed,
                              start=start, in_memory=in_memory, part=part, parts=parts)
        streams = [read_cache(config, path, training=True, seed=config.train_seed + index,
                              in_memory=in_memory, part=part, parts=parts)
                   for index, path in enumerate(directory)]
        dataset = records.mix_datasets(streams, weights, config.train_seed)
        return dataset.skip(start) if start else dataset

    def pipeline(start: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
        if parts % context.num_input_pipelines:
            raise ValueError(f"each worker reads whole parts of the cache: the parts must be "
                             f"a multiple of the {context.num_input_pipelines} workers. "
                             f"Received: parts={parts}")
        own = parts // context.num_input_pipelines
        first = context.input_pipeline_id * own
        # Every part gave block samples per step: the resume skips as many of each.
        streams = [part_stream(p, start // parts) for p in range(first, first + own)]
        if own == 1:
            return streams[0]
        return (tf.data.Dataset.zip(tuple(s.batch(block, drop_remainder=True)
                                          for s in streams))
                .map(_concatenate).unbatch())

    return pipeline


def _concatenate(*batches: dict) -> dict:
    """One batch of several, in order (a pipeline's blocks of its parts)."""
    return {key: tf.concat([b[key] for b in batches], axis=0) for key in batches[0]}


def cache_dataset_fn(config: Config, directory: str | Sequence[str], in_memory: bool = False,
                     weights: Sequence[float] | None = None,
                     parts: int = 1) -> Callable[[int], tf.data.Dataset]:
    """A `Trainer` dataset function over the cache: seeded shuffle, resumable at `start`.

    Call it after `ensure_cache`, which has already checked the cache against
    `model`'s towers; every stream it returns still verifies the shard checksums.
    The whole stream of `cache_pipeline_fn` (its arguments), as one input pipeline reads
    it: parts=1 shuffles every shard together.
    """
    pipeline = cache_pipeline_fn(config, directory, in_memory, weights, parts)
    return lambda start: pipeline(start, tf.distribute.InputContext())
