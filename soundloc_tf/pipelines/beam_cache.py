"""The feature cache as an Apache Beam pipeline: `feature_cache.write_cache` on workers.

  record shards (launcher) -> Reshuffle -> decoded samples per shard (workers)
    -> BatchElements -> the frozen towers, loaded once per worker -> examples keyed by
    cache shard -> one part per shard -> the parts renamed, then the manifest (one worker)

The launcher checks what `write_cache` checks, saves the model's weights beside the output
for the workers, fingerprints the towers and, for the int8 image tower, calibrates it on
the first `int8_tower.CALIBRATION_IMAGES` images as `write_cache` does. Each sample's
position is its place in `records.read_records(..., training=False)`'s stream (the shards
in order), so the cache shards hold what `write_cache` writes over that stream, in its
order, with the same manifest fields; the features differ only where the towers' kernels
round differently for another batch size (within float16 rounding, tests/test_beam.py).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable, Iterator

import apache_beam as beam
import keras
import numpy as np
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from soundloc_tf.config import Config
from soundloc_tf.dataloaders import records
from soundloc_tf.modeling import int8_tower
from soundloc_tf.modeling.models import build_model, split_model
from soundloc_tf.pipelines import shards
from soundloc_tf.train import feature_cache

PREFIX = "features"
WEIGHTS = ".beam-towers.weights.h5"  # the model's weights, for the workers to load
ELEMENT_KEYS = ("image", "waveform", "boxes", "labeled", "class_id", "id")


class ReadShard(beam.DoFn):
    """(record shard, position of its first sample) -> (position, decoded sample)."""

    def __init__(self, config: Config):
        self.config = config

    def process(self, item: tuple[str, int]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        path, first = item
        # The launcher verified every shard against the manifest.
        dataset = records.read_records(self.config, path, training=False, verify=False)
        for offset, element in enumerate(dataset):
            yield first + offset, {k: element[k].numpy() for k in ELEMENT_KEYS}


class RunTowers(beam.DoFn):
    """A batch of (position, sample) -> (cache shard, (position, serialized example))."""

    def __init__(self, config: Config, weights: str, dtype: str,
                 int8_ranges: tuple[float, ...] | None, samples_per_shard: int):
        self.config, self.weights, self.dtype = config, weights, dtype
        self.int8_ranges, self.samples_per_shard = int8_ranges, samples_per_shard
        self.samples = beam.metrics.Metrics.counter("soundloc_cache", "samples")

    def setup(self) -> None:
        # Once per worker: the model's towers with the launcher's weights, traced once.
        model = build_model(self.config)
        model.load_weights(self.weights)
        self.features = feature_cache._feature_function(model, self.dtype, self.int8_ranges)

    def process(self, batch: list[tuple[int, dict[str, np.ndarray]]]
                ) -> Iterator[tuple[int, tuple[int, bytes]]]:
        stacked = {k: np.stack([sample[k] for _, sample in batch])
                   for k in ("image", "waveform")}
        arrays = {k: t.numpy() for k, t in self.features(stacked).items()}
        for i, (position, sample) in enumerate(batch):
            example = cache_example(arrays, i, sample)
            self.samples.inc()
            yield (position // self.samples_per_shard,
                   (position, example.SerializeToString(deterministic=True)))


def cache_example(arrays: dict[str, np.ndarray], i: int, sample: dict[str, np.ndarray]
                  ) -> tf.train.Example:
    """Sample `i` of a batch's features, with its labels: `write_cache`'s example."""
    feature = {
        "visual": records._bytes(arrays["visual"][i].tobytes()),
        "audio": records._bytes(arrays["audio"][i].tobytes()),
        "boxes": tf.train.Feature(float_list=tf.train.FloatList(
            value=sample["boxes"].reshape(-1))),
        "labeled": records._int64([int(sample["labeled"])]),
        "class_id": records._int64([int(sample["class_id"])]),
        "id": records._bytes(bytes(sample["id"])),
    }
    for name in ("visual_scale", "audio_scale"):
        if name in arrays:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
                value=arrays[name][i].reshape(-1)))
    return tf.train.Example(features=tf.train.Features(feature=feature))


class WriteParts(beam.DoFn):
    """(cache shard, its examples) -> the part's manifest entry."""

    def __init__(self, directory: str):
        self.directory = directory

    def process(self, keyed: tuple[int, Iterable[tuple[int, bytes]]]
                ) -> Iterator[dict[str, Any]]:
        key, values = keyed
        ordered = sorted(values, key=lambda value: value[0])
        yield shards.write_part((v[1] for v in ordered), self.directory, PREFIX, key)


