"""Custom training loop on tf.distribute, with checkpoints, resume and TensorBoard.

One step, per replica: run the model on the local batch, gather the audio
features / embeddings of the whole global batch (so negatives and InfoNCE
rows are the same on one device or many), compute per-example losses and
divide by the global batch.  Gradients are summed across replicas by the
optimiser.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
import shutil
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf import losses
from soundloc_tf.dataloaders import data
from soundloc_tf.config import Config
from soundloc_tf.eval.evaluation import evaluate, is_annotated, predict_maps
from soundloc_tf.modeling.models import build_model, inverse_norms
from soundloc_tf.train.run_dir import (checkpoint_paths, load_saved_config, print_line,
                                      restore_newest_readable)
from soundloc_tf.visualize import draw_boxes, overlay

# Fields that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset({
    "train_steps", "log_every", "eval_every", "checkpoint_every", "max_checkpoints",
    "num_summary_images", "num_eval_samples", "xla_heads"})
VALIDATION_SAMPLES_DURING_TRAINING = 256

DatasetFn = Callable[[int], tf.data.Dataset]
# start (a global sample index: step x global batch), input context -> that input
# pipeline's (worker's) share of the training stream, unbatched: its slice of every global
# batch, in order (`Trainer.use_feature_cache`).
PipelineDatasetFn = Callable[[int, tf.distribute.InputContext], tf.data.Dataset]


@functools.cache
def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG is set, else Mirrored over the local devices.

    One device gets OneDeviceStrategy: the same step without Mirrored's replica
    machinery, and the only one under which the XLA-compiled update can run.
    One per process: two MirroredStrategy objects reuse collective instance keys
    and mix up each other's all-gathers.
    """
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) == 1:
        return tf.distribute.OneDeviceStrategy(devices[0].name)
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def learning_rate_at(config: Config, step: int) -> float:
    """The learning rate `make_optimizer` applies at `step` (for logging)."""
    if config.lr_schedule == "cosine":
        return config.learning_rate * 0.5 * (1 + np.cos(np.pi * min(step, config.train_steps)
                                                          / config.train_steps))
    return config.learning_rate


def make_optimizer(config: Config) -> keras.optimizers.Optimizer:
    rate = config.learning_rate
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=config.train_steps)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate)
    return keras.optimizers.SGD(rate, momentum=config.momentum)


def pick_annotators(config: Config, batch: dict, step: tf.Tensor) -> tf.Tensor | None:
    """One valid annotator per example for the supervised term; None when it is off.

    A hash of (id, step), so the same on any replica layout. It hashes strings,
    which XLA cannot compile, so it runs before the (possibly compiled) update.
    """
    if not (config.label_fraction > 0 and config.supervised_weight > 0):
        return None
    valid = losses.valid_annotators(batch["boxes"])
    count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.int64), axis=1), 1)
    salted = tf.strings.join([batch["id"], tf.strings.as_string(step)], separator="#")
    pick = tf.strings.to_hash_bucket_fast(salted, 2 ** 31) % count  # k-th valid annotator
    rank = tf.cumsum(tf.cast(valid, tf.int64), axis=1) - 1
    return tf.argmax(tf.cast(valid & (rank == pick[:, None]), tf.int32), axis=1,
                     output_type=tf.int32)


def localizer_outputs(localizer: keras.Model, batch: dict) -> dict[str, tf.Tensor]:
    """The localiser on cached features (16-bit as stored, cast here), as a live step sees it."""
    audio = tf.cast(batch["audio_feature"], tf.float32)
    outputs = dict(localizer([tf.cast(batch["visual_map"], tf.float32), audio], training=True))
    outputs["audio_feature"] = audio
    return outputs


