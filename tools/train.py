"""Trains soundloc on the built-in synthetic scenes.

  soundloc-train --preset=tiny --workdir=runs/tiny [--label_fraction=0.1 ...]

Resumes automatically from the latest checkpoint in --workdir.  Every
config field is a flag (see --helpfull).
"""

from __future__ import annotations

import os

from absl import flags

from tools import common

flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, TensorBoard logs. "
                    "Default: runs/<preset>.")
common.define_config_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    config = common.config_from_flags()
    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.preset)
    from soundloc_tf.training import Trainer  # after flag parsing: TF start-up is slow

    trainer = Trainer(config, workdir)
    print(f"Training {config.train_steps} steps, batch {config.batch_size}, on "
          f"{trainer.strategy.num_replicas_in_sync} replica(s); logs in {workdir}", flush=True)
    trainer.train()
    print(f"Checkpoints: {os.path.join(workdir, 'checkpoints')}\n"
          f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