def commit_cache(parts: list[dict[str, Any]], *, directory: str, fields: dict[str, Any],
                 started: float) -> dict[str, Any]:
    """Every part -> the shards renamed, then `write_cache`'s manifest; returns it."""
    if not parts:
        raise ValueError("the dataset is empty; nothing to cache")
    entries = shards.commit_parts(directory, parts, PREFIX)
    manifest = {"format": feature_cache.CACHE_FORMAT, "version": 1,
                "count": sum(part["count"] for part in parts), **fields,
                "shards": entries, "seconds": round(time.time() - started, 2)}
    records._atomic_write_text(os.path.join(directory, records.MANIFEST),
                               json.dumps(manifest, indent=1))
    return manifest


def _check(config: Config, dtype: str, image_tower: str, batch_size: int,
           samples_per_shard: int, directory: str) -> None:
    """`write_cache`'s checks, made before any work."""
    feature_cache.check_cache_settings(config, dtype, image_tower)
    if batch_size < 1 or samples_per_shard < 1:
        raise ValueError(f"batch_size and samples_per_shard must be >= 1. Received: "
                         f"batch_size={batch_size}, samples_per_shard={samples_per_shard}")
    if os.path.exists(os.path.join(directory, records.MANIFEST)):
        raise ValueError(f"the directory already holds a cache. Received: {directory!r}")


def run_beam_cache(model: keras.Model, config: Config, source: str, directory: str,
                   pipeline_args: list[str], *, dtype: str = "float16",
                   image_tower: str = "model", batch_size: int = 16,
                   samples_per_shard: int = 2000) -> dict[str, Any]:
    """Caches the frozen towers' features of a record set, as a Beam pipeline.

    Args:
      model: the model whose towers fill the cache; `build_model(config)` must rebuild its
        architecture (the workers load its weights into that).
      config: the model's config (frozen towers).
      source: a record directory (`soundloc-import`'s output).
      directory: the new cache directory: local, or a file system every worker mounts.
      pipeline_args: Beam's options, e.g. ["--runner=DirectRunner",
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"].
      dtype: the storage type, as `write_cache` takes it.
      image_tower: "model" or "int8", as `write_cache` takes it.
      batch_size: samples per tower call (Beam's BatchElements, at most this many).
      samples_per_shard: samples per cache shard.

    Returns:
      The cache's manifest (`write_cache`'s fields).
    """
    _check(config, dtype, image_tower, batch_size, samples_per_shard, directory)
    os.makedirs(directory, exist_ok=True)
    shards.clear_leftovers(directory, PREFIX)
    started = time.time()
    record_set = records.resolve(source)
    records.verify_shards(record_set)
    image_model, audio_model, _ = split_model(model)
    ranges = None
    if image_tower == "int8":
        calibration = next(iter(records.read_records(config, source, training=False,
                                                     verify=False)
                                .take(int8_tower.CALIBRATION_IMAGES)
                                .batch(int8_tower.CALIBRATION_IMAGES)))
        ranges = tuple(int8_tower.calibrate(image_model, calibration["image"]))
    fields = {"dtype": dtype,
              "visual_shape": [config.map_size, config.map_size, config.visual_dim],
              "audio_dim": config.audio_feature_dim,
              "audio_feature": config.resolved_audio_feature,
              "towers_sha256": feature_cache.fingerprint(image_model, audio_model),
              "image_tower": image_tower,
              **({"int8_ranges": list(ranges)} if ranges is not None else {})}
    weights = os.path.join(directory, WEIGHTS)
    model.save_weights(weights)
    counts = {s["file"]: s["count"] for s in record_set.manifest["shards"]}
    firsts = np.cumsum([0] + [counts[os.path.basename(f)] for f in record_set.files])
    items = [(path, int(first)) for path, first in zip(record_set.files, firsts)]
    try:
        with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
            _ = (pipeline
                 | "Shards" >> beam.Create(items)
                 | "Spread" >> beam.Reshuffle()
                 | "Read" >> beam.ParDo(ReadShard(config))
                 | "Batch" >> beam.BatchElements(min_batch_size=batch_size,
                                                 max_batch_size=batch_size)
                 | "Towers" >> beam.ParDo(RunTowers(config, weights, dtype, ranges,
                                                    samples_per_shard))
                 | "ByShard" >> beam.GroupByKey()
                 | "Write" >> beam.ParDo(WriteParts(directory))
                 | "Parts" >> beam.combiners.ToList()
                 | "Commit" >> beam.Map(commit_cache, directory=directory, fields=fields,
                                        started=started))
    finally:
        os.remove(weights)
    with open(os.path.join(directory, records.MANIFEST)) as f:
        return json.load(f)
