"""Numerical faults: a NaN/Inf loss stops training with a message naming the step, keeps the
last good checkpoint untouched and leaves <workdir>/nan_report.json for inspection.

Faults are injected for real: a dataset whose scene at a chosen index has a NaN image (or an
Inf waveform), and, through the command line, a learning rate of 1e10 that blows the weights
up within a few steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
BATCH, EVERY = 4, 2
BAD_STEP = 3  # the poisoned scene lies in this step's batch (checkpoints at 2, 4, ...)
BAD_INDEX = (BAD_STEP - 1) * BATCH + 1


def _config(**changes):
    from soundloc_tf.config import get_config

    fields = dict(batch_size=BATCH, train_steps=6, checkpoint_every=EVERY, log_every=1,
                  eval_every=1000, num_summary_images=0)
    return get_config("tiny", **{**fields, **changes})


def poisoned(config, field: str, value: float):
    """dataset_fn: the synthetic stream with `field` of scene BAD_INDEX set to `value`."""
    from soundloc_tf.dataloaders import data

    def dataset_fn(start: int) -> tf.data.Dataset:
        def poison(position, scene):
            bad = tf.equal(position, BAD_INDEX)
            scene = dict(scene)
            scene[field] = tf.where(bad, tf.fill(tf.shape(scene[field]), value), scene[field])
            return scene

        stream = data.synthetic_dataset(config, config.train_seed, start=start)
        return stream.enumerate(start).map(poison)

    return dataset_fn


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("field,value", [("image", float("nan")), ("waveform", float("inf"))])
def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path, single_device_strategy, field, value):
    from soundloc_tf.dataloaders import data
    from soundloc_tf.train.training import Trainer

    config = _config()
    workdir = tmp_path / "run"
    messages: list[str] = []
    trainer = Trainer(config, str(workdir), single_device_strategy,
                      dataset_fn=poisoned(config, field, value),
                      validation=data.synthetic_dataset(config, config.eval_seed, count=4),
                      log=messages.append)
    trainer.train(steps=BAD_STEP - 1)  # up to the last good checkpoint
    checkpoints = workdir / "checkpoints"
    before = _digests(checkpoints)
    assert sorted(before) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]

    with pytest.raises(FloatingPointError) as caught:
        trainer.train()
    message = str(caught.value)
    assert re.search(rf"the loss became (nan|inf|-inf) at step {BAD_STEP} \(batch ids and loss "
                     rf"terms in {re.escape(str(workdir / 'nan_report.json'))}\);",
                     message), message
    assert message.endswith(str(checkpoints / "ckpt-2")), message
    # Nothing was written after the fault: the last good checkpoint is byte-identical.
    assert _digests(checkpoints) == before

    # The report names the offending batch, its loss terms and the checkpoint to go back to.
    report = json.loads((workdir / "nan_report.json").read_text())
    assert report["step"] == BAD_STEP
    expected_ids = [f"synthetic/{config.train_seed}/{i}"
                    for i in range((BAD_STEP - 1) * BATCH, BAD_STEP * BATCH)]
    assert sorted(report["ids"]) == sorted(expected_ids)
    assert set(report["losses"]) >= {"total", "unsupervised", "supervised"}
    assert not np.isfinite(report["losses"]["total"])
    assert report["last_good_checkpoint"] == str(checkpoints / "ckpt-2")

    # The good checkpoint restores, finite, at step 2.
    reader = tf.train.load_checkpoint(str(checkpoints / "ckpt-2"))
    tensors = [reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
               if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert all(np.all(np.isfinite(t)) for t in tensors if t.dtype.kind == "f")
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 2


@pytest.mark.slow
def test_the_cli_exits_2_with_one_line_when_the_loss_diverges(tmp_path):
    """learning_rate=1e10: Adam moves every weight by ~1e10 a step and the loss overflows."""
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["--preset=tiny", f"--workdir={workdir}", f"--batch_size={BATCH}", "--train_steps=8",
            "--checkpoint_every=1", "--log_every=1", "--eval_every=1000",
            "--num_summary_images=0", "--learning_rate=1e10", "--lr_schedule=constant"]
    result = subprocess.run([sys.executable, "-m", "soundloc_tf.tools.train",
                             *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    found = re.fullmatch(r"error: the loss became (nan|inf|-inf) at step (\d+) \(batch ids and "
                         r"loss terms in (\S+)\); the last good checkpoint is (\S+)", errors[0])
    assert found, errors[0]
    step, last_good = int(found.group(2)), found.group(4)
    assert found.group(3) == str(workdir / "nan_report.json")
    assert 1 < step <= 8
    assert last_good == str(workdir / "checkpoints" / f"ckpt-{step - 1}")
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")) == last_good
    report = json.loads((workdir / "nan_report.json").read_text())
    assert report["step"] == step and len(report["ids"]) == BATCH
