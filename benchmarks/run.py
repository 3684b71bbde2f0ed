"""Benchmarks of soundloc on the current machine: peak, towers, training, cache, input, serving.

    python -m benchmarks.run [--quick] [--output=benchmarks/results.json]

Prints a table and writes JSON whose `figures` object holds named numbers.
Every figure is the median of `repeats` timed runs after warm-up runs;
ratios are computed from figures of the same invocation.  Each stage runs in
its own subprocess by default (`--isolate`), so its peak resident memory
(`ru_maxrss`) is its own; `--quick` runs the stages in this process instead
(TensorFlow's import alone costs 5-25 s) and resets the peak between stages
through /proc/self/clear_refs, so a stage's peak there includes what earlier
stages still hold.

Why each measurement is shaped the way it is:

* Peak: the best median rate of square tf.linalg.matmul in fp32 and in
  tf.bfloat16 (2 N^3 FLOP each).  A conv tower cannot beat the GEMM kernel
  it lowers to, so "% of peak" is against what TF itself reaches here, not
  against a datasheet number.
* Tower GFLOP/s come from `benchmarks.flops.count_macs` (layer shapes), not
  from a profiler, so they compare with the paper's 31.32 GMAC per image.
* Training steps are fed a fixed in-memory batch (or a cached, repeated
  dataset) so the figure is the step's compute; the input pipeline is
  measured alone and compared with what the fastest training mode consumes.
* bf16 is the product's own flag, `image_tower_precision="bfloat16"` (the
  image tower's convolutions in bf16; localiser and losses in float32), and
  XLA is its `xla_heads` (the Trainer's compiled update on the feature
  cache): the figures are what `tools/train.py` runs.  A variant that fails
  is listed under `skipped` with its error instead of a figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import wave
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STAGES = ("peak", "tower", "cache_build", "train_e2e", "train_live", "train_cache", "pipeline",
          "serving")


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run: `quick` is a smoke test, `full` gives steadier numbers."""

    repeats: int
    warmup: int
    matmul_sizes: tuple[int, ...]
    tower_batch_paper: int
    tower_batch_tiny: int
    live_batch_paper: int
    e2e_batch_tiny: int
    cache_samples_paper: int
    cache_samples_tiny: int
    heads_batch: int
    heads_steps: int
    records_paper: int
    records_tiny: int
    pipeline_batches: int
    serving_calls: int
    serving_batches: tuple[int, ...]
    serving_repeats: int
    cache_warmup: bool
    cache_repeats: int  # timed passes of the cache build (median)
    serving_paper_calls: int  # 0: skip the paper-preset serving comparison


QUICK = Scale(repeats=3, warmup=1, matmul_sizes=(2048,), tower_batch_paper=1,
              tower_batch_tiny=16, live_batch_paper=2, e2e_batch_tiny=16,
              cache_samples_paper=2, cache_samples_tiny=32, heads_batch=30, heads_steps=5,
              records_paper=8, records_tiny=32, pipeline_batches=2, serving_calls=10,
              serving_batches=(8, 32), serving_repeats=2, cache_warmup=False,
              cache_repeats=1, serving_paper_calls=0)
FULL = Scale(repeats=5, warmup=2, matmul_sizes=(1024, 2048, 3072), tower_batch_paper=4,
             tower_batch_tiny=64, live_batch_paper=8, e2e_batch_tiny=32,
             cache_samples_paper=32, cache_samples_tiny=256, heads_batch=30, heads_steps=40,
             records_paper=32, records_tiny=128, pipeline_batches=8, serving_calls=100,
             serving_batches=(8, 32), serving_repeats=5, cache_warmup=True,
             cache_repeats=3, serving_paper_calls=10)

# Every figure a complete run must produce (tests/test_benchmarks.py checks them).
REQUIRED_FIGURES = (
    "peak_fp32_gflops", "peak_bf16_gflops",
    *(f"tower_{p}_{d}_{k}" for p in ("paper", "tiny") for d in ("fp32", "bf16")
      for k in ("images_per_s", "gflops", "pct_of_peak")),
    "tower_paper_gmac_per_image", "tower_tiny_gmac_per_image",
    "audio_tower_paper_gmac_per_clip", "audio_tower_tiny_gmac_per_clip",
    *(f"cache_build_{p}{d}_towers_pct_of_peak" for p in ("paper", "tiny") for d in ("", "_bf16")),
    "train_live_paper_fp32_towers_pct_of_peak", "train_live_paper_bf16_towers_pct_of_peak",
    "paper_10_epoch_speedup_ceiling",
    *(f"cache_build_{p}{d}_images_per_s" for p in ("paper", "tiny")
      for d in ("", "_bf16", "_int8")),
    "cache_build_paper_int8_over_fp32", "cache_build_tiny_int8_over_fp32",
    "cache_build_paper_int8_calibration_s", "cache_build_tiny_int8_calibration_s",
    "cache_paper_bytes_per_sample", "cache_tiny_bytes_per_sample",
    *(f"cache_{p}_{d}_tower_loss_error_ppm" for p in ("paper", "tiny") for d in ("bf16", "int8")),
    *(f"cache_{p}_{d}_{k}" for p in ("paper", "tiny") for d in ("bfloat16", "int8")
      for k in ("bytes_per_sample", "loss_error_ppm")),
    "train_e2e_tiny_fp32_pairs_per_s", "train_e2e_tiny_bf16_pairs_per_s",
    "train_live_paper_fp32_pairs_per_s", "train_live_paper_bf16_pairs_per_s",
    *(f"train_cache_{p}{x}_pairs_per_s" for p in ("paper", "tiny") for x in ("", "_xla")),
    "train_cache_paper_xla_streamed_pairs_per_s", "train_cache_paper_xla_in_memory_pairs_per_s",
    "cache_read_paper_pairs_per_s", "cache_read_tiny_pairs_per_s",
    "pipeline_paper_pairs_per_s", "pipeline_tiny_pairs_per_s",
    "pipeline_paper_over_live_training", "pipeline_tiny_over_e2e_training",
    "cache_read_paper_over_heads_training",
    "paper_10_epoch_speedup_cache_vs_live_fp32", "paper_10_epoch_speedup_bf16_cache_vs_live_fp32",
    "paper_10_epoch_speedup_int8_cache_vs_live_fp32",
    "serving_default_b1_p50_ms", "serving_default_b1_p99_ms",
    "serving_default_b8_pairs_per_s", "serving_default_b32_pairs_per_s",
    "bare_model_b1_p50_ms", "bare_model_b1_p99_ms",
    "bare_model_b8_pairs_per_s", "bare_model_b32_pairs_per_s",
    "rest_b1_p50_ms", "rest_b1_p99_ms", "rest_b8_pairs_per_s", "rest_b32_pairs_per_s",
    "serving_tensors_b1_p50_ms", "serving_tensors_b1_p99_ms",
    "serving_tensors_b8_pairs_per_s", "serving_tensors_b32_pairs_per_s",
    "serving_b1_p50_over_bare", "serving_tensors_b1_p50_over_bare",
    *(f"peak_rss_mb_{s}" for s in STAGES),
)


# ---------------------------------------------------------------------------
# Measuring.


def median_rate(run: Callable[[], Any], units: float, repeats: int, warmup: int) -> float:
    """Median of `units` / seconds over `repeats` calls of `run`, after `warmup` calls."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        rates.append(units / (time.perf_counter() - started))
    return statistics.median(rates)


def latencies_ms(run: Callable[[], Any], calls: int, warmup: int) -> tuple[float, float]:
    """(p50, p99) in milliseconds of `calls` single calls after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return statistics.median(times), p99


