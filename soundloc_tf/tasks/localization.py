"""The localisation task: a training run's model, inputs, feature cache, validation and loop.

`soundloc-train`, the experiments and the benchmarks used to wire these by hand, each its
own way (the feature cache five times, "synthetic scenes or records" four times); the task
is the one place that decides them, so a run trains the same whoever starts it:

  task = LocalizationTask(config, DataConfig(records="records/a,records/b"))
  task.train("runs/mix")

`DataConfig` holds the settings outside `Config` (where the pairs come from, the tower mode
and the cache); `resolve_tower_mode` turns the tower mode into the config's freeze fields.
Settings are named as the command line spells them (`--records`), since every field is a
flag of the same name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Collection

import keras
import tensorflow as tf

from soundloc_tf.config import Config
from soundloc_tf.dataloaders import data, records
from soundloc_tf.modeling import models
from soundloc_tf.train import feature_cache, run_dir
from soundloc_tf.train.training import (VALIDATION_SAMPLES_DURING_TRAINING, DatasetFn,
                                        PipelineDatasetFn, Trainer, make_strategy)

TOWER_MODES = ("fine_tuned", "frozen", "cached")
CACHE_DTYPES = ("float32", "float16", "bfloat16", "int8")
CACHE_IMAGE_TOWERS = ("model", "int8")
CACHE_IN_MEMORY = ("auto", "true", "false")
# The settings that only the cached mode reads: given with another mode they would be
# silently ignored.
CACHE_SETTINGS = ("feature_cache", "cache_dtype", "cache_image_tower", "cache_in_memory",
                  "cache_samples", "cache_parts")
MAX_CACHE_SAMPLES = 2 ** 31 - 1
# The TF_CONFIG task types MultiWorkerMirroredStrategy trains on.
WORKER_TASKS = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a run's pairs come from, and how its feature cache is built.

    A run's config.json records these under "run_flags", the tower mode as resolved.

    Attributes:
      records: training record sets (directories or shard patterns, comma-separated;
        several are mixed); None trains on the synthetic scenes.
      records_weights: with several sets, each one's share of the mix ("0.7,0.3",
        normalised); None mixes in proportion to the sets' pairs.
      annotations: annotation layers (soundloc-studio's annotations.json) whose labelled
        pairs, and only those, train the supervised term; one per set, "-" for a set that
        keeps its own labels.
      validation_records: record sets to validate on, concatenated in order; None
        validates on held-out synthetic scenes.
      tower_mode: "fine_tuned" (towers trained), "frozen" (run on every step, not trained)
        or "cached" (frozen, run once into a feature cache); None lets the config decide:
        cached where `cache_features` is set, else as its freeze fields say.
      feature_cache: the cache directory of the cached mode; None: <workdir>/feature_cache.
      cache_dtype: the cached features' storage type (`CACHE_DTYPES`).
      cache_image_tower: the image tower that builds the cache: "model" as built, or
        "int8" (`modeling/int8_tower.py`).
      cache_in_memory: "true" holds the cache in RAM, "false" streams it from disk, "auto"
        holds it when it takes under half the available memory.
      cache_samples: synthetic scenes to cache (record sets are cached whole).
      cache_parts: the parts the cache is read in (`feature_cache.cache_pipeline_fn`):
        every global batch takes an equal slice from each, and each worker reads only its
        parts' shards. The training stream depends on it, not on the worker count: one
        worker with --cache_parts=2 trains on the batches of two. None: the number of
        workers TF_CONFIG names (1 without); `check_settings` resolves it.
    """

    records: str | None = None
    records_weights: str | None = None
    annotations: str | None = None
    validation_records: str | None = None
    tower_mode: str | None = None
    feature_cache: str | None = None
    cache_dtype: str = "float16"
    cache_image_tower: str = "model"
    cache_in_memory: str = "auto"
    cache_samples: int = 10_000
    cache_parts: int | None = None

    def __post_init__(self) -> None:
        for name, choices in (("tower_mode", TOWER_MODES), ("cache_dtype", CACHE_DTYPES),
                              ("cache_image_tower", CACHE_IMAGE_TOWERS),
                              ("cache_in_memory", CACHE_IN_MEMORY)):
            value = getattr(self, name)
            if value not in choices and not (name == "tower_mode" and value is None):
                raise ValueError(f"--{name} must be one of {choices}. Received: "
                                 f"--{name}={value!r}")
        if not (isinstance(self.cache_samples, int)
                and 1 <= self.cache_samples <= MAX_CACHE_SAMPLES):
            raise ValueError(f"--cache_samples must be an integer in [1, {MAX_CACHE_SAMPLES}]. "
                             f"Received: --cache_samples={self.cache_samples!r}")
        if self.cache_parts is not None and not (isinstance(self.cache_parts, int)
                                                 and 1 <= self.cache_parts <= MAX_CACHE_SAMPLES):
            raise ValueError(f"--cache_parts must be an integer in [1, {MAX_CACHE_SAMPLES}]. "
                             f"Received: --cache_parts={self.cache_parts!r}")
        for name in ("annotations", "records_weights"):
            if getattr(self, name) and not self.records:
                raise ValueError(f"--{name} applies to the sets of --records; it needs them. "
                                 f"Received: --{name}={getattr(self, name)!r}")


