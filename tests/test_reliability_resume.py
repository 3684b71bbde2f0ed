"""Kill-and-resume: a SIGKILLed training run resumes from its last checkpoint and ends with
the weights of an uninterrupted run; an unreadable newest checkpoint falls back to an older one.

The kill test runs `python -m tools.train` as a user would (tiny preset, batch 4, 10 steps,
a checkpoint every 2 steps, a progress line every step), kills it with SIGKILL when a
seeded-random odd step (between two checkpoints) is printed, and reruns the same command.
Synthetic scenes are a pure function of (seed, index) and the trainer restarts the stream at
step * batch_size, so the resumed run sees the same batches as the uninterrupted one.  The
weight initialisation is not seeded by tools/train.py, so both runs start from a copy of one
step-0 checkpoint written here.  On CPU the ops are deterministic run to run, so the final
weights (and Adam moments) must agree to WEIGHT_ATOL.

Validation during training reads a 4-sample record directory (--validation_records) so that
each process spends its time on training, not on the default 256 validation scenes.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
STEPS, EVERY, BATCH = 10, 2, 4
WEIGHT_ATOL = 1e-6
KILL_SEED = 20240611


def train_flags(workdir: Path, validation: Path, **extra) -> list[str]:
    flags = {"preset": "tiny", "workdir": str(workdir), "batch_size": BATCH,
             "train_steps": STEPS, "checkpoint_every": EVERY, "log_every": 1,
             "eval_every": 1000, "num_summary_images": 0, "validation_records": str(validation),
             **extra}
    return [f"--{k}={v}" for k, v in flags.items()]


def train_env(**extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1", **extra}


def run_train(args: list[str], timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soundloc_tf.tools.train", *args], cwd=ROOT,
                          env=train_env(**env), capture_output=True, text=True, timeout=timeout)


def write_validation_records(directory: Path, count: int = 4) -> Path:
    from soundloc_tf.dataloaders import data, records
    from soundloc_tf.config import get_config

    config = get_config("tiny")
    samples = []
    for scene in data.synthetic_dataset(config, config.eval_seed, count=count):
        samples.append({"image": np.round(scene["image"].numpy() * 255).astype(np.uint8),
                        "waveform": scene["waveform"].numpy(), "sample_rate": config.sample_rate,
                        "boxes": scene["boxes"].numpy(), "id": scene["id"].numpy().decode()})
    records.write_records(samples, str(directory), sample_rate=config.sample_rate,
                          clip_seconds=config.clip_seconds, source="test")
    return directory


def checkpoint_weights(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint prefix by name: weights, Adam moments, step counters."""
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b) and a
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0
               for k in a)


def write_initial_run(workdir: Path, strategy, **changes) -> Path:
    """A run directory holding config.json and ckpt-0: the common starting point.

    tools/train.py does not seed the weight initialisation, so two runs start from different
    weights; runs copied from one step-0 checkpoint start equal (and resume "from ckpt-0").
    """
    from soundloc_tf.dataloaders import data
    from soundloc_tf.config import get_config
    from soundloc_tf.train.training import Trainer

    fields = dict(batch_size=BATCH, train_steps=STEPS, checkpoint_every=EVERY, log_every=1,
                  eval_every=1000, num_summary_images=0)
    config = get_config("tiny", **{**fields, **changes})
    trainer = Trainer(config, str(workdir), strategy,
                      validation=data.synthetic_dataset(config, config.eval_seed, count=1),
                      log=lambda _: None)
    trainer.manager.save(checkpoint_number=0)
    return workdir


@pytest.fixture(scope="module")
def validation_records(tmp_path_factory) -> Path:
    return write_validation_records(tmp_path_factory.mktemp("validation") / "records")