def peak_rss_mb() -> float:
    """This process's peak resident memory since start (or since `reset_peak_rss`), in MiB."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        if match:
            return int(match.group(1)) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tower_precision(config, dtype: str):
    """`config` with the image tower in float32 ("fp32") or bfloat16 ("bf16")."""
    return config.replace(image_tower_precision={"fp32": "float32", "bf16": "bfloat16"}[dtype])


class Stage:
    """Collects one stage's figures, notes and skipped variants."""

    def __init__(self, name: str, scale: Scale, workdir: str, log: Callable[[str], None]):
        self.name, self.scale, self.workdir, self.log = name, scale, workdir, log
        self.figures: dict[str, float] = {}
        self.notes: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}

    def put(self, key: str, value: float) -> None:
        self.figures[key] = float(value)
        self.log(f"  {key} = {value:.4g}")

    def attempt(self, key: str, fn: Callable[[], None]) -> None:
        """Runs one variant; a failure is recorded under `skipped`, not raised."""
        try:
            fn()
        except Exception as error:  # a variant that does not run on this stack
            lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
            useful = [ln for ln in lines if not ln.startswith(("in user code", "File ", "["))]
            message = f"{type(error).__name__}: {(useful or lines or [''])[-1][:300]}"
            self.skipped[key] = message
            self.log(f"  {key} skipped: {message}")
            if os.environ.get("SOUNDLOC_BENCH_TRACEBACK"):
                traceback.print_exc()


# ---------------------------------------------------------------------------
# Stages.