def all_finite(tensors: list[tf.Tensor]) -> tf.Tensor:
    """Whether every element of every tensor is finite, as one boolean.

    t * 0 is 0 where t is finite and NaN where it is not, and its sum, taken as a
    matrix product with a ones vector, is NaN exactly when one element is: compiled
    with XLA on CPU that beats reduce_all(is_finite), whose reductions run at a
    fraction of XLA's matrix-vector speed.
    """
    total = []
    for t in tensors:
        rows = [-1, tf.shape(t)[-1]] if t.shape.rank else [1, -1]
        # Zeroed in t's own type: a finite float64 beyond float32's range stays finite.
        zeros = tf.reshape(tf.cast(t * tf.zeros([], t.dtype), tf.float32), rows)
        total.append(tf.reduce_sum(zeros @ tf.ones([tf.shape(zeros)[1], 1])))
    return tf.math.is_finite(tf.add_n(total))


def _gather(ctx: tf.distribute.ReplicaContext, x: tf.Tensor) -> tf.Tensor:
    """The global batch's `x`. On one replica no collective runs: XLA cannot compile one
    inside a replica function (merge_call), and there is nothing to gather."""
    return x if ctx.num_replicas_in_sync == 1 else ctx.all_gather(x, axis=0)


def _cosines(ctx: tf.distribute.ReplicaContext, outputs: dict, batch: dict,
             all_sound: tf.Tensor) -> tf.Tensor:
    """`losses.pair_cosines` of this replica's images with the global batch's sounds.

    From the cache on one replica: (s . v) / |v|, scaled after the product with
    SoundAttention's own `inverse_norms` (XLA computes them once), so the normalised
    [N, h, w, C] map, the heads step's largest tensor, is never written and read back.
    """
    if ctx.num_replicas_in_sync == 1 and "visual_map" in batch:
        visual = tf.cast(batch["visual_map"], tf.float32)
        shape = tf.shape(visual)
        flat = tf.reshape(visual, [shape[0], -1, shape[3]])
        return (tf.matmul(all_sound, flat, transpose_b=True)
                * inverse_norms(visual)[:, None, :])
    return losses.pair_cosines(outputs["visual_unit"], all_sound)


def compute_losses(config: Config, outputs: dict, batch: dict, global_batch: int,
                   annotator: tf.Tensor | None) -> dict[str, tf.Tensor]:
    """This replica's share of each loss term; summing shares over replicas gives the total.

    `annotator` is `pick_annotators`'s choice (None: no supervised term).
    """
    ctx = tf.distribute.get_replica_context()
    local = tf.shape(outputs["score"])[0]
    offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * local
    positions = offset + tf.range(local)
    terms = {}

    if config.unsupervised_loss == "triplet":
        all_audio = _gather(ctx, outputs["audio_feature"])
        # The next clip's sound; a one-hot product, not tf.gather, keeps the gradient
        # dense, which all_gather's gradient needs.
        negative = tf.one_hot((positions + 1) % global_batch, global_batch) @ all_audio
        per_example = losses.triplet_loss(outputs["visual_feature"], outputs["audio_feature"],
                                          negative)
    elif config.unsupervised_loss == "infonce":
        all_sound = _gather(ctx, outputs["sound_embedding"])
        image_to_sound = tf.reduce_max(_cosines(ctx, outputs, batch, all_sound), 2)
        if ctx.num_replicas_in_sync == 1:
            # One replica holds the whole batch: both directions are the same matrix, and
            # computing it once halves the step's largest product.
            sound_to_image = tf.transpose(image_to_sound)
        else:
            all_visual = ctx.all_gather(outputs["visual_unit"], axis=0)
            sound_to_image = tf.transpose(
                losses.max_pooled_similarity(all_visual, outputs["sound_embedding"]))
        excluded = None
        if not config.infonce_same_class_negatives:
            excluded = losses.same_class_pairs(batch["class_id"],
                                               _gather(ctx, batch["class_id"]), positions)
        per_example = losses.infonce_loss(image_to_sound, sound_to_image, positions,
                                          config.infonce_temperature, excluded)
    elif config.unsupervised_loss == "hard_way":
        # Image to sound only, as LVS has it: the regions are the image's.
        all_sound = _gather(ctx, outputs["sound_embedding"])
        per_example = losses.hard_way_loss(
            _cosines(ctx, outputs, batch, all_sound), positions,
            config.infonce_temperature, config.hard_way_positive_threshold,
            config.hard_way_negative_threshold, config.hard_way_mask_temperature)
    else:
        per_example = tf.zeros([local])
    terms["unsupervised"] = tf.reduce_sum(per_example) / global_batch

    if annotator is not None:
        target = losses.box_target_maps(batch["boxes"], config.map_size, annotator)
        has_target = tf.reduce_sum(target, axis=[1, 2]) > 0
        mask = tf.cast(batch["labeled"] & has_target, tf.float32)
        labeled = tf.reduce_sum(mask)
        if ctx.num_replicas_in_sync > 1:
            labeled = ctx.all_reduce(tf.distribute.ReduceOp.SUM, labeled)
        supervised = outputs["attention"]
        if config.supervised_temperature > 0:
            supervised = losses.cosine_attention(outputs["cosine"],
                                                 config.supervised_temperature)
        per_example = losses.attention_supervision_loss(supervised, target) * mask
        terms["supervised"] = tf.reduce_sum(per_example) / tf.maximum(labeled, 1.0)
    else:
        terms["supervised"] = tf.constant(0.0)
    terms["total"] = terms["unsupervised"] + config.supervised_weight * terms["supervised"]
    return terms


