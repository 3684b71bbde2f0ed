"""Training from the feature cache on two workers: MultiWorkerMirroredStrategy over TF_CONFIG,
two `python -m soundloc_tf.tools.train --tower_mode=cached` processes on 127.0.0.1 (free
ports, as tests/test_reliability_multiworker.py runs the live towers).

* The workers share one --feature_cache: the chief builds it, the other passes the barrier
  and reuses it. The cache is read in two parts (every other shard); each worker reads only
  its part and trains on its slice of each global batch. A one-process run with
  --cache_parts=2 on its own cache (the same towers over the same scenes: the same bytes)
  trains on the same global batches, so its losses are the workers' to LOSS_ATOL, and
  InfoNCE's negatives span the global batch on both.
* A worker killed with SIGKILL stops the other; both restarted resume from their
  checkpoints, reuse the cache, and end with the uninterrupted run's losses and weights.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from multiworker_helpers import roll_back_to_common_step
from test_reliability_multiworker import KILL_TIMEOUT, finish, free_ports, start, tf_config
from test_reliability_resume import checkpoint_weights, max_difference, write_initial_run

BATCH, STEPS, EVERY = 8, 20, 5
PARTS = 2  # the cache's parts: one per worker
CACHE_SAMPLES = 48  # fewer than the 160 pairs of 20 steps: the parts repeat, reshuffled
KILL_AFTER = 8  # the victim dies between the checkpoints of steps 5 and 10
LOSS_ATOL = 1e-5  # two workers against one process: float summation order only
STARTUP_TIMEOUT = 600  # seconds the workers may take to reach KILL_AFTER on a shared CI host
DRY_RUN_TIMEOUT = 300  # seconds for one `--dry_run` (TensorFlow's import) on a shared host


def flags(workdir: Path, cache: Path, steps: int = STEPS) -> list[str]:
    # SGD, as the live-tower test: Adam can turn last-bit differences into whole steps.
    return ["--preset=tiny", "--tower_mode=cached", f"--cache_samples={CACHE_SAMPLES}",
            f"--cache_parts={PARTS}", f"--feature_cache={cache}", f"--workdir={workdir}",
            f"--batch_size={BATCH}", "--optimizer=sgd", f"--train_steps={steps}",
            f"--checkpoint_every={EVERY}", "--log_every=1", "--eval_every=1000",
            "--num_summary_images=0"]


def start_workers(base: Path, initial: Path, copy: bool = True) -> list[subprocess.Popen]:
    """Both workers on the cache <base>/cache; with `copy`, each work directory starts as a
    copy of `initial` (ckpt-0)."""
    ports = free_ports(2)
    if copy:
        for i in range(2):
            shutil.copytree(initial, base / f"worker{i}")
    return [start(flags(base / f"worker{i}", base / "cache"), tf_config(ports, i))
            for i in range(2)]


def logged_losses(workdir: Path) -> dict[int, float]:
    """step -> total loss at full precision, from the run's TensorBoard events (the printed
    losses have four decimals); a step logged again after a resume takes the newer value."""
    losses = {}
    for path in sorted(glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*")),
                       key=os.path.getmtime):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "loss/total":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


def final_weights(workdir: Path) -> dict[str, np.ndarray]:
    return checkpoint_weights(str(workdir / "checkpoints" / f"ckpt-{STEPS}"))


def shard_counts(cache: Path) -> list[int]:
    with open(cache / "manifest.json") as f:
        return [shard["count"] for shard in json.load(f)["shards"]]


def cached_samples(cache: Path) -> dict[str, np.ndarray]:
    """Every sample of a cache, in order, field by field (the shards' bytes may differ: a
    tf.train.Example's features serialise in no fixed order)."""
    from soundloc_tf.config import get_config
    from soundloc_tf.train import feature_cache

    config = get_config("tiny", freeze_image_tower=True, freeze_audio_tower=True)
    batch = next(iter(feature_cache.read_cache(config, str(cache), training=False)
                      .batch(CACHE_SAMPLES)))
    return {key: value.numpy() for key, value in batch.items()}


@pytest.fixture(scope="module")
def initial(tmp_path_factory, single_device_strategy) -> Path:
    """One step-0 checkpoint for every process, the towers frozen as the cached mode
    freezes them."""
    return write_initial_run(tmp_path_factory.mktemp("mwc_initial") / "run",
                             single_device_strategy, batch_size=BATCH, train_steps=STEPS,
                             checkpoint_every=EVERY, optimizer="sgd",
                             freeze_image_tower=True, freeze_audio_tower=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, initial) -> Path:
    """Two workers and one process, each from `initial` to STEPS."""
    base = tmp_path_factory.mktemp("mwc_uninterrupted")
    started = time.monotonic()
    workers = start_workers(base, initial)
    shutil.copytree(initial, base / "single")
    processes = workers + [start(flags(base / "single", base / "single_cache"), None)]
    results = finish(processes)
    print(f"two workers and one process, {STEPS} steps from the cache: "
          f"{time.monotonic() - started:.1f} s")
    for code, stdout, stderr in results:
        assert code == 0, (stdout[-1500:], stderr[-3000:])
    (_, chief, _), (_, other, _), (_, single, _) = results
    assert f"Feature cache {base / 'cache'}: {CACHE_SAMPLES} samples in" in chief, chief[-1500:]
    assert f"Feature cache {base / 'cache'}: {CACHE_SAMPLES} samples (reused)" in other
    assert f"{CACHE_SAMPLES} samples in" in single
    for stdout in (chief, other):
        assert "on 2 replica(s)" in stdout and f"read in {PARTS} part(s), 1 by this worker" \
            in stdout, stdout[-1500:]
    assert "on 1 replica(s)" in single and f"{PARTS} part(s), {PARTS} by this worker" in single
    # One cache in PARTS shards; the one process's holds the workers' samples exactly.
    assert shard_counts(base / "cache") == shard_counts(base / "single_cache") == \
        [CACHE_SAMPLES // PARTS] * PARTS
    shared, own = cached_samples(base / "cache"), cached_samples(base / "single_cache")
    assert all(np.array_equal(shared[key], own[key]) for key in shared)
    return base


@pytest.mark.slow
def test_two_workers_train_from_the_cache_with_the_losses_of_one(uninterrupted):
    losses = [logged_losses(uninterrupted / name) for name in ("worker0", "worker1", "single")]
    assert all(sorted(run) == list(range(1, STEPS + 1)) for run in losses), losses
    steps = range(1, STEPS + 1)
    two, one = (np.array([run[s] for s in steps]) for run in (losses[0], losses[2]))
    w0, w1, single = (final_weights(uninterrupted / name)
                      for name in ("worker0", "worker1", "single"))
    print(f"max |loss(2 workers) - loss(1 process)| over {STEPS} steps: "
          f"{np.max(np.abs(two - one)):.3g}; max |w0 - w1| = {max_difference(w0, w1):.3g}; "
          f"max |w0 - one process| = {max_difference(w0, single):.3g}")
    assert losses[0] == losses[1]  # the global losses, on both workers
    np.testing.assert_allclose(two, one, rtol=0, atol=LOSS_ATOL)
    assert np.ptp(two) > 100 * LOSS_ATOL  # the losses move: the comparison says something
    assert max_difference(w0, w1) == 0.0


def _run_until_killed(base: Path, initial: Path) -> float:
    """Both workers towards STEPS; worker 1 SIGKILLed once worker 0 logs step KILL_AFTER.
    Returns how long the survivor took to stop."""
    workers = start_workers(base, initial)
    victim, survivor = workers[1], workers[0]
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for line in survivor.stdout:
            if line.startswith(f"step {KILL_AFTER}/"):
                break
            assert time.monotonic() < deadline, f"the workers never reached step {KILL_AFTER}"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        killed_at = time.monotonic()
        try:
            survivor.communicate(timeout=KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the surviving worker was still running {KILL_TIMEOUT} s after its "
                        f"peer was killed")
        assert survivor.returncode not in (0, None)
        return time.monotonic() - killed_at
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


@pytest.mark.slow
def test_a_worker_killed_mid_run_resumes_exactly(tmp_path, initial, uninterrupted):
    waited = _run_until_killed(tmp_path, initial)
    saved = [tf.train.latest_checkpoint(str(tmp_path / f"worker{i}" / "checkpoints"))
             for i in range(2)]
    restart_step = min(int(s.rsplit("-", 1)[1]) for s in saved)
    assert 0 < restart_step < KILL_AFTER, saved
    roll_back_to_common_step(tmp_path, restart_step)
    started = time.monotonic()
    results = finish(start_workers(tmp_path, initial, copy=False))
    for code, stdout, stderr in results:
        assert code == 0, (stdout[-1500:], stderr[-3000:])
        assert f"at step {restart_step}." in stdout and "samples (reused)" in stdout, \
            stdout[-1500:]
    resumed = [logged_losses(tmp_path / f"worker{i}") for i in range(2)]
    expected = logged_losses(uninterrupted / "worker0")
    difference = max(abs(resumed[0][s] - expected[s]) for s in range(1, STEPS + 1))
    weights = max_difference(final_weights(tmp_path / "worker0"),
                             final_weights(uninterrupted / "worker0"))
    print(f"survivor stopped {waited:.1f} s after the kill; resumed at step {restart_step} "
          f"in {time.monotonic() - started:.1f} s; max |loss - uninterrupted| = "
          f"{difference:.3g}, max |weights - uninterrupted| = {weights:.3g}")
    assert resumed[0] == resumed[1] == expected
    assert weights == 0.0


def _two_workers(index: int = 0) -> str:
    return tf_config([1111, 2222], index)


@pytest.mark.parametrize("tf_config_text, received", [
    ("{not json", "TF_CONFIG must be JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1111"]}}', "must name the workers and this one"),
    ('{"cluster": {"worker": ["127.0.0.1:1111"]}, "task": {"type": "worker", "index": 1}}',
     "must name the workers and this one"),
    ('{"cluster": {"worker": "127.0.0.1:1111"}, "task": {"type": "worker", "index": 0}}',
     "must name the workers and this one"),
    ('["worker"]', "must name the workers and this one"),
])
def test_a_malformed_tf_config_fails_in_one_line(tf_config_text, received):
    from soundloc_tf.config import get_config
    from soundloc_tf.tasks import localization

    with pytest.raises(ValueError) as raised:
        localization.check_settings(get_config("tiny"),
                                    localization.DataConfig(tower_mode="cached"),
                                    tf_config=tf_config_text)
    message = str(raised.value)
    assert received in message and "\n" not in message
    assert message.endswith(f"Received: TF_CONFIG={' '.join(tf_config_text.split())!r}")


