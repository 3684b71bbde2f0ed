"""Trains soundloc on the built-in synthetic scenes.

  soundloc-train --preset=tiny --workdir=runs/tiny [--label_fraction=0.1 ...]

Resumes automatically from the latest checkpoint in --workdir.  Every
config field is a flag (see --helpfull).

  soundloc-train --preset=paper --records=records/flickr_train \
      --validation_records=records/flickr_test

--records (a record directory or a shard pattern, see docs/DATA.md) trains on
imported data instead: shuffled with --train_seed, augmented, repeated, and
on resume skipped to step * batch_size.  The skip replays the same stream
when the files are unchanged; with other files (or another worker count)
the resume is approximate.
"""

from __future__ import annotations

import os

from absl import flags

from tools import common

flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, TensorBoard logs. "
                    "Default: runs/<preset>.")
flags.DEFINE_string("records", None, "Train on these records (directory or shard pattern) "
                    "instead of the synthetic scenes.")
flags.DEFINE_string("validation_records", None, "Validate on these records (the first "
                    "VALIDATION_SAMPLES_DURING_TRAINING samples).")
common.define_config_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    config = common.config_from_flags()
    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.preset)
    from soundloc_tf.training import Trainer, make_strategy  # after flag parsing: slow

    # First, before any op: MultiWorkerMirroredStrategy (TF_CONFIG set) configures the
    # collectives at program start-up and refuses once an op has run (reading records does).
    strategy = make_strategy()
    dataset_fn, validation = None, None
    if FLAGS.records or FLAGS.validation_records:
        from soundloc_tf import records
        from soundloc_tf.training import VALIDATION_SAMPLES_DURING_TRAINING

        if FLAGS.records:
            records.read_records(config, FLAGS.records, training=True)  # fail early, verified
            train_records = FLAGS.records
            dataset_fn = lambda start: records.read_records(  # noqa: E731
                config, train_records, training=True, seed=config.train_seed, start=start,
                verify=False)
        if FLAGS.validation_records:
            validation = records.read_records(config, FLAGS.validation_records,
                                              training=False).take(
                VALIDATION_SAMPLES_DURING_TRAINING)
    trainer = Trainer(config, workdir, strategy, dataset_fn=dataset_fn, validation=validation)
    print(f"Training {config.train_steps} steps, batch {config.batch_size}, on "
          f"{trainer.strategy.num_replicas_in_sync} replica(s); logs in {workdir}", flush=True)
    trainer.train()
    print(f"Checkpoints: {os.path.join(workdir, 'checkpoints')}\n"
          f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