def stage_peak(st: Stage) -> None:
    """Best median square matmul rate, fp32 and bf16 (method noted in the results)."""
    import tensorflow as tf

    for dtype, name in ((tf.float32, "fp32"), (tf.bfloat16, "bf16")):
        best, best_n = 0.0, 0
        for n in st.scale.matmul_sizes:
            a = tf.random.normal([n, n], dtype=tf.float32)
            a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
            inner = max(1, int(4e9 // (2 * n ** 3)))  # >= ~4 GFLOP a timed call

            @tf.function
            def chain(a=a, b=b, inner=inner):
                out = tf.zeros([], tf.float32)
                for _ in range(inner):  # unrolled: one graph, no Python between matmuls
                    out += tf.cast(tf.linalg.matmul(a, b)[0, 0], tf.float32)
                return out

            rate = median_rate(lambda: chain().numpy(), 2 * n ** 3 * inner / 1e9,
                               st.scale.repeats, st.scale.warmup)
            if rate > best:
                best, best_n = rate, n
        st.put(f"peak_{name}_gflops", best)
        st.notes[f"peak_{name}_matrix_size"] = best_n
    st.notes["peak_method"] = ("median rate of tf.linalg.matmul of square NxN matrices "
                               f"(N in {list(st.scale.matmul_sizes)}, best N kept), 2N^3 FLOP, "
                               "in one tf.function; bf16 = tf.bfloat16 inputs")


def stage_tower(st: Stage) -> None:
    """Image tower forward, paper (VGG16 at 320, random weights) and tiny, fp32 and bf16."""
    import tensorflow as tf

    from benchmarks.flops import count_macs
    from soundloc_tf.config import get_config
    from soundloc_tf.modeling.models import build_audio_tower, build_image_tower

    for preset, batch in (("paper", st.scale.tower_batch_paper),
                          ("tiny", st.scale.tower_batch_tiny)):
        config = get_config(preset, image_weights="none", audio_weights="none")
        # The cache build and live training run the audio tower too (always float32);
        # derive() counts its work when it rates the towers inside those pipelines.
        st.put(f"audio_tower_{preset}_gmac_per_clip", count_macs(build_audio_tower(config)) / 1e9)
        images = tf.random.uniform([batch, config.image_size, config.image_size, 3])
        for dtype in ("fp32", "bf16"):
            def run(dtype=dtype, config=config, images=images, batch=batch, preset=preset):
                tower = build_image_tower(tower_precision(config, dtype))
                macs = count_macs(tower)
                forward = tf.function(lambda x: tower(x, training=False))
                rate = median_rate(lambda: forward(images).numpy(), batch, st.scale.repeats,
                                   st.scale.warmup)
                st.put(f"tower_{preset}_gmac_per_image", macs / 1e9)
                st.put(f"tower_{preset}_{dtype}_images_per_s", rate)
                st.put(f"tower_{preset}_{dtype}_gflops", rate * 2 * macs / 1e9)
            st.attempt(f"tower_{preset}_{dtype}", run)
        st.notes[f"tower_{preset}_batch"] = batch


def _frozen_config(preset: str, **overrides: Any):
    from soundloc_tf.config import get_config

    return get_config(preset, image_weights="none", audio_weights="none", freeze_image_tower=True,
                      freeze_audio_tower=True, **overrides)


def _cache_dir(st: Stage, preset: str) -> str:
    return os.path.join(st.workdir, f"cache_{preset}")


def stage_cache_build(st: Stage) -> None:
    """write_cache over synthetic scenes: images/s written to disk and bytes per sample."""
    import keras

    from soundloc_tf.dataloaders import data
    from soundloc_tf.modeling import int8_tower
    from soundloc_tf.train import feature_cache
    from soundloc_tf.modeling.models import build_model, split_model

    for preset, count in (("paper", st.scale.cache_samples_paper),
                          ("tiny", st.scale.cache_samples_tiny)):
        config = _frozen_config(preset)
        keras.utils.set_random_seed(0)  # train_cache rebuilds the same towers
        model = build_model(config)
        dataset = data.synthetic_dataset(config, config.train_seed, count=count).cache()
        for _ in dataset:  # scenes generated before timing: the figure is the towers + writes
            pass
        for dtype in ("fp32", "bf16", "int8"):
            if dtype == "int8":
                try:
                    int8_tower.check_supported()
                except ValueError as error:  # its figures are then reported missing
                    st.skipped[f"cache_build_{preset}_int8"] = str(error)
                    st.log(f"  cache_build_{preset}_int8 skipped: {error}")
                    continue
            tower_config = tower_precision(config, "fp32" if dtype == "int8" else dtype)
            image_tower = "int8" if dtype == "int8" else "model"
            built = model
            if dtype == "bf16":  # the same weights, the image tower in bfloat16
                built = build_model(tower_config)
                built.set_weights(model.get_weights())
            suffix = "" if dtype == "fp32" else f"_{dtype}"
            directory = _cache_dir(st, preset) + suffix
            shutil.rmtree(directory, ignore_errors=True)
            if st.scale.cache_warmup:  # one full batch: traces the towers, warms oneDNN
                warm = os.path.join(st.workdir, f"cache_warmup_{preset}")
                shutil.rmtree(warm, ignore_errors=True)
                feature_cache.write_cache(built, tower_config, dataset.take(16), warm,
                                          batch_size=16, image_tower=image_tower)
                shutil.rmtree(warm, ignore_errors=True)
            calibration = 0.0
            if dtype == "int8":  # a fixed cost per cache (16 float32 images), not per sample
                images = next(iter(dataset.batch(int8_tower.CALIBRATION_IMAGES)))["image"]
                started = time.perf_counter()
                int8_tower.calibrate(split_model(built).image, images)
                calibration = time.perf_counter() - started
                st.put(f"cache_build_{preset}_int8_calibration_s", calibration)
            rates = []
            for _ in range(st.scale.cache_repeats):  # the last pass's cache is kept
                shutil.rmtree(directory, ignore_errors=True)
                started = time.perf_counter()
                manifest = feature_cache.write_cache(built, tower_config, dataset, directory,
                                                     batch_size=16, dtype="float16",
                                                     image_tower=image_tower)
                rates.append(count / max(time.perf_counter() - started - calibration, 1e-9))
            st.put(f"cache_build_{preset}{suffix}_images_per_s", statistics.median(rates))
            if dtype == "fp32":
                total = sum(s["bytes"] for s in manifest["shards"])
                st.put(f"cache_{preset}_bytes_per_sample", total / count)
            else:
                _tower_effect(st, preset, dtype, config, _cache_dir(st, preset), directory)
                shutil.rmtree(directory, ignore_errors=True)
        if f"cache_build_{preset}_int8_images_per_s" in st.figures:
            st.put(f"cache_build_{preset}_int8_over_fp32",
                   st.figures[f"cache_build_{preset}_int8_images_per_s"]
                   / st.figures[f"cache_build_{preset}_images_per_s"])
        st.notes[f"cache_{preset}_samples"] = count
        st.notes[f"cache_{preset}_dtype"] = manifest["dtype"]
        st.notes["cache_build_method"] = ("one write_cache pass (float16 features, batch 16) "
                                          "over pre-generated scenes after a one-batch warm-up "
                                          "(full mode) that traces the towers; median of "
                                          f"{st.scale.cache_repeats} passes; "
                                          "_bf16: image_tower_precision=bfloat16, same weights; "
                                          "_int8: image_tower='int8' (int8_tower, calibrated "
                                          f"on the first {int8_tower.CALIBRATION_IMAGES} "
                                          "scenes), same weights; its images/s "
                                          "leave out the calibration, timed apart "
                                          "(_int8_calibration_s) as a cost per cache")
        _cache_dtype_effects(st, preset, model, config, dataset.take(16))


def _tower_effect(st: Stage, preset: str, dtype: str, config, fp32_cache: str,
                  other_cache: str) -> None:
    """Relative change of the loss on one batch when the image tower ran in `dtype`."""
    from soundloc_tf.train import feature_cache
    from soundloc_tf.modeling.models import build_localizer
    from soundloc_tf.train.training import losses_on_features

    localizer = build_localizer(config)
    losses = [float(losses_on_features(config.replace(label_fraction=1.0), localizer, next(iter(
        feature_cache.read_cache(config, directory, training=False).batch(16))))["total"])
        for directory in (fp32_cache, other_cache)]
    st.put(f"cache_{preset}_{dtype}_tower_loss_error_ppm",
           1e6 * abs(losses[1] - losses[0]) / abs(losses[0]))


def _cache_dtype_effects(st: Stage, preset: str, model, config, dataset) -> None:
    """Bytes per sample and the loss's relative error of bfloat16 and int8 caches vs float32."""
    from soundloc_tf.train import feature_cache
    from soundloc_tf.modeling.models import split_model
    from soundloc_tf.train.training import losses_on_features

    losses = {}
    for dtype in ("float32", "bfloat16", "int8"):
        directory = os.path.join(st.workdir, f"cache_{preset}_{dtype}")
        shutil.rmtree(directory, ignore_errors=True)
        manifest = feature_cache.write_cache(model, config, dataset, directory, batch_size=16,
                                             dtype=dtype)
        count = manifest["count"]
        st.put(f"cache_{preset}_{dtype}_bytes_per_sample",
               sum(s["bytes"] for s in manifest["shards"]) / count)
        batch = next(iter(feature_cache.read_cache(config, directory, training=False)
                          .batch(count)))
        losses[dtype] = float(losses_on_features(config.replace(label_fraction=1.0),
                                                 split_model(model).localizer, batch)["total"])
        shutil.rmtree(directory, ignore_errors=True)
    for dtype in ("bfloat16", "int8"):
        st.put(f"cache_{preset}_{dtype}_loss_error_ppm",
               1e6 * abs(losses[dtype] - losses["float32"]) / abs(losses["float32"]))
    st.notes["cache_dtype_method"] = ("the same scenes cached as float32, bfloat16 and int8; "
                                      "relative error of the total loss (unsupervised + "
                                      "supervised on every sample) on one batch vs float32, "
                                      "in parts per million")


def _fixed_batches(config, count: int, batch: int):
    """A small synthetic dataset, cached and repeated: steps see no generation cost."""
    from soundloc_tf.dataloaders import data

    return data.synthetic_dataset(config, config.train_seed, count=count).cache().repeat()


def _trainer(st: Stage, config, tag: str, cache: str | None = None, in_memory: bool = False):
    """A `Trainer` on one device; with `cache`, on those features (`use_feature_cache`),
    streamed from the files or parsed once and held in memory."""
    import tensorflow as tf

    from soundloc_tf.dataloaders import data
    from soundloc_tf.train.training import Trainer

    workdir = tempfile.mkdtemp(prefix=f"trainer-{tag}-", dir=st.workdir)
    strategy = tf.distribute.OneDeviceStrategy(tf.config.list_logical_devices("CPU")[0].name)
    trainer = Trainer(config, workdir, strategy,
                      dataset_fn=lambda start: _fixed_batches(config, config.batch_size,
                                                              config.batch_size),
                      validation=data.synthetic_dataset(config, config.eval_seed, count=2),
                      log=lambda _: None)
    if cache is not None:
        from soundloc_tf.train import feature_cache

        trainer.use_feature_cache(feature_cache.cache_dataset_fn(config, cache, in_memory))
    return trainer


def _trainer_rate(st: Stage, trainer, steps: int, dataset=None) -> float:
    """Pairs/s of `Trainer`'s own distributed step over `dataset` (default: its own)."""
    iterator = iter(trainer.strategy.experimental_distribute_dataset(
        dataset if dataset is not None else trainer.train_dataset()))

    def run():
        for _ in range(steps):
            terms, _ = trainer.train_step(iterator)
        float(terms["total"])

    return median_rate(run, steps * trainer.global_batch, st.scale.repeats, st.scale.warmup)


def stage_train_e2e(st: Stage) -> None:
    """End-to-end training (both towers trained) on the tiny preset."""
    from soundloc_tf.config import get_config

    for dtype in ("fp32", "bf16"):
        def run(dtype=dtype):
            config = tower_precision(get_config("tiny", batch_size=st.scale.e2e_batch_tiny),
                                     dtype)
            rate = _trainer_rate(st, _trainer(st, config, f"e2e-{dtype}"), 2)
            st.put(f"train_e2e_tiny_{dtype}_pairs_per_s", rate)
        st.attempt(f"train_e2e_tiny_{dtype}", run)
    st.notes["train_e2e_tiny_batch"] = st.scale.e2e_batch_tiny


def stage_train_live(st: Stage) -> None:
    """Frozen towers computed live every step (paper preset, random VGG16 weights)."""
    for dtype in ("fp32", "bf16"):
        def run(dtype=dtype):
            config = tower_precision(_frozen_config("paper", batch_size=st.scale.live_batch_paper),
                                     dtype)
            rate = _trainer_rate(st, _trainer(st, config, f"live-{dtype}"), 1)
            st.put(f"train_live_paper_{dtype}_pairs_per_s", rate)
        st.attempt(f"train_live_paper_{dtype}", run)
    st.notes["train_live_paper_batch"] = st.scale.live_batch_paper


def stage_train_cache(st: Stage) -> None:
    """The Trainer's update on cached features, with and without XLA; the cache's reader."""
    from soundloc_tf.train import feature_cache

    batch_size, steps = st.scale.heads_batch, st.scale.heads_steps
    for preset in ("paper", "tiny"):
        directory = _cache_dir(st, preset)
        if not os.path.exists(directory):
            raise RuntimeError(f"stage cache_build must run first. Missing: {directory!r}")
        config = _frozen_config(preset, batch_size=batch_size)

        # The cache's own read pipeline (parse + 16-bit -> float32), alone.
        iterator = iter(feature_cache.read_cache(config, directory, training=True)
                        .batch(batch_size, drop_remainder=True).prefetch(2))

        def read(n=max(4, steps), iterator=iterator):
            for _ in range(n):
                next(iterator)
        st.put(f"cache_read_{preset}_pairs_per_s",
               median_rate(read, max(4, steps) * batch_size, st.scale.repeats, 1))

        for xla in (False, True):
            key = f"train_cache_{preset}{'_xla' if xla else ''}"

            def run(xla=xla, key=key, config=config, directory=directory, preset=preset):
                trainer = _trainer(st, config.replace(xla_heads=xla), key, cache=directory)
                if trainer.xla_update != xla:
                    raise RuntimeError(f"xla_heads={xla} but the Trainer's update is "
                                       f"{'' if trainer.xla_update else 'not '}compiled")
                # One batch from the cache, held in memory: the update alone.
                fixed = trainer.train_dataset().take(1).cache().repeat()
                st.put(f"{key}_pairs_per_s", _trainer_rate(st, trainer, steps, fixed))
                if xla and preset == "paper":
                    # Streamed from the cache files: reader and update share the cores.
                    st.put(f"{key}_streamed_pairs_per_s", _trainer_rate(st, trainer, steps))
                    # Parsed once and held in memory (--cache_in_memory, auto when it
                    # fits): a shuffle and a batch copy per step.
                    held = _trainer(st, config.replace(xla_heads=True), f"{key}-memory",
                                    cache=directory, in_memory=True)
                    st.put(f"{key}_in_memory_pairs_per_s", _trainer_rate(st, held, steps))
                    _torch_comparison(st, trainer, fixed)
            st.attempt(key, run)
    st.notes["train_cache_batch"] = batch_size
    st.notes["train_cache_method"] = ("Trainer.train_step after use_feature_cache, on "
                                      "one batch from the float16 cache held in memory; "
                                      "_xla: xla_heads=True (the update compiled with XLA); "
                                      "_streamed: the same Trainer reading the cache files; "
                                      "_in_memory: reading them parsed once into RAM")


def _torch_comparison(st: Stage, trainer, fixed) -> None:
    """soundloc's compiled heads step and the PyTorch reference's variants on the same
    cached batch, their timed repetitions interleaved so load on the machine hits all.
    Without a PyTorch environment, or when it fails, the note (and the table) says why."""
    from benchmarks import torch_compare

    python = torch_compare.torch_python()
    if python is None:
        st.notes["torch_reference"] = ("not run: no PyTorch environment (--torch_python or "
                                       f"${torch_compare.TORCH_PYTHON_ENV})")
        return
    try:
        _time_against_torch(st, trainer, fixed, python)
    except Exception as error:  # a broken or missing environment: soundloc's figures stay
        message = f"{type(error).__name__}: {str(error)[:300]}"
        st.notes["torch_reference"] = f"failed ({python}): {message}"
        st.skipped["heads_torch"] = message
        st.log(f"  heads_torch skipped: {message}")


def _time_against_torch(st: Stage, trainer, fixed, python: str) -> None:
    from benchmarks import torch_compare
    from benchmarks.flops import heads_update_flops

    steps, batch_size = st.scale.heads_steps, trainer.global_batch
    batch = next(iter(fixed))
    inputs = tempfile.mkdtemp(prefix="torch-", dir=st.workdir)
    expected = torch_compare.write_inputs(trainer.config, trainer.model.get_layer("localizer"),
                                          batch, trainer.step, inputs)
    iterator = iter(trainer.strategy.experimental_distribute_dataset(fixed))

    terms_holder: list[float] = []

    def soundloc() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            terms, _ = trainer.train_step(iterator)
        terms_holder.append(float(terms["total"]))
        return time.perf_counter() - started

    with torch_compare.TorchReference(python, inputs) as reference:
        errors = torch_compare.relative_errors(reference, expected)
        timers = {"soundloc": soundloc,
                  **{f"torch_{v}": (lambda v=v: reference.seconds(v, steps))
                     for v in torch_compare.VARIANTS}}
        seconds: dict[str, list[float]] = {name: [] for name in timers}
        for repeat in range(st.scale.warmup + st.scale.repeats):
            for name, timer in timers.items():
                # Idle worker threads of the other runtime spin for a while before they
                # sleep; a pause keeps them off the cores the timed one needs.
                time.sleep(0.3)
                elapsed = timer()
                if repeat >= st.scale.warmup:
                    seconds[name].append(elapsed)
        info = {**reference.info, "last_loss": {"soundloc": float(terms_holder[-1]),
                                                 **reference.last_loss}}
    for name, values in seconds.items():
        st.put(f"heads_{name}_pairs_per_s", steps * batch_size / statistics.median(values))
    # In parts per million: results.json rounds figures to 4 decimals.
    st.put("heads_torch_loss_error_ppm", 1e6 * max(errors["as_written"], errors["tuned"]))
    st.put("heads_torch_authors_loss_error_ppm", 1e6 * errors["as_written_authors_loss"])
    st.put("heads_gflop_per_pair", heads_update_flops(trainer.config, batch_size) / 1e9)
    st.put("heads_authors_gflop_per_pair", heads_update_flops(
        torch_compare.authors_config(trainer.config), batch_size) / 1e9)
    failed = {v: e for v, e in errors.items() if e > torch_compare.LOSS_TOLERANCE}
    st.notes["torch_reference"] = {
        **info, "loss_tolerance": torch_compare.LOSS_TOLERANCE,
        "loss_parity": "ok" if not failed else f"FAILED {failed}",
        "method": ("paper preset, batch of the float16 cache held in memory; soundloc: the "
                   "Trainer's XLA-compiled update; PyTorch: benchmarks/torch_reference.py "
                   f"in its own environment; {steps} steps a repetition, soundloc and each "
                   "PyTorch variant interleaved, median of the repetitions")}
    if failed:
        st.skipped["torch_loss_parity"] = f"PyTorch's loss differs from soundloc's: {failed}"


def _write_synthetic_records(config, directory: str, count: int) -> None:
    """Synthetic scenes -> records (JPEG images, int16 audio), as an importer writes them."""
    from soundloc_tf.dataloaders import data, records

    def samples():
        for i, s in enumerate(data.synthetic_dataset(config, config.train_seed, count=count)):
            yield {"image": s["image"].numpy(), "waveform": s["waveform"].numpy(),
                   "sample_rate": config.sample_rate, "boxes": s["boxes"].numpy(),
                   "labeled": bool(s["labeled"].numpy()), "class_id": int(s["class_id"]),
                   "id": f"bench-{i}"}
    shutil.rmtree(directory, ignore_errors=True)
    records.write_records(samples(), directory, sample_rate=config.sample_rate,
                          clip_seconds=config.clip_seconds, source="benchmark",
                          samples_per_shard=max(1, count // 4))


def stage_pipeline(st: Stage) -> None:
    """read_records(training=True): parse, JPEG decode, crop/flip, resize, batch; pairs/s."""
    from soundloc_tf.dataloaders import records
    from soundloc_tf.config import get_config

    for preset, count in (("paper", st.scale.records_paper), ("tiny", st.scale.records_tiny)):
        config = get_config(preset, image_weights="none", audio_weights="none")
        directory = os.path.join(st.workdir, f"records_{preset}")
        _write_synthetic_records(config, directory, count)
        dataset = records.read_records(config, directory, training=True)
        iterator = iter(dataset.batch(config.batch_size, drop_remainder=True)
                        .prefetch(2))
        n = st.scale.pipeline_batches

        def run(iterator=iterator, n=n):
            for _ in range(n):
                next(iterator)
        st.put(f"pipeline_{preset}_pairs_per_s",
               median_rate(run, n * config.batch_size, st.scale.repeats, st.scale.warmup))
        st.notes[f"pipeline_{preset}_records"] = count
        st.notes[f"pipeline_{preset}_batch"] = config.batch_size


def _wav_bytes(samples, rate: int) -> bytes:
    import numpy as np

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def stage_serving(st: Stage) -> None:
    """Exported tiny model: serving_default, the bare Keras call, and the dev REST server."""
    import keras
    import numpy as np
    import tensorflow as tf

    from soundloc_tf.serving.client import localize_request
    from soundloc_tf.serving.dev_server import DevServer
    from soundloc_tf.dataloaders import data, records
    from soundloc_tf.inference import export, signatures
    from soundloc_tf.config import get_config
    from soundloc_tf.modeling.models import build_model

    config = get_config("tiny")
    keras.utils.set_random_seed(0)
    model = build_model(config)
    base = os.path.join(st.workdir, "exports")
    shutil.rmtree(base, ignore_errors=True)
    version_dir = export.export_model(model, config, base, version=1)
    loaded = tf.saved_model.load(version_dir)
    signature = loaded.signatures[signatures.BYTES_SIGNATURE]
    tensors_signature = loaded.signatures[signatures.TENSORS_SIGNATURE]

    scenes = list(data.synthetic_dataset(config, config.eval_seed, count=4))
    image_files = [records.encode_image(s["image"].numpy()) for s in scenes]
    wav_files = [_wav_bytes(s["waveform"].numpy(), config.sample_rate) for s in scenes]
    images = np.stack([s["image"].numpy() for s in scenes])
    waves = np.stack([s["waveform"].numpy() for s in scenes])
    bare = tf.function(lambda i, w: model({"image": i, "waveform": w}, training=False))
    calls, warm = st.scale.serving_calls, max(2, st.scale.warmup)

    def pick(n, items):
        return [items[i % len(items)] for i in range(n)]

    def saved(n):
        i, w = tf.constant(pick(n, image_files)), tf.constant(pick(n, wav_files))
        return lambda: signature(image_bytes=i, wav_bytes=w)["score"].numpy()

    def saved_tensors(n):
        i = tf.constant(np.take(images, np.arange(n) % len(images), axis=0))
        w = tf.constant(np.take(waves, np.arange(n) % len(waves), axis=0))
        return lambda: tensors_signature(image=i, waveform=w)["score"].numpy()

    def keras_call(n):
        i = tf.constant(np.take(images, np.arange(n) % len(images), axis=0))
        w = tf.constant(np.take(waves, np.arange(n) % len(waves), axis=0))
        return lambda: bare(i, w)["score"].numpy()

    server = DevServer(os.path.join(base, "soundloc"), port=0, quiet=True).start()
    try:
        url = f"{server.url}/v1/models/soundloc:predict"

        def rest(n):
            body = json.dumps(localize_request(pick(n, image_files), pick(n, wav_files),
                                               "row")).encode()

            def post():
                request = urllib.request.Request(url, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as response:
                    answer = json.loads(response.read())
                if len(answer["predictions"]) != n:
                    raise RuntimeError(f"the server answered {len(answer['predictions'])} "
                                       f"predictions for {n} pairs")
            return post

        for name, make in (("serving_default", saved), ("serving_tensors", saved_tensors),
                           ("bare_model", keras_call), ("rest", rest)):
            p50, p99 = latencies_ms(make(1), calls, warm)
            st.put(f"{name}_b1_p50_ms", p50)
            st.put(f"{name}_b1_p99_ms", p99)
            for n in st.scale.serving_batches:
                st.put(f"{name}_b{n}_pairs_per_s",
                       median_rate(make(n), n, st.scale.serving_repeats, 1))
    finally:
        server.stop()
    st.notes["serving_model"] = ("tiny preset, random weights, exported by "
                                 "soundloc_tf.inference.export")
    if st.scale.serving_paper_calls:
        _serving_paper(st, base)


def _serving_paper(st: Stage, base: str) -> None:
    """serving_tensors vs the bare call at batch 1 for the paper preset (VGG16 at 320x320).

    The signatures add a fixed tail (heat map at 224x224, the region box) whose cost is
    large next to the tiny network and small next to VGG16; this measures the latter.
    """
    import keras
    import tensorflow as tf

    from soundloc_tf.dataloaders import data
    from soundloc_tf.inference import export, signatures
    from soundloc_tf.config import get_config
    from soundloc_tf.modeling.models import build_model

    config = get_config("paper", image_weights="none", audio_weights="none")
    keras.utils.set_random_seed(0)
    model = build_model(config)
    version_dir = export.export_model(model, config, base, model_name="soundloc_paper",
                                      version=1)
    signature = tf.saved_model.load(version_dir).signatures[signatures.TENSORS_SIGNATURE]
    scene = next(iter(data.synthetic_dataset(config, config.eval_seed, count=1).batch(1)))
    image, waveform = scene["image"], scene["waveform"]
    bare = tf.function(lambda i, w: model({"image": i, "waveform": w}, training=False))
    calls = st.scale.serving_paper_calls
    for name, call in (("paper_serving_tensors",
                        lambda: signature(image=image, waveform=waveform)["score"].numpy()),
                       ("paper_bare_model", lambda: bare(image, waveform)["score"].numpy())):
        p50, p99 = latencies_ms(call, calls, 2)
        st.put(f"{name}_b1_p50_ms", p50)
        st.put(f"{name}_b1_p99_ms", p99)
    st.notes["serving_paper_model"] = "paper preset (random weights), serving_tensors, batch 1"
    st.notes["serving_latency_calls"] = calls


STAGE_FUNCTIONS: dict[str, Callable[[Stage], None]] = {
    "peak": stage_peak, "tower": stage_tower, "cache_build": stage_cache_build,
    "train_e2e": stage_train_e2e, "train_live": stage_train_live,
    "train_cache": stage_train_cache, "pipeline": stage_pipeline, "serving": stage_serving,
}


# ---------------------------------------------------------------------------
# Orchestration.


def configure_threads(intra: int, inter: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as error:  # TF already initialised (e.g. inside pytest)
        print(f"note: thread settings unchanged ({error}); the results record the actual ones",
              file=sys.stderr)


def run_stage(name: str, scale: Scale, workdir: str, log: Callable[[str], None]) -> dict:
    """Runs one stage in this process; returns its figures, notes, skipped, time and peak."""
    st = Stage(name, scale, workdir, log)
    reset_peak_rss()
    started = time.perf_counter()
    STAGE_FUNCTIONS[name](st)
    st.figures[f"peak_rss_mb_{name}"] = peak_rss_mb()
    return {"figures": st.figures, "notes": st.notes, "skipped": st.skipped,
            "seconds": round(time.perf_counter() - started, 2)}


def machine_info(args: argparse.Namespace) -> dict:
    import keras
    import tensorflow as tf

    flags = ""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
        flags = re.search(r"flags\s*:\s*(.*)", text).group(1)
    except (OSError, AttributeError):
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")
    try:
        load = os.getloadavg()
    except OSError:
        load = (-1.0, -1.0, -1.0)
    return {
        "cpu": model, "cpus": os.cpu_count(),
        "cpu_flags": [f for f in wanted if f in flags.split()],
        "platform": platform.platform(), "python": platform.python_version(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86)"),
        "threads": {"intra_op": args.intra_op_threads, "inter_op": args.inter_op_threads,
                    "tf_intra_op_setting": tf.config.threading.get_intra_op_parallelism_threads(),
                    "tf_inter_op_setting": tf.config.threading.get_inter_op_parallelism_threads()},
        "load_average_at_start": [round(x, 2) for x in load],
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def _towers_seconds(f: dict[str, float], preset: str, image_gflops: float | None) -> float | None:
    """Seconds per sample of both towers: the image tower at `image_gflops`, the float32
    audio tower at the fp32 peak (None where a figure is missing)."""
    image_gmac = f.get(f"tower_{preset}_gmac_per_image")
    audio_gmac = f.get(f"audio_tower_{preset}_gmac_per_clip")
    if not (image_gmac and audio_gmac and image_gflops and f.get("peak_fp32_gflops")):
        return None
    return 2 * image_gmac / image_gflops + 2 * audio_gmac / f["peak_fp32_gflops"]


def derive(figures: dict[str, float]) -> None:
    """Ratios and targets computed from figures of the same run."""
    f = figures
    for preset in ("paper", "tiny"):
        for dtype in ("fp32", "bf16"):
            rate = f.get(f"tower_{preset}_{dtype}_gflops")
            peak = f.get(f"peak_{dtype}_gflops")
            if rate and peak:
                f[f"tower_{preset}_{dtype}_pct_of_peak"] = 100.0 * rate / peak
    # Both towers inside the pipelines, against the time they would take at this run's
    # peaks (image tower at the fp32 or bf16 peak, audio tower at the fp32 one): the
    # cache build and live training run both for every sample, data loading and writes
    # included.
    for preset in ("paper", "tiny"):
        for dtype, suffix in (("fp32", ""), ("bf16", "_bf16")):
            ideal = _towers_seconds(f, preset, f.get(f"peak_{dtype}_gflops"))
            if ideal is None:
                continue
            build = f.get(f"cache_build_{preset}{suffix}_images_per_s")
            if build:
                f[f"cache_build_{preset}{suffix}_towers_pct_of_peak"] = 100.0 * ideal * build
            live_rate = f.get(f"train_live_{preset}_{dtype}_pairs_per_s")
            if live_rate:
                f[f"train_live_{preset}_{dtype}_towers_pct_of_peak"] = 100.0 * ideal * live_rate
    live = [f[k] for k in ("train_live_paper_fp32_pairs_per_s",
                           "train_live_paper_bf16_pairs_per_s") if k in f]
    if live and "pipeline_paper_pairs_per_s" in f:
        f["pipeline_paper_over_live_training"] = f["pipeline_paper_pairs_per_s"] / max(live)
    e2e = [f[k] for k in ("train_e2e_tiny_fp32_pairs_per_s", "train_e2e_tiny_bf16_pairs_per_s")
           if k in f]
    if e2e and "pipeline_tiny_pairs_per_s" in f:
        f["pipeline_tiny_over_e2e_training"] = f["pipeline_tiny_pairs_per_s"] / max(e2e)
    heads = [f[k] for k in ("train_cache_paper_pairs_per_s", "train_cache_paper_xla_pairs_per_s")
             if k in f]
    if heads and "cache_read_paper_pairs_per_s" in f:
        f["cache_read_paper_over_heads_training"] = f["cache_read_paper_pairs_per_s"] / max(heads)
    # 10 epochs of N pairs: live = 10 N / live_fp32; cached = N / build + 10 N / training.
    # Training reads the cache as `--cache_in_memory=auto` would: 10k paper pairs (4 GB in
    # float16) are held in memory, 144k (59 GB) streamed from the files; each falls back
    # to the fastest update alone where that variant was not measured. The speed-up
    # figures are for 10k pairs.
    streamed = f.get("train_cache_paper_xla_streamed_pairs_per_s") or (max(heads) if heads
                                                                       else None)
    held = f.get("train_cache_paper_xla_in_memory_pairs_per_s") or streamed
    if streamed and "train_live_paper_fp32_pairs_per_s" in f:
        live_time = 10.0 / f["train_live_paper_fp32_pairs_per_s"]
        for build, tag in (("cache_build_paper_images_per_s", ""),
                           ("cache_build_paper_bf16_images_per_s", "bf16_"),
                           ("cache_build_paper_int8_images_per_s", "int8_")):
            if build not in f:
                continue
            fixed = f.get("cache_build_paper_int8_calibration_s", 0.0) if tag == "int8_" else 0.0
            for pairs, size, training in ((10_000, "10k", held), (144_000, "144k", streamed)):
                cache_time = 1.0 / f[build] + 10.0 / training + fixed / pairs
                if size == "10k":
                    f[f"paper_10_epoch_speedup_{tag}cache_vs_live_fp32"] = live_time / cache_time
                # Projected wall time of 10 epochs (hours), cache build included.
                f[f"paper_10_epochs_{size}_live_fp32_hours"] = pairs * live_time / 3600.0
                f[f"paper_10_epochs_{size}_{tag}cached_hours"] = pairs * cache_time / 3600.0
        # The most a cache can give here: one pass of the towers per sample, the image
        # tower at the best bf16 rate this run measured (peak or the isolated tower) and
        # the float32 audio tower at the fp32 peak, then 10 epochs of the heads.
        best_bf16 = max(f.get("peak_bf16_gflops", 0.0), f.get("tower_paper_bf16_gflops", 0.0))
        ideal = _towers_seconds(f, "paper", best_bf16)
        if ideal is not None:
            f["paper_10_epoch_speedup_ceiling"] = live_time / (ideal + 10.0 / held)
    # The heads step against PyTorch's (same batch, same loss, one run) and the fp32 peak;
    # the as-written variant with the authors' own loss does its own objective's work.
    soundloc = f.get("heads_soundloc_pairs_per_s")
    for variant in ("as_written", "as_written_authors_loss", "tuned"):
        rate = f.get(f"heads_torch_{variant}_pairs_per_s")
        if soundloc and rate:
            f[f"heads_soundloc_over_torch_{variant}"] = soundloc / rate
    if f.get("peak_fp32_gflops"):
        for name, work in (("soundloc", "heads_gflop_per_pair"),
                           ("torch_as_written", "heads_gflop_per_pair"),
                           ("torch_as_written_authors_loss", "heads_authors_gflop_per_pair"),
                           ("torch_tuned", "heads_gflop_per_pair")):
            rate = f.get(f"heads_{name}_pairs_per_s")
            if rate and work in f:
                f[f"heads_{name}_pct_of_peak"] = (100.0 * rate * f[work]
                                                  / f["peak_fp32_gflops"])
    if "serving_default_b1_p50_ms" in f and "bare_model_b1_p50_ms" in f:
        f["serving_b1_p50_over_bare"] = f["serving_default_b1_p50_ms"] / f["bare_model_b1_p50_ms"]
    if "paper_serving_tensors_b1_p50_ms" in f and "paper_bare_model_b1_p50_ms" in f:
        f["paper_serving_tensors_b1_p50_over_bare"] = (f["paper_serving_tensors_b1_p50_ms"]
                                                       / f["paper_bare_model_b1_p50_ms"])
    if "serving_tensors_b1_p50_ms" in f and "bare_model_b1_p50_ms" in f:
        f["serving_tensors_b1_p50_over_bare"] = (f["serving_tensors_b1_p50_ms"]
                                                 / f["bare_model_b1_p50_ms"])


TABLE_ROWS = (
    ("Peak matmul fp32 / bf16 (GFLOP/s)", ("peak_fp32_gflops", "peak_bf16_gflops")),
    ("Tower paper fp32: img/s, GFLOP/s, % peak",
     ("tower_paper_fp32_images_per_s", "tower_paper_fp32_gflops", "tower_paper_fp32_pct_of_peak")),
    ("Tower paper bf16: img/s, GFLOP/s, % peak",
     ("tower_paper_bf16_images_per_s", "tower_paper_bf16_gflops", "tower_paper_bf16_pct_of_peak")),
    ("Tower tiny fp32: img/s, GFLOP/s, % peak",
     ("tower_tiny_fp32_images_per_s", "tower_tiny_fp32_gflops", "tower_tiny_fp32_pct_of_peak")),
    ("Tower tiny bf16: img/s, GFLOP/s, % peak",
     ("tower_tiny_bf16_images_per_s", "tower_tiny_bf16_gflops", "tower_tiny_bf16_pct_of_peak")),
    ("Train end-to-end tiny fp32 / bf16 (pairs/s)",
     ("train_e2e_tiny_fp32_pairs_per_s", "train_e2e_tiny_bf16_pairs_per_s")),
    ("Train frozen live paper fp32 / bf16 (pairs/s)",
     ("train_live_paper_fp32_pairs_per_s", "train_live_paper_bf16_pairs_per_s")),
    ("Train from cache paper: update / +XLA; +XLA streamed from files / held in memory "
     "(pairs/s)",
     ("train_cache_paper_pairs_per_s", "train_cache_paper_xla_pairs_per_s",
      "train_cache_paper_xla_streamed_pairs_per_s",
      "train_cache_paper_xla_in_memory_pairs_per_s")),
    ("Heads step paper, batch 30, one run: soundloc (XLA) / PyTorch as written / as written "
     "with the authors' loss / best-tuned (pairs/s)",
     ("heads_soundloc_pairs_per_s", "heads_torch_as_written_pairs_per_s",
      "heads_torch_as_written_authors_loss_pairs_per_s", "heads_torch_tuned_pairs_per_s")),
    ("Heads step: soundloc over PyTorch as written / as written, authors' loss / best-tuned "
     "(x)",
     ("heads_soundloc_over_torch_as_written", "heads_soundloc_over_torch_as_written_authors_loss",
      "heads_soundloc_over_torch_tuned")),
    ("Heads step % of fp32 peak: soundloc / PyTorch as written / authors' loss / best-tuned",
     ("heads_soundloc_pct_of_peak", "heads_torch_as_written_pct_of_peak",
      "heads_torch_as_written_authors_loss_pct_of_peak", "heads_torch_tuned_pct_of_peak")),
    ("Heads step loss, PyTorch vs soundloc, relative error: configured / authors' loss "
     "(ppm; tolerance 100)",
     ("heads_torch_loss_error_ppm", "heads_torch_authors_loss_error_ppm")),
    ("Train from cache tiny: update / +XLA (pairs/s)",
     ("train_cache_tiny_pairs_per_s", "train_cache_tiny_xla_pairs_per_s")),
    ("Cache build paper: img/s fp32 / bf16 / int8 tower, int8 over fp32 (x), bytes/sample",
     ("cache_build_paper_images_per_s", "cache_build_paper_bf16_images_per_s",
      "cache_build_paper_int8_images_per_s", "cache_build_paper_int8_over_fp32",
      "cache_paper_bytes_per_sample")),
    ("Both towers inside the pipeline, % of peak: paper cache build fp32 / bf16, "
     "live training fp32 / bf16",
     ("cache_build_paper_towers_pct_of_peak", "cache_build_paper_bf16_towers_pct_of_peak",
      "train_live_paper_fp32_towers_pct_of_peak", "train_live_paper_bf16_towers_pct_of_peak")),
    ("Cache build tiny: img/s fp32 / bf16 / int8 tower, int8 over fp32 (x), bytes/sample",
     ("cache_build_tiny_images_per_s", "cache_build_tiny_bf16_images_per_s",
      "cache_build_tiny_int8_images_per_s", "cache_build_tiny_int8_over_fp32",
      "cache_tiny_bytes_per_sample")),
    ("Loss change from a bf16 / int8 image tower, paper (ppm)",
     ("cache_paper_bf16_tower_loss_error_ppm", "cache_paper_int8_tower_loss_error_ppm")),
    ("Loss change from a bf16 / int8 image tower, tiny (ppm)",
     ("cache_tiny_bf16_tower_loss_error_ppm", "cache_tiny_int8_tower_loss_error_ppm")),
    ("Cache paper bytes/sample fp32 / bf16 / int8",
     ("cache_paper_float32_bytes_per_sample", "cache_paper_bfloat16_bytes_per_sample",
      "cache_paper_int8_bytes_per_sample")),
    ("Cache paper loss error bf16 / int8 vs fp32 (ppm)",
     ("cache_paper_bfloat16_loss_error_ppm", "cache_paper_int8_loss_error_ppm")),
    ("Cache tiny loss error bf16 / int8 vs fp32 (ppm)",
     ("cache_tiny_bfloat16_loss_error_ppm", "cache_tiny_int8_loss_error_ppm")),
    ("Cache read paper / tiny (pairs/s)",
     ("cache_read_paper_pairs_per_s", "cache_read_tiny_pairs_per_s")),
    ("Input pipeline paper / tiny (pairs/s)",
     ("pipeline_paper_pairs_per_s", "pipeline_tiny_pairs_per_s")),
    ("Pipeline / fastest live paper, / e2e tiny (x)",
     ("pipeline_paper_over_live_training", "pipeline_tiny_over_e2e_training")),
    ("Cache read / fastest heads update, paper (x)", ("cache_read_paper_over_heads_training",)),
    ("10 epochs of 10k paper pairs, speed-up vs live fp32: fp32 / bf16 / int8-tower cache "
     "build; ceiling of a bf16 tower (x)",
     ("paper_10_epoch_speedup_cache_vs_live_fp32",
      "paper_10_epoch_speedup_bf16_cache_vs_live_fp32",
      "paper_10_epoch_speedup_int8_cache_vs_live_fp32", "paper_10_epoch_speedup_ceiling")),
    ("10 epochs of 10k pairs, live fp32 / cached / bf16 / int8 cached (hours)",
     ("paper_10_epochs_10k_live_fp32_hours", "paper_10_epochs_10k_cached_hours",
      "paper_10_epochs_10k_bf16_cached_hours", "paper_10_epochs_10k_int8_cached_hours")),
    ("10 epochs of 144k pairs, live fp32 / cached / bf16 / int8 cached (hours)",
     ("paper_10_epochs_144k_live_fp32_hours", "paper_10_epochs_144k_cached_hours",
      "paper_10_epochs_144k_bf16_cached_hours", "paper_10_epochs_144k_int8_cached_hours")),
    ("serving_default b1 p50 / p99 (ms)", ("serving_default_b1_p50_ms",
                                            "serving_default_b1_p99_ms")),
    ("serving_default b8 / b32 (pairs/s)", ("serving_default_b8_pairs_per_s",
                                             "serving_default_b32_pairs_per_s")),
    ("serving_tensors b1 p50 / p99 (ms)", ("serving_tensors_b1_p50_ms",
                                            "serving_tensors_b1_p99_ms")),
    ("serving_tensors b8 / b32 (pairs/s)", ("serving_tensors_b8_pairs_per_s",
                                             "serving_tensors_b32_pairs_per_s")),
    ("Bare Keras b1 p50 / p99 (ms)", ("bare_model_b1_p50_ms", "bare_model_b1_p99_ms")),
    ("Bare Keras b8 / b32 (pairs/s)", ("bare_model_b8_pairs_per_s", "bare_model_b32_pairs_per_s")),
    ("REST b1 p50 / p99 (ms)", ("rest_b1_p50_ms", "rest_b1_p99_ms")),
    ("REST b8 / b32 (pairs/s)", ("rest_b8_pairs_per_s", "rest_b32_pairs_per_s")),
    ("serving_default / serving_tensors b1 p50 over bare (x)",
     ("serving_b1_p50_over_bare", "serving_tensors_b1_p50_over_bare")),
    ("Paper preset b1 p50: serving_tensors / bare (ms), ratio (x)",
     ("paper_serving_tensors_b1_p50_ms", "paper_bare_model_b1_p50_ms",
      "paper_serving_tensors_b1_p50_over_bare")),
    ("Peak RSS MiB: peak, tower, cache_build, train_e2e",
     ("peak_rss_mb_peak", "peak_rss_mb_tower", "peak_rss_mb_cache_build",
      "peak_rss_mb_train_e2e")),
    ("Peak RSS MiB: train_live, train_cache, pipeline, serving",
     ("peak_rss_mb_train_live", "peak_rss_mb_train_cache", "peak_rss_mb_pipeline",
      "peak_rss_mb_serving")),
)


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(figures: dict[str, float], notes: dict[str, Any] | None = None) -> str:
    """A Markdown table, one row per measurement group; says why PyTorch is missing."""
    lines = ["| Measurement | Value(s) |", "|---|---|"]
    for label, keys in TABLE_ROWS:
        lines.append(f"| {label} | {' / '.join(format_value(figures.get(k)) for k in keys)} |")
    torch_note = (notes or {}).get("torch_reference")
    if isinstance(torch_note, str):
        lines.append(f"| PyTorch reference | {torch_note} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measures soundloc's throughput, latency and memory on this machine.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke scale (every figure, noisy); stages in-process")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results.json"),
                        help="JSON results path (default %(default)s)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated subset of: " + ", ".join(STAGES))
    isolate = parser.add_mutually_exclusive_group()
    isolate.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                         help="each stage in its own subprocess (default without --quick)")
    isolate.add_argument("--no-isolate", dest="isolate", action="store_false",
                         help="all stages in this process (default with --quick)")
    parser.add_argument("--intra_op_threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--inter_op_threads", type=int, default=1)
    parser.add_argument("--workdir", default=None,
                        help="scratch directory (default: a temporary one, removed after)")
    parser.add_argument("--torch_python", default=None,
                        help="Python of an environment with torch: times the PyTorch reference "
                             "heads step beside soundloc's (default: $SOUNDLOC_TORCH_PYTHON)")
    parser.add_argument("--stage_output", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"error: unknown stage(s) {unknown}; choose from {list(STAGES)}", file=sys.stderr)
        return 2
    if "train_cache" in stages and "cache_build" not in stages and args.workdir is None:
        print("error: train_cache reads the caches of cache_build; run both or pass the "
              "--workdir of an earlier run", file=sys.stderr)
        return 2
    if args.intra_op_threads < 1 or args.inter_op_threads < 1:
        print("error: thread counts must be >= 1", file=sys.stderr)
        return 2
    if args.torch_python:  # stage subprocesses inherit it
        os.environ["SOUNDLOC_TORCH_PYTHON"] = args.torch_python
    scale = QUICK if args.quick else FULL
    log = lambda message: print(message, flush=True)  # noqa: E731

    if args.stage_output:  # child process: one stage, results to a file
        configure_threads(args.intra_op_threads, args.inter_op_threads)
        result = run_stage(stages[0], scale, args.workdir, log)
        with open(args.stage_output, "w") as f:
            json.dump(result, f)
        return 0

    isolate = (not args.quick) if args.isolate is None else args.isolate
    workdir = args.workdir or tempfile.mkdtemp(prefix="soundloc-bench-")
    os.makedirs(workdir, exist_ok=True)
    if not isolate:
        configure_threads(args.intra_op_threads, args.inter_op_threads)
    started = time.perf_counter()
    figures: dict[str, float] = {}
    report: dict[str, Any] = {"stages": {}, "notes": {}, "skipped": {}}
    try:
        for name in stages:
            log(f"[{name}]")
            if isolate:
                out = os.path.join(workdir, f"stage-{name}.json")
                command = [sys.executable, "-m", "benchmarks.run", f"--stages={name}",
                           f"--workdir={workdir}", f"--stage_output={out}",
                           f"--intra_op_threads={args.intra_op_threads}",
                           f"--inter_op_threads={args.inter_op_threads}"] + \
                    (["--quick"] if args.quick else [])
                done = subprocess.run(command, cwd=os.path.dirname(os.path.dirname(
                    os.path.abspath(__file__))))
                if done.returncode != 0 or not os.path.exists(out):
                    report["skipped"][name] = f"stage process exited with {done.returncode}"
                    continue
                with open(out) as f:
                    result = json.load(f)
            else:
                try:
                    result = run_stage(name, scale, workdir, log)
                except Exception as error:
                    traceback.print_exc()
                    report["skipped"][name] = f"{type(error).__name__}: {error}"
                    continue
            figures.update(result["figures"])
            report["notes"].update(result["notes"])
            report["skipped"].update(result["skipped"])
            report["stages"][name] = {"seconds": result["seconds"],
                                      "peak_rss_mb": result["figures"].get(f"peak_rss_mb_{name}")}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    derive(figures)
    report["notes"]["peak_rss_method"] = (
        "VmHWM of each stage's own subprocess" if isolate else
        "VmHWM after resetting it through /proc/self/clear_refs at the stage's start "
        "(includes memory earlier stages still hold)")
    missing = [k for k in REQUIRED_FIGURES if k not in figures] if stages == list(STAGES) else []
    # The int8 tower needs oneDNN's int8 kernels, which TensorFlow leaves off by default on
    # CPUs without AVX-512 VNNI/bf16/AMX: its figures are then skipped with that reason
    # (listed apart), not missing.
    int8_unsupported = any(k.startswith("cache_build_") and k.endswith("_int8")
                           for k in report["skipped"])
    unsupported = [k for k in missing if int8_unsupported and "int8" in k]
    missing = [k for k in missing if k not in unsupported]
    results = {
        "mode": "quick" if args.quick else "full",
        "scale": dataclasses.asdict(scale),
        "isolated_stages": isolate,
        "machine": machine_info(args),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "total_seconds": round(time.perf_counter() - started, 1),
        "figures": {k: round(v, 4) for k, v in sorted(figures.items())},
        "missing_figures": missing,
        "unsupported_figures": unsupported,
        **report,
    }
    table = format_table(figures, report["notes"])
    results["table_markdown"] = table
    print("\n" + table)
    print(f"\n{len(figures)} figures in {results['total_seconds']} s; "
          f"skipped: {sorted(report['skipped']) or 'none'}; missing: {missing or 'none'}"
          + (f"; not supported on this CPU: {unsupported}" if unsupported else ""))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