def resolve_tower_mode(config: Config, tower_mode: str | None,
                       explicit: Collection[str] = ()) -> tuple[Config, str | None]:
    """The config with its towers set as `tower_mode` says, and the mode in force.

    Args:
      config: the run's config.
      tower_mode: one of `TOWER_MODES`, or None for the config's own: "cached" where
        `cache_features` is set (the paper preset), else the freeze fields as they are
        (the mode then stays None).
      explicit: the config fields given explicitly (command-line flags): a freeze field
        given there must agree with the mode.

    Returns:
      (config, mode). The config keeps `cache_features` unless another mode overrides it,
      so a run resumed with the same settings has the same config.json.

    Raises:
      ValueError: the mode contradicts an explicit freeze field.
    """
    if tower_mode is None and config.cache_features:
        tower_mode = "cached"
    if tower_mode is None:
        return config, None
    if tower_mode not in TOWER_MODES:
        raise ValueError(f"--tower_mode must be one of {TOWER_MODES}. Received: "
                         f"--tower_mode={tower_mode!r}")
    if tower_mode != "cached" and config.cache_features:
        config = config.replace(cache_features=False)
    freeze = tower_mode != "fine_tuned"
    for name in ("freeze_image_tower", "freeze_audio_tower"):
        if name in explicit and getattr(config, name) != freeze:
            raise ValueError(f"--tower_mode={tower_mode} contradicts --{name}. Received: "
                             f"--{name}={getattr(config, name)}")
    return config.replace(freeze_image_tower=freeze, freeze_audio_tower=freeze), tower_mode


def cluster_workers(tf_config: str | None) -> int:
    """The number of workers a TF_CONFIG names (its cluster's "chief" and "worker" tasks);
    1 without one.

    `MultiWorkerMirroredStrategy` reads TF_CONFIG only once the run's settings are read
    and its records listed; checked here, a malformed one fails in one line first.

    Args:
      tf_config: TF_CONFIG's text, or None where it is not set.

    Raises:
      ValueError: it is not JSON naming the cluster's workers (host:port lists) and, as
        "task", one of them.
    """
    if not tf_config:
        return 1
    shown = " ".join(tf_config.split())  # the docs' TF_CONFIGs span lines
    try:
        parsed = json.loads(tf_config)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG must be JSON ({error}). Received: TF_CONFIG={shown!r}"
                         ) from None
    cluster = parsed.get("cluster") if isinstance(parsed, dict) else None
    task = parsed.get("task") if isinstance(parsed, dict) else None
    groups = ({kind: cluster.get(kind, []) for kind in WORKER_TASKS}
              if isinstance(cluster, dict) else {})
    valid_groups = bool(groups) and all(
        isinstance(hosts, list) and all(isinstance(h, str) and ":" in h for h in hosts)
        for hosts in groups.values())
    kind, index = (task.get("type"), task.get("index")) if isinstance(task, dict) else (None,
                                                                                        None)
    if not (valid_groups and kind in WORKER_TASKS and isinstance(index, int)
            and not isinstance(index, bool) and 0 <= index < len(groups[kind])):
        raise ValueError('TF_CONFIG must name the workers and this one among them, as {"cluster"'
                         ': {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": '
                         f"i}}}}. Received: TF_CONFIG={shown!r}")
    return sum(len(hosts) for hosts in groups.values())