@pytest.mark.parametrize("changes, settings, received", [
    ({"batch_size": 7}, {"feature_cache": "/shared/cache"}, "Received: --batch_size=7"),
    ({}, {"feature_cache": "/shared/cache", "cache_parts": 3}, "Received: --cache_parts=3"),
    ({"batch_size": 6}, {"feature_cache": "/shared/cache", "cache_parts": 4},
     "Received: --cache_parts=4"),
    ({}, {}, "Received: no --feature_cache"),
])
def test_cached_settings_that_two_workers_cannot_share_fail_in_one_line(changes, settings,
                                                                         received):
    from soundloc_tf.config import get_config
    from soundloc_tf.tasks import localization

    with pytest.raises(ValueError, match=re.escape(received) + "$"):
        localization.check_settings(get_config("tiny", **changes),
                                    localization.DataConfig(tower_mode="cached", **settings),
                                    tf_config=_two_workers())


def test_two_workers_read_the_cache_in_two_parts_by_default():
    from soundloc_tf.config import get_config
    from soundloc_tf.tasks import localization

    config, mode, data_config = localization.check_settings(
        get_config("tiny"), localization.DataConfig(tower_mode="cached",
                                                    feature_cache="/shared/cache"),
        tf_config=_two_workers(1))
    assert (mode, data_config.cache_parts) == ("cached", 2)
    assert config.freeze_image_tower and config.freeze_audio_tower
    _, _, alone = localization.check_settings(
        get_config("tiny"), localization.DataConfig(tower_mode="cached"))
    assert alone.cache_parts == 1


def test_the_tool_reports_a_malformed_tf_config_in_one_line():
    process = start(["--preset=tiny", "--tower_mode=cached", "--dry_run"], "{not json")
    stdout, stderr = process.communicate(timeout=DRY_RUN_TIMEOUT)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1, (stdout, stderr)
    assert lines[0].startswith("error: TF_CONFIG must be JSON") and \
        lines[0].endswith("Received: TF_CONFIG='{not json'"), lines