@pytest.fixture(scope="module")
def initial_run(tmp_path_factory, single_device_strategy) -> Path:
    return write_initial_run(tmp_path_factory.mktemp("initial") / "run", single_device_strategy)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, validation_records, initial_run) -> Path:
    import shutil

    workdir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    shutil.copytree(initial_run, workdir)
    result = run_train(train_flags(workdir, validation_records))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"step {STEPS}/{STEPS}" in result.stdout
    assert "Resumed from" in result.stdout and "ckpt-0 at step 0." in result.stdout
    return workdir


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_rerun_ends_with_the_uninterrupted_weights(
        tmp_path, validation_records, initial_run, uninterrupted):
    import shutil

    kill_at = random.Random(KILL_SEED).choice([3, 5, 7])  # odd: between two checkpoints
    workdir = tmp_path / "killed"
    shutil.copytree(initial_run, workdir)  # the same initial weights as `uninterrupted`
    args = train_flags(workdir, validation_records)
    process = subprocess.Popen([sys.executable, "-m", "soundloc_tf.tools.train", *args], cwd=ROOT,
                               env=train_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    seen = []
    deadline = time.monotonic() + 600  # generous: the CI machine may be shared
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith(f"step {kill_at}/{STEPS} "):
                process.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "training never reached the kill step"
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    assert not any(line.startswith(f"step {STEPS}/") for line in seen)

    saved = sorted(int(p.name.split("-")[1].split(".")[0])
                   for p in (workdir / "checkpoints").glob("ckpt-*.index"))
    # The step after kill_at may have finished and saved before the signal landed.
    assert saved and saved[-1] in (kill_at - 1, kill_at + 1), saved
    last = saved[-1]

    rerun = run_train(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = re.search(r"Resumed from (\S+) at step (\d+)\.", rerun.stdout)
    assert resumed, rerun.stdout
    assert resumed.group(1).endswith(f"ckpt-{last}") and int(resumed.group(2)) == last
    steps_run = [int(m) for m in re.findall(r"^step (\d+)/", rerun.stdout, re.M)]
    assert steps_run == list(range(last + 1, STEPS + 1))

    final = str(workdir / "checkpoints" / f"ckpt-{STEPS}")
    reference = str(uninterrupted / "checkpoints" / f"ckpt-{STEPS}")
    difference = max_difference(checkpoint_weights(final), checkpoint_weights(reference))
    print(f"killed at step {kill_at}, resumed from ckpt-{last}; max |weight difference| "
          f"after {STEPS} steps: {difference:.3g}")
    assert difference <= WEIGHT_ATOL


# ---------------------------------------------------------------------------
# An unreadable newest checkpoint (a kill during a write, a bad disk) falls back.


def _trainer(workdir: Path, strategy, steps: int = 4, messages: list | None = None):
    from soundloc_tf.dataloaders import data
    from soundloc_tf.config import get_config
    from soundloc_tf.train.training import Trainer

    config = get_config("tiny", batch_size=BATCH, train_steps=steps, checkpoint_every=EVERY,
                        log_every=1000, eval_every=1000, num_summary_images=0)
    log = messages.append if messages is not None else (lambda _: None)
    return Trainer(config, str(workdir), strategy,
                   validation=data.synthetic_dataset(config, config.eval_seed, count=4), log=log)


@pytest.fixture(scope="module")
def four_step_run(tmp_path_factory, single_device_strategy) -> Path:
    """A finished 4-step run with ckpt-2 and ckpt-4 (copied per test)."""
    workdir = tmp_path_factory.mktemp("fallback") / "run"
    _trainer(workdir, single_device_strategy).train()
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert names == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                     "ckpt-4.data-00000-of-00001", "ckpt-4.index"], names
    return workdir


def _flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "data truncated to half": lambda c: (c / "ckpt-4.data-00000-of-00001").write_bytes(
        (c / "ckpt-4.data-00000-of-00001").read_bytes()[:(c / "ckpt-4.data-00000-of-00001")
                                                        .stat().st_size // 2]),
    "data zero bytes": lambda c: (c / "ckpt-4.data-00000-of-00001").write_bytes(b""),
    "data byte flipped": lambda c: _flip_byte(c / "ckpt-4.data-00000-of-00001", 1000),
    "index garbled": lambda c: (c / "ckpt-4.index").write_bytes(b"\x00garbage" * 16),
    "index missing": lambda c: (c / "ckpt-4.index").unlink(),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(
        tmp_path, four_step_run, single_device_strategy, damage):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(four_step_run, workdir)
    good = checkpoint_weights(str(workdir / "checkpoints" / "ckpt-2"))
    DAMAGE[damage](workdir / "checkpoints")

    messages: list[str] = []
    trainer = _trainer(workdir, single_device_strategy, steps=4, messages=messages)
    assert int(trainer.step.numpy()) == 2, messages
    skipped = [m for m in messages if "ckpt-4" in m and "skip" in m.lower()]
    assert len(skipped) == 1, messages
    assert any(m.startswith("Resumed from") and m.split()[2].endswith("ckpt-2")
               for m in messages), messages
    # The restored weights and optimiser state are ckpt-2's, bit for bit.
    probe_path = trainer.checkpoint.write(str(tmp_path / "probe" / "p"))
    assert max_difference(checkpoint_weights(probe_path), good) == 0.0
    if damage != "data byte flipped":
        return
    # Training on rewrites ckpt-4 as a readable checkpoint (checked once: it costs 2 steps).
    trainer.train()
    assert int(trainer.step.numpy()) == 4
    tf.train.load_checkpoint(str(workdir / "checkpoints" / "ckpt-4"))


@pytest.mark.slow
def test_a_leftover_temporary_write_is_ignored(tmp_path, four_step_run, single_device_strategy):
    """A kill during save leaves <prefix>_temp files and an unchanged `checkpoint` file."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(four_step_run, workdir)
    temp = workdir / "checkpoints" / "ckpt-6_temp"
    temp.mkdir()
    (temp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\x01" * 100)
    (temp / "part-00000-of-00001.index").write_bytes(b"")
    messages: list[str] = []
    trainer = _trainer(workdir, single_device_strategy, steps=6, messages=messages)
    assert int(trainer.step.numpy()) == 4, messages
    trainer.train()
    assert int(trainer.step.numpy()) == 6
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-6")


@pytest.mark.slow
def test_every_checkpoint_unreadable_is_a_clear_error(tmp_path, four_step_run,
                                                     single_device_strategy):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(four_step_run, workdir)
    for name in ("ckpt-2", "ckpt-4"):
        (workdir / "checkpoints" / f"{name}.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(ValueError, match="could not restore"):
        _trainer(workdir, single_device_strategy)