def check_settings(config: Config, data_config: DataConfig, explicit: Collection[str] = (),
                   tf_config: str | None = None, shared_cache: str | None = None
                   ) -> tuple[Config, str | None, DataConfig]:
    """The config, tower mode and data settings a run of these settings trains with, the
    settings checked together without reading a file or running a TensorFlow op.

    Args:
      config: the run's config.
      data_config: its data settings.
      explicit: the config fields given explicitly (see `resolve_tower_mode`).
      tf_config: TF_CONFIG's text (see `cluster_workers`), None for one worker.
      shared_cache: `LocalizationTask`'s folder of shared caches, if any.

    Returns:
      `resolve_tower_mode`'s (config, mode), and the data settings with `cache_parts`
      resolved (the cached mode; else as given).

    Raises:
      ValueError: one line naming the setting and the value received.
    """
    config, tower_mode = resolve_tower_mode(config, data_config.tower_mode, explicit)
    if data_config.annotations and not (config.label_fraction > 0
                                        and config.supervised_weight > 0):
        raise ValueError(f"--annotations needs the semi-supervised term on (label_fraction "
                         f"> 0 and supervised_weight > 0). Received: label_fraction="
                         f"{config.label_fraction}, supervised_weight="
                         f"{config.supervised_weight}")
    workers = cluster_workers(tf_config)
    if config.batch_size % workers:
        raise ValueError(f"--batch_size is the global batch; it must divide by the {workers} "
                         f"workers TF_CONFIG names. Received: --batch_size={config.batch_size}")
    if tower_mode != "cached":
        return config, tower_mode, data_config
    parts = data_config.cache_parts or workers
    if parts % workers or config.batch_size % parts:
        raise ValueError(f"--cache_parts must be a multiple of the {workers} worker(s) (each "
                         f"reads whole parts) and divide --batch_size={config.batch_size} "
                         f"(every global batch takes a slice of each). Received: "
                         f"--cache_parts={parts}")
    if workers > 1 and not (data_config.feature_cache or shared_cache):
        # Each worker's default, <its --workdir>/feature_cache, would be its own.
        raise ValueError("with several workers --feature_cache must name the one cache "
                         "directory they all read (the chief builds it there; see "
                         "docs/CLUSTER.md). Received: no --feature_cache")
    return config, tower_mode, dataclasses.replace(data_config, cache_parts=parts)


def worker_share(strategy: tf.distribute.Strategy | None) -> tuple[int, int]:
    """(this worker's input pipeline, the pipelines), as `distribute_datasets_from_function`
    numbers them: the chief first, then the workers in TF_CONFIG's order; (0, 1) for one
    process.

    Args:
      strategy: the run's strategy; None for one process.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict()
    chiefs = len(jobs.get("chief", []))
    first = chiefs if resolver.task_type == "worker" else 0
    return first + resolver.task_id, chiefs + len(jobs.get("worker", []))


def _barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it: a one-number all-reduce, a collective like
    a training step's, so a worker lost meanwhile fails it as it fails a step."""
    # In a function: MultiWorkerMirroredStrategy warns of (and pays) eager overhead.
    tf.function(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM,
                                        strategy.run(lambda: tf.ones([])), axis=None))()