def losses_on_features(config: Config, localizer: keras.Model, batch: dict,
                       step: int = 0) -> dict[str, tf.Tensor]:
    """The training step's loss terms on a batch of cached features, without an update.

    For comparing caches (dtypes, towers) with each other and with live features; the
    annotators are picked as the step numbered `step` would pick them.
    """
    annotator = pick_annotators(config, batch, tf.constant(step, tf.int64))
    return compute_losses(config, localizer_outputs(localizer, batch), batch,
                          int(batch["visual_map"].shape[0]), annotator)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class Trainer:
    """Owns the strategy, model, optimiser, checkpoints and summaries of one run."""

    def __init__(self, config: Config, workdir: str,
                 strategy: tf.distribute.Strategy | None = None,
                 dataset_fn: DatasetFn | None = None,
                 validation: tf.data.Dataset | None = None,
                 log: Callable[[str], None] = print_line,
                 run_flags: dict[str, Any] | None = None,
                 model_fn: Callable[[], keras.Model] | None = None):
        """Args:
          config: the model and training settings, saved as the run's config.json.
          workdir: the run directory (config, checkpoints, TensorBoard logs).
          strategy: the distribution strategy (default: `make_strategy()`).
          dataset_fn: start step -> training pairs (default: the synthetic scenes).
          validation: pairs scored during training (default: held-out synthetic scenes).
          log: where progress lines go.
          run_flags: the settings outside `Config` that shaped the run (the command
            line's data and cache flags), saved in config.json under "run_flags" so
            that the file records the whole run.
          model_fn: builds the model, inside the strategy's scope (default:
            `build_model(config)`; `LocalizationTask.build_model` skips the pretrained
            weights files when a checkpoint will replace them).
        """
        self.config = config
        self.run_flags = dict(run_flags or {})
        self.workdir = workdir
        self.log = log
        self.strategy = strategy or make_strategy()
        self.global_batch = config.batch_size
        if self.global_batch % self.strategy.num_replicas_in_sync:
            raise ValueError(
                f"batch_size must be divisible by the {self.strategy.num_replicas_in_sync} "
                f"replicas. Received: batch_size={config.batch_size}")
        self.dataset_fn = dataset_fn or (
            lambda start: data.synthetic_dataset(config, config.train_seed, start=start))
        self.validation = validation or data.synthetic_dataset(
            config, config.eval_seed, count=VALIDATION_SAMPLES_DURING_TRAINING)
        # Fail now, not at the first validation hours later: scoring needs boxes.
        if next(iter(self.validation.filter(is_annotated).take(1)), None) is None:
            raise ValueError("the validation data has no annotated box, so validation could not "
                             "score the maps; validate on labelled records. Received: "
                             "validation pairs without boxes")
        self._prepare_workdir()
        with self.strategy.scope():
            # Seeded initial weights: the same command gives the same run.
            keras.utils.set_random_seed(config.train_seed)
            self.model = model_fn() if model_fn else build_model(config)
            self.optimizer = make_optimizer(config)
            # Built eagerly inside the scope: a lazily built optimiser fails under Mirrored.
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.from_features = False
        self.pipeline_fn: PipelineDatasetFn | None = None  # a worker reads its own share
        self.xla_update = False  # the update compiled with XLA (feature cache, one device)
        self._update = self._apply_update
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(workdir, "checkpoints"), config.max_checkpoints)
        self._restore()
        self.writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    # -- set-up ------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the work directory. Received: workdir="
                             f"{self.workdir!r} ({error.strerror})") from None
        checkpoint_paths(self.workdir)  # a damaged state file: one line, before the manager's
        saved = load_saved_config(self.workdir)
        if saved is not None:
            changed = sorted(f.name for f in dataclasses.fields(Config)
                             if getattr(saved, f.name) != getattr(self.config, f.name)
                             and f.name not in RESUMABLE_CHANGES)
            if changed:
                raise ValueError(
                    f"the work directory holds a run with another configuration; use a new "
                    f"--workdir or the same settings. Received: differing fields {changed}")
        with open(os.path.join(self.workdir, "config.json"), "w") as f:
            json.dump({**dataclasses.asdict(self.config), "run_flags": self.run_flags}, f,
                      indent=1)

    def _restore(self) -> None:
        # The `checkpoint` state file, as restore_model reads it: CheckpointManager.checkpoints
        # drops entries without timestamps (a state file rolled back or written by other tools).
        path = restore_newest_readable(self.checkpoint, checkpoint_paths(self.workdir), self.log,
                                       partial=False)
        if path is not None:
            self.log(f"Resumed from {path} at step {int(self.step.numpy())}.")

    def use_feature_cache(self, dataset_fn: DatasetFn | None = None,
                          pipeline_fn: PipelineDatasetFn | None = None) -> None:
        """Trains the localiser on cached tower outputs instead of images and waveforms.

        The towers must be frozen (their outputs are fixed); checkpoints hold the
        whole model as in live training, so evaluation and export are unchanged.

        Args:
          dataset_fn: start -> `feature_cache.read_cache` elements, the whole stream
            (the strategy splits each global batch between the workers).
          pipeline_fn: instead, start and an input context -> that worker's share
            (`feature_cache.cache_pipeline_fn`): each worker reads only its own shards,
            batched per replica (`distribute_datasets_from_function`).
        """
        if not (self.config.freeze_image_tower and self.config.freeze_audio_tower):
            raise ValueError("training from a feature cache needs both towers frozen. Received: "
                             f"freeze_image_tower={self.config.freeze_image_tower}, "
                             f"freeze_audio_tower={self.config.freeze_audio_tower}")
        if (dataset_fn is None) == (pipeline_fn is None):
            raise ValueError("the cache is read as one stream or per input pipeline: give "
                             "dataset_fn or pipeline_fn. Received: "
                             f"{'both' if dataset_fn else 'neither'}")
        self.dataset_fn = dataset_fn or self.dataset_fn
        self.pipeline_fn = pipeline_fn
        self.from_features = True
        # Under Mirrored (even on one device) the optimiser's gradient all-reduce is a
        # merge_call, which cannot sit inside a compiled function; OneDevice has none.
        self.xla_update = self.config.xla_heads and isinstance(
            self.strategy, tf.distribute.OneDeviceStrategy)
        if self.xla_update:
            self._update = tf.function(self._apply_update, jit_compile=True)

    # -- one step ------------------------------------------------------------

    def _forward(self, batch: dict) -> dict[str, tf.Tensor]:
        if not self.from_features:
            return self.model({"image": batch["image"], "waveform": batch["waveform"]},
                              training=True)
        return localizer_outputs(self.model.get_layer("localizer"), batch)

    def _replica_step(self, batch: dict) -> dict[str, tf.Tensor]:
        annotator = pick_annotators(self.config, batch, self.step)
        return self._update({k: v for k, v in batch.items() if v.dtype != tf.string}, annotator)

    def _apply_update(self, batch: dict, annotator: tf.Tensor | None) -> dict[str, tf.Tensor]:
        """Forward, loss, gradients and the optimiser's update: no strings, so XLA-compilable."""
        with tf.GradientTape() as tape:
            outputs = self._forward(batch)
            terms = compute_losses(self.config, outputs, batch, self.global_batch, annotator)
        variables = self.model.trainable_variables
        gradients = tape.gradient(terms["total"], variables)
        # InfoNCE does not use the f_v head; skip variables without a gradient.
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        self.optimizer.apply_gradients(pairs)
        # Max-pooling, tf.maximum and the softmax can swallow a NaN (a NaN pixel need not
        # reach the loss), so non-finite outputs or gradients mark the loss NaN themselves:
        # the loop then stops before anything is saved.
        # visual_unit is skipped: the map's largest tensor, and cosine, checked here, is
        # non-finite wherever it is (a NaN or inf in v makes v.s / |v| NaN).
        floating = [t for k, t in outputs.items() if t.dtype.is_floating and k != "visual_unit"]
        finite = all_finite(floating + [g for g, _ in pairs])
        return {k: tf.where(finite, v, float("nan")) for k, v in terms.items()}

    @tf.function
    def train_step(self, iterator) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """One step on the next global batch of `iterator` (over `train_dataset()`,
        distributed): the summed loss terms, and the batch's ids (per replica) for a NaN
        report. `train` calls it; the benchmarks time it."""
        batch = next(iterator)
        terms = self.strategy.run(self._replica_step, args=(batch,))
        self.step.assign_add(1)
        reduced = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                   for k, v in terms.items()}
        return reduced, batch["id"]

    def _write_nan_report(self, step: int, ids, terms: dict[str, float]) -> str:
        """<workdir>/nan_report.json: the step, this worker's batch ids, the loss terms."""
        local_ids = [i.decode("utf-8", "replace")
                     for part in self.strategy.experimental_local_results(ids)
                     for i in part.numpy().tolist()]
        report = {"step": step, "ids": local_ids, "losses": terms,
                  "learning_rate": float(learning_rate_at(self.config, step)),
                  "last_good_checkpoint": self.manager.latest_checkpoint}
        path = os.path.join(self.workdir, "nan_report.json")
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=1)  # NaN/Infinity literals; json.load reads them
        os.replace(path + ".tmp", path)
        return path

    def train_dataset(self, context: tf.distribute.InputContext | None = None
                      ) -> tf.data.Dataset:
        """The training batches from the current step: global batches of `dataset_fn`'s
        stream, or (with `pipeline_fn`) the per-replica batches of `context`'s input
        pipeline (default: the one pipeline, whose batches are global)."""
        start = int(self.step.numpy()) * self.global_batch
        if self.pipeline_fn is None:
            dataset = self.dataset_fn(start).batch(self.global_batch, drop_remainder=True)
        else:
            context = context or tf.distribute.InputContext()
            dataset = self.pipeline_fn(start, context).batch(
                context.get_per_replica_batch_size(self.global_batch), drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def distributed_dataset(self) -> tf.distribute.DistributedDataset:
        """`train_dataset` handed to the strategy: split by it, or read per pipeline."""
        if self.pipeline_fn is None:
            return self.strategy.experimental_distribute_dataset(self.train_dataset())
        return self.strategy.distribute_datasets_from_function(self.train_dataset)

    # -- the loop ------------------------------------------------------------

    def train(self, steps: int | None = None) -> dict[str, float]:
        """Trains up to config.train_steps (or `steps` more); returns the last losses."""
        target = self.config.train_steps if steps is None else int(self.step.numpy()) + steps
        first = int(self.step.numpy())
        if first >= target:
            self.log(f"Already trained {first} steps (target {target}); nothing to do.")
            return {}
        iterator = iter(self.distributed_dataset())
        c = self.config
        last: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        while int(self.step.numpy()) < target:
            terms, ids = self.train_step(iterator)
            step = int(self.step.numpy())
            window_steps += 1
            last = {k: float(v) for k, v in terms.items()}
            if not np.isfinite(last["total"]):
                report = self._write_nan_report(step, ids, last)
                raise FloatingPointError(
                    f"the loss became {last['total']} at step {step} (batch ids and loss terms "
                    f"in {report}); the last good checkpoint is {self.manager.latest_checkpoint}")
            if step % c.log_every == 0 or step == target:
                elapsed = time.perf_counter() - window_start
                rate = window_steps * self.global_batch / max(elapsed, 1e-9)
                eta = (target - step) * self.global_batch / max(rate, 1e-9)
                self.log(f"step {step}/{target}  loss {last['total']:.4f} (unsupervised "
                         f"{last['unsupervised']:.4f}, supervised {last['supervised']:.4f})  "
                         f"{rate:.1f} pairs/s  ETA {_format_seconds(eta)}")
                with self.writer.as_default(step=step):
                    for name in ("total", "unsupervised", "supervised"):
                        tf.summary.scalar(f"loss/{name}", last[name])
                    tf.summary.scalar("learning_rate", learning_rate_at(c, step))
                    tf.summary.scalar("pairs_per_second", rate)
                window_start, window_steps = time.perf_counter(), 0
            if step % c.checkpoint_every == 0 or step == target:
                try:
                    self.manager.save(checkpoint_number=step)
                except tf.errors.OpError as error:  # a full disk: ResourceExhaustedError
                    for staging in glob.glob(os.path.join(self.manager.directory,
                                                          f"ckpt-{step}_temp*")):
                        shutil.rmtree(staging, ignore_errors=True)
                    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "",
                                    error.message).strip().splitlines()[0]
                    raise OSError(f"cannot write the checkpoint of step {step} ({reason}); the "
                                  f"previous checkpoint is kept. Received: "
                                  f"{self.workdir!r}") from None
            if step % c.eval_every == 0 or step == target:
                self.validate(step)
        return last

    def validate(self, step: int) -> dict:
        result = evaluate(self.model, self.config, self.validation)
        self.log(f"validation at step {step}: cIoU@0.5 {result['ciou_at_0_5']:.3f}  AUC "
                 f"{result['auc']:.3f}  pointing {result['pointing_game']:.3f}  (mismatched "
                 f"sound: pointing {result['mismatched_sound']['pointing_game']:.3f})")
        with self.writer.as_default(step=step):
            for key in ("ciou_at_0_5", "auc", "mean_ciou", "pointing_game"):
                tf.summary.scalar(f"validation/{key}", result[key])
                tf.summary.scalar(f"validation_mismatched_sound/{key}",
                                  result["mismatched_sound"][key])
            self._image_summaries()
        self.writer.flush()
        return result

    def _image_summaries(self) -> None:
        n = self.config.num_summary_images
        if n == 0:
            return
        batch = next(iter(self.validation.batch(n)))
        matched = predict_maps(self.model, [batch])
        mismatched = predict_maps(self.model, [batch], mismatched=True)
        boxes = batch["boxes"][:, 0]
        tf.summary.image("attention/matching_sound",
                         draw_boxes(overlay(batch["image"], matched["attention"]), boxes),
                         max_outputs=n)
        tf.summary.image("attention/mismatched_sound",
                         draw_boxes(overlay(batch["image"], mismatched["attention"]), boxes),
                         max_outputs=n)
