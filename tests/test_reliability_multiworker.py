"""Two workers: MultiWorkerMirroredStrategy over TF_CONFIG, two `python -m tools.train`
processes on 127.0.0.1 (free ports), one CPU replica each.

* Both end with identical weights (bit for bit: the all-reduced gradients are the same on
  both), and these equal a one-process run with the same global batch to MULTI_ATOL.  The
  second check is the proof that the data is sharded without overlap: the trainer hands the
  global-batch dataset to `experimental_distribute_dataset`, whose auto-shard policy (AUTO
  falls back to DATA for the synthetic `Dataset.range` pipeline, which reads no files)
  splits each global batch of 4 into two per-replica batches of 2 and gives worker w the
  w-th; had the workers read the same scenes, the global batch and so the weights would
  differ.
* Killing one worker mid-run stops the other (bounded by KILL_TIMEOUT) with an error naming
  the lost peer, and restarting both resumes from the last checkpoint of each worker.

Each worker has its own --workdir: under MultiWorkerMirroredStrategy every worker must call
save, and only the chief's files may land in the shared run directory (docs/CLUSTER.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from multiworker_helpers import roll_back_to_common_step
from test_reliability_resume import (checkpoint_weights, max_difference,  # noqa: F401
                                     write_initial_run, write_validation_records)

ROOT = Path(__file__).resolve().parent.parent
BATCH, STEPS, EVERY = 4, 4, 2
MULTI_ATOL = 1e-4  # two-worker all-reduce vs one replica: float summation order only
# Adam divides each gradient by its own running size, so a component near zero whose last bits
# differ between replica layouts can move its weight by a whole learning rate (measured 1e-3
# once the log-mel tower's batch norm made such components common); SGD keeps the difference
# in proportion to the gradients' own.
OPTIMIZER = "sgd"
KILL_TIMEOUT = 150  # seconds the surviving worker may take to give up


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def flags(workdir: Path, validation: Path | None, steps: int = STEPS) -> list[str]:
    # No --validation_records under TF_CONFIG: tools/train.py reads them before it creates the
    # strategy, and MultiWorkerMirroredStrategy must come before any op ("Collective ops must
    # be configured at program startup"); see the tools/train.py patch in docs/CLUSTER.md.
    extra = [f"--validation_records={validation}"] if validation else []
    return ["--preset=tiny", f"--workdir={workdir}", f"--batch_size={BATCH}", f"--optimizer={OPTIMIZER}",
            f"--train_steps={steps}", f"--checkpoint_every={EVERY}", "--log_every=1",
            "--eval_every=1000", "--num_summary_images=0", *extra]


def start(args: list[str], tf_config_json: str | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONUNBUFFERED": "1"}
    env.pop("TF_CONFIG", None)
    if tf_config_json:
        env["TF_CONFIG"] = tf_config_json
    return subprocess.Popen([sys.executable, "-m", "soundloc_tf.tools.train",
                             *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_workers(base: Path, validation: Path, steps: int = STEPS,
                  initial: Path | None = None) -> list[subprocess.Popen]:
    """Both workers; with `initial`, each work directory starts as a copy of it (ckpt-0)."""
    import shutil

    ports = free_ports(2)
    if initial is not None:
        for i in range(2):
            shutil.copytree(initial, base / f"worker{i}")
    return [start(flags(base / f"worker{i}", None, steps), tf_config(ports, i))
            for i in range(2)]


def finish(processes: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    out = []
    for p in processes:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate(timeout=30)
        out.append((p.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> Path:
    return write_validation_records(tmp_path_factory.mktemp("mw_validation") / "records")


@pytest.fixture(scope="module")
def initial(tmp_path_factory, single_device_strategy) -> Path:
    """One step-0 checkpoint for every process: equal initial weights (init is not seeded)."""
    return write_initial_run(tmp_path_factory.mktemp("mw_initial") / "run",
                             single_device_strategy, train_steps=STEPS, optimizer=OPTIMIZER)


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_equal_to_one_process(tmp_path, validation,
                                                                     initial):
    import shutil

    workers = start_workers(tmp_path, validation, initial=initial)
    shutil.copytree(initial, tmp_path / "single")
    single = start(flags(tmp_path / "single", validation), None)
    results = finish(workers + [single])
    for code, stdout, stderr in results:
        assert code == 0, (stdout[-1500:], stderr[-3000:])
    for code, stdout, _ in results[:2]:
        assert "on 2 replica(s)" in stdout, stdout[-1500:]
        assert f"step {STEPS}/{STEPS}" in stdout
    assert "on 1 replica(s)" in results[2][1]

    w0 = checkpoint_weights(str(tmp_path / "worker0" / "checkpoints" / f"ckpt-{STEPS}"))
    w1 = checkpoint_weights(str(tmp_path / "worker1" / "checkpoints" / f"ckpt-{STEPS}"))
    one = checkpoint_weights(str(tmp_path / "single" / "checkpoints" / f"ckpt-{STEPS}"))
    between_workers = max_difference(w0, w1)
    against_single = max_difference(w0, one)
    # The losses the workers print are the global ones, equal to the single process's.
    losses = [re.findall(r"^step \d+/\d+  loss (\S+)", r[1], re.M) for r in results]
    print(f"two workers: max |w0 - w1| = {between_workers:.3g}; max |w0 - one process| = "
          f"{against_single:.3g}; losses {losses}")
    assert between_workers == 0.0
    assert against_single <= MULTI_ATOL
    assert losses[0] == losses[1]
    np.testing.assert_allclose(np.array(losses[0], float), np.array(losses[2], float),
                               atol=1e-3)


@pytest.mark.slow
def test_killing_a_worker_stops_the_other_and_a_restart_resumes(tmp_path, validation):
    steps = 40
    workers = start_workers(tmp_path, validation, steps)
    victim, survivor = workers[1], workers[0]
    try:
        deadline = time.monotonic() + 600  # generous: CI machines may be shared
        for line in survivor.stdout:
            if line.startswith("step 3/"):
                break
            assert time.monotonic() < deadline, "the workers never reached step 3"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        killed_at = time.monotonic()
        try:
            _, survivor_stderr = survivor.communicate(timeout=KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            survivor.kill()
            survivor.communicate(timeout=30)
            pytest.fail(f"the surviving worker was still running {KILL_TIMEOUT} s after its "
                        f"peer was killed")
        waited = time.monotonic() - killed_at
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    last_lines = [line for line in survivor_stderr.splitlines() if line.strip()][-2:]
    print(f"surviving worker stopped {waited:.1f} s after its peer was killed, exit "
          f"{survivor.returncode}: {last_lines}")
    assert survivor.returncode not in (0, None)

    saved = [tf.train.latest_checkpoint(str(tmp_path / f"worker{i}" / "checkpoints"))
             for i in range(2)]
    assert all(saved), saved
    restart_step = min(int(s.rsplit("-", 1)[1]) for s in saved)
    roll_back_to_common_step(tmp_path, restart_step)
    # Restart both with the same flags: each resumes from its last checkpoint.
    resumed = start_workers(tmp_path, validation, steps=restart_step + EVERY)
    results = finish(resumed)
    for code, stdout, stderr in results:
        assert code == 0, (stdout[-1500:], stderr[-3000:])
        assert re.search(rf"Resumed from \S+ckpt-{restart_step} at step {restart_step}\.",
                         stdout), stdout[-1500:]
    w0 = checkpoint_weights(tf.train.latest_checkpoint(str(tmp_path / "worker0" / "checkpoints")))
    w1 = checkpoint_weights(tf.train.latest_checkpoint(str(tmp_path / "worker1" / "checkpoints")))
    assert max_difference(w0, w1) == 0.0
    # A clear one-line message from the survivor that names the cause and the way out.
    errors = [line for line in survivor_stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "worker" in errors[0] and "resume" in errors[0], \
        survivor_stderr[-3000:]
