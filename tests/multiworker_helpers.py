"""What the multi-worker tests share: the recovery docs/CLUSTER.md describes after a kill."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf


def roll_back_to_common_step(run_root: Path, step: int, num_workers: int = 2) -> None:
    """Points every worker's checkpoint state at its newest checkpoint at or before `step`:
    a worker killed between the workers' saves may be one checkpoint behind the others."""
    for i in range(num_workers):
        directory = str(run_root / f"worker{i}" / "checkpoints")
        state = tf.train.get_checkpoint_state(directory)
        keep = [p for p in state.all_model_checkpoint_paths
                if int(p.rsplit("-", 1)[1]) <= step]
        tf.compat.v1.train.update_checkpoint_state(directory, keep[-1], keep)