class LocalizationTask:
    """One training run's model, inputs, feature cache, validation and loop.

    Construction reads only the record sets' manifests: a bad list fails in one line
    before any TensorFlow op, and a multi-worker strategy can still be set up after it.
    """

    def __init__(self, config: Config, data_config: DataConfig = DataConfig(), *,
                 explicit: Collection[str] = (),
                 validation_samples: int = VALIDATION_SAMPLES_DURING_TRAINING,
                 shared_cache: str | None = None,
                 relabel: Callable[[DatasetFn], DatasetFn] | None = None,
                 log: Callable[[str], None] = run_dir.print_line):
        """Args:
          config: the model and training settings.
          data_config: where the pairs come from; its tower mode is resolved here.
          explicit: the config fields given explicitly (see `resolve_tower_mode`).
          validation_samples: the pairs validated on during training (the first of the
            validation records, or as many held-out synthetic scenes).
          shared_cache: a folder of feature caches that several runs share (an
            experiment's): the cached mode's cache is then <shared_cache>/<the towers'
            fingerprint>, so runs on the same towers build it once.
          log: where progress lines go.
        """
        self.config, self.tower_mode, self.data_config = check_settings(
            config, data_config, explicit, os.environ.get("TF_CONFIG"), shared_cache)
        self.validation_samples = validation_samples
        self.shared_cache = shared_cache
        self.relabel = relabel or (lambda dataset_fn: dataset_fn)
        self.log = log
        # Directory -> manifest of the feature caches the last `build_feature_cache` used.
        self.feature_caches: dict[str, dict] = {}
        self.train_sets = (records.parse_record_sets(data_config.records,
                                                     data_config.records_weights,
                                                     data_config.annotations)
                           if data_config.records else None)
        self.validation_sets = (records.parse_record_sets(data_config.validation_records)
                                if data_config.validation_records else None)

    @property
    def run_flags(self) -> dict[str, Any]:
        """The data settings as config.json records them (the tower mode as resolved)."""
        return {**dataclasses.asdict(self.data_config), "tower_mode": self.tower_mode}

    # -- the model -----------------------------------------------------------

    def build_model(self, pretrained: bool = True) -> keras.Model:
        """The run's network.

        Args:
          pretrained: load the towers' pretrained weights files. False where a checkpoint
            will supply every weight (resuming, evaluating, exporting): the files need not
            be on disk then, and are not read only to be overwritten.
        """
        return run_dir.build_run_model(self.config, pretrained)

    # -- the inputs ------------------------------------------------------------

    def build_inputs(self) -> DatasetFn:
        """start -> the unbatched training pairs, skipped to `start` (a resume).

        Records are verified whole first (a damaged shard fails now, not mid-run); call
        it after any multi-worker set-up, as it runs TensorFlow ops.
        """
        config = self.config
        if not self.train_sets:
            return lambda start: data.synthetic_dataset(config, config.train_seed, start=start)
        for line in records.describe_record_sets(self.train_sets, training=True):
            self.log(line)
        records.read_record_sets(config, self.train_sets, training=True)  # verifies
        layered = [s for s in self.train_sets if s.annotations]
        if layered:
            self.log(f"Semi-supervised on {sum(s.labeled for s in layered)} labelled pairs of "
                     f"{sum(s.count for s in layered)} (annotation layer "
                     f"{', '.join(s.annotations for s in layered)})")
        sets = self.train_sets
        return lambda start: records.read_record_sets(config, sets, training=True,
                                                      seed=config.train_seed, start=start,
                                                      verify=False)

    def build_validation(self) -> tf.data.Dataset:
        """The pairs validated on during training: the first `validation_samples` of the
        validation records, or as many held-out synthetic scenes (`eval_seed`)."""
        config, count = self.config, self.validation_samples
        if not self.validation_sets:
            return data.synthetic_dataset(config, config.eval_seed, count=count)
        for line in records.describe_record_sets(self.validation_sets, training=False):
            self.log(line)
        total = sum(s.count for s in self.validation_sets)
        if len(self.validation_sets) > 1:  # the first set may fill the whole sample
            self.log(f"Validating on the first {min(total, count)} of their {total} pairs, "
                     "concatenated in order")
        return records.read_record_sets(config, self.validation_sets,
                                        training=False).take(count)

    def build_feature_cache(self, model: keras.Model, workdir: str,
                            directory: str | None = None,
                            strategy: tf.distribute.Strategy | None = None
                            ) -> PipelineDatasetFn:
        """The cached mode's training pairs: the towers' outputs, cached once per set.

        Builds the cache where absent, reuses it where `model`'s towers made it with the
        asked-for storage, and refuses one holding other features. With several record
        sets, each is cached in <directory>/<set key> and the caches mixed as the sets are.
        The cache is read in `cache_parts` parts (`feature_cache.cache_pipeline_fn`).

        Several workers (a `MultiWorkerMirroredStrategy`) agree on one cache: the chief
        builds or reuses it, then every worker passes a barrier (a one-number all-reduce,
        which a lost worker fails as it fails a step); the others reuse the cache the
        chief left, and refuse in one line where they cannot see it.

        Args:
          model: the run's model (its towers fill the cache).
          workdir: the run directory (the default cache lives in it).
          directory: the cache directory; default the data config's, else the shared
            cache's folder for `model`'s towers, else <workdir>/feature_cache.
          strategy: the run's strategy (default: one process, which builds).
        """
        config, settings = self.config, self.data_config
        sources = self._cache_sources(self._cache_directory(model, workdir, directory))
        pipeline, pipelines = worker_share(strategy)
        parts = settings.cache_parts or 1
        own = parts // pipelines
        several = pipelines > 1
        chief = strategy is None or strategy.extended.should_checkpoint
        if several and not chief:
            _barrier(strategy)  # the chief has written every manifest
            missing = [path for path in sources
                       if not os.path.exists(os.path.join(path, records.MANIFEST))]
            if missing:
                raise ValueError("the chief built the feature cache where this worker cannot "
                                 "read it: give --feature_cache a directory every worker "
                                 "shares, or a copy of the built cache at that path. "
                                 f"Received: no manifest in {missing[0]!r}")
        manifests = [feature_cache.ensure_cache(
            model, config, source, path, log=self.log, dtype=settings.cache_dtype,
            image_tower=settings.cache_image_tower,
            samples_per_shard=feature_cache.shard_size(count, parts), parts=parts,
            read_parts=range(pipeline * own, (pipeline + 1) * own))
            for path, (count, source) in sources.items()]
        if several and chief:
            _barrier(strategy)
        self.feature_caches = dict(zip(sources, manifests))
        in_memory = (feature_cache.fits_in_memory(manifests)
                     if settings.cache_in_memory == "auto"
                     else settings.cache_in_memory == "true")
        held = sum(feature_cache.in_memory_bytes(m) for m in manifests) / 1e9
        where = (f"held in memory ({held:.2f} GB" if in_memory
                 else f"streamed from disk ({held:.2f} GB if held in memory")
        self.log(f"Feature cache {where}; --cache_in_memory={settings.cache_in_memory}); read "
                 f"in {parts} part(s), {own} by this worker")
        weights = [s.weight for s in self.train_sets] if len(sources) > 1 else None
        return feature_cache.cache_pipeline_fn(
            config, list(sources) if weights else next(iter(sources)), in_memory, weights,
            parts)

    def _cache_directory(self, model: keras.Model, workdir: str, directory: str | None) -> str:
        """`build_feature_cache`'s directory (see there)."""
        settings = self.data_config
        if directory is None and settings.feature_cache is None and self.shared_cache:
            towers = models.split_model(model)
            directory = os.path.join(self.shared_cache,
                                     feature_cache.fingerprint(towers.image, towers.audio)[:16])
        return directory or settings.feature_cache or os.path.join(workdir, "feature_cache")

    def _cache_sources(self, directory: str) -> dict[str, tuple[int, tf.data.Dataset]]:
        """Cache directory -> (samples, the unbatched pairs to cache): one per record set of
        a list, else one."""
        config = self.config
        if self.train_sets and len(self.train_sets) > 1:
            return {os.path.join(directory, s.key): (s.count, records.read_record_sets(
                config, [s], training=False, verify=False)) for s in self.train_sets}
        if self.train_sets:
            return {directory: (sum(s.count for s in self.train_sets), records.read_record_sets(
                config, self.train_sets, training=False, verify=False))}
        count = self.data_config.cache_samples
        return {directory: (count, data.synthetic_dataset(config, config.train_seed,
                                                          count=count))}

    # -- training ----------------------------------------------------------------

    def build_trainer(self, workdir: str, strategy: tf.distribute.Strategy | None = None,
                      validation: tf.data.Dataset | None = None,
                      run_flags: dict[str, Any] | None = None) -> Trainer:
        """A `Trainer` on this task's model and inputs, resumed from `workdir`'s newest
        checkpoint; in the cached mode, on the feature cache.

        Args:
          workdir: the run directory.
          strategy: the distribution strategy; default `make_strategy()`, which must be
            made before any op where TF_CONFIG is set.
          validation: pairs validated on; default `build_validation()`.
          run_flags: settings outside `Config` and `DataConfig` that config.json records
            with the data settings (the command line's preset).
        """
        strategy = strategy or make_strategy()
        # A resumed run's checkpoint holds the towers: their weights files are not read.
        resuming = run_dir.has_checkpoint(workdir)
        trainer = Trainer(self.config, workdir, strategy,
                          dataset_fn=self.relabel(self.build_inputs()),
                          validation=(self.build_validation() if validation is None
                                      else validation),
                          log=self.log, run_flags={**(run_flags or {}), **self.run_flags},
                          model_fn=lambda: self.build_model(pretrained=not resuming))
        if self.tower_mode == "cached":
            pipeline = self.build_feature_cache(trainer.model, workdir, strategy=strategy)
            trainer.use_feature_cache(pipeline_fn=lambda start, context: self.relabel(
                functools.partial(pipeline, context=context))(start))
        return trainer

    def train(self, workdir: str, strategy: tf.distribute.Strategy | None = None,
              run_flags: dict[str, Any] | None = None) -> dict[str, float]:
        """Trains to `config.train_steps` in `workdir` (resuming); returns the last losses.

        Args:
          workdir: the run directory: config.json, checkpoints, TensorBoard logs.
          strategy, run_flags: see `build_trainer`.
        """
        trainer = self.build_trainer(workdir, strategy, run_flags=run_flags)
        self.log(f"Training {self.config.train_steps} steps, batch {self.config.batch_size}, "
                 f"on {trainer.strategy.num_replicas_in_sync} replica(s)"
                 f"{', update compiled with XLA' if trainer.xla_update else ''}; logs in "
                 f"{workdir}")
        return trainer.train()
