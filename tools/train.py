"""Trains soundloc on the built-in synthetic scenes.

  soundloc-train --preset=tiny --workdir=runs/tiny [--label_fraction=0.1 ...]

Resumes automatically from the latest checkpoint in --workdir.  Every
config field is a flag (see --helpfull).

  soundloc-train --preset=paper --records=records/flickr_train \
      --validation_records=records/flickr_test

--tower_mode picks how the towers take part: fine_tuned (trained with the
rest), frozen (run on every step, not trained: the authors' set-up) or
cached (frozen, run once over the training data into a feature cache, then
the localiser trains on the cache: many times faster; the cache fixes each
sample's crop and audio window).  Without it, the config decides: cached
where cache_features is set (the paper preset), else as its freeze_* fields
say.

--records (a record directory or a shard pattern, see docs/DATA.md) trains on
imported data instead: shuffled with --train_seed, augmented, repeated, and
on resume skipped to step * batch_size.  The skip replays the same stream
when the files are unchanged; with other files (or another worker count)
the resume is approximate.

--annotations (with --records) trains the semi-supervised term on the labels
drawn in soundloc-studio (<records>/annotations.json): exactly its pairs with
boxes are labelled, whatever the records hold, and their number is printed.
"""

from __future__ import annotations

import os

from absl import flags

from . import common

flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, TensorBoard logs. "
                    "Default: runs/<preset>.")
flags.DEFINE_string("records", None, "Train on these records (directory or shard pattern) "
                    "instead of the synthetic scenes.")
flags.DEFINE_string("annotations", None, "With --records: the annotation layer (labels "
                    "drawn in soundloc-studio, <records>/annotations.json) whose labelled "
                    "pairs, and only those, the semi-supervised term trains on.")
flags.DEFINE_string("validation_records", None, "Validate on these records (the first "
                    "VALIDATION_SAMPLES_DURING_TRAINING samples).")
flags.DEFINE_enum("tower_mode", None, ["fine_tuned", "frozen", "cached"],
                  "fine_tuned: towers trained; frozen: towers run live but not trained; "
                  "cached: frozen towers run once into a feature cache. Default: cached "
                  "where the config's cache_features is set (paper), else as its "
                  "freeze_image_tower / freeze_audio_tower say.")
flags.DEFINE_string("feature_cache", None, "tower_mode=cached: the cache directory (built "
                    "if absent, reused if its towers match). Default: <workdir>/feature_cache.")
flags.DEFINE_enum("cache_dtype", "float16", ["float32", "float16", "bfloat16", "int8"],
                  "tower_mode=cached: storage type of the cached features (int8: per-channel "
                  "scales, a quarter of float32's bytes).")
flags.DEFINE_enum("cache_image_tower", "model", ["model", "int8"],
                  "tower_mode=cached: the image tower that builds the cache. model: as "
                  "built (float32, or bfloat16 with --image_tower_precision); int8: through "
                  "oneDNN int8 convolutions calibrated on the first images, several times "
                  "float32's speed for VGG16 on AVX-512 VNNI CPUs, maps within about 2% "
                  "(see docs in soundloc_tf/modeling/int8_tower.py).")
flags.DEFINE_enum("cache_in_memory", "auto", ["auto", "true", "false"],
                  "tower_mode=cached: parse the cache once and hold it in RAM (later epochs "
                  "skip the read and parse) or stream it from "
                  "disk every epoch. auto: in RAM when it takes under half the available "
                  "memory.")
flags.DEFINE_integer("cache_samples", 10_000, "tower_mode=cached on synthetic scenes: how "
                     "many training scenes to cache (records are cached whole).", lower_bound=1)
common.define_config_flags()
FLAGS = flags.FLAGS

TOWER_MODES = {"fine_tuned": False, "frozen": True, "cached": True}  # -> freeze both towers
# The flags outside Config: the run's config.json records them under "run_flags".
RUN_FLAGS = ("preset", "records", "annotations", "validation_records", "tower_mode",
             "feature_cache", "cache_dtype", "cache_image_tower", "cache_in_memory",
             "cache_samples")


def _config():
    config = common.config_from_flags()
    if FLAGS.tower_mode is None and config.cache_features:
        FLAGS.tower_mode = "cached"  # the config's default: frozen towers, cached features
    if FLAGS.tower_mode != "cached":  # cache flags would be silently ignored
        for name in ("feature_cache", "cache_dtype", "cache_image_tower", "cache_in_memory",
                     "cache_samples"):
            if FLAGS[name].present:
                raise ValueError(f"--{name} needs --tower_mode=cached. Received: "
                                 f"--{name}={FLAGS[name].value!r}")
    if FLAGS.tower_mode is None:
        return config
    if FLAGS.tower_mode != "cached" and config.cache_features:  # the preset's default mode
        config = config.replace(cache_features=False)
    freeze = TOWER_MODES[FLAGS.tower_mode]
    for name in ("freeze_image_tower", "freeze_audio_tower"):
        if FLAGS[name].present and FLAGS[name].value != freeze:
            raise ValueError(f"--tower_mode={FLAGS.tower_mode} contradicts --{name}. "
                             f"Received: --{name}={FLAGS[name].value}")
    if FLAGS.tower_mode == "cached" and os.environ.get("TF_CONFIG"):
        raise ValueError("--tower_mode=cached trains on one worker (the cache is one "
                         "directory); unset TF_CONFIG or use --tower_mode=frozen. Received: "
                         "TF_CONFIG is set")
    return config.replace(freeze_image_tower=freeze, freeze_audio_tower=freeze)


def main(argv: list[str]) -> None:
    config = _config()
    if FLAGS.annotations and not FLAGS.records:
        raise ValueError(f"--annotations labels imported pairs; it needs --records. Received: "
                         f"--annotations={FLAGS.annotations!r}")
    if FLAGS.annotations and not (config.label_fraction > 0 and config.supervised_weight > 0):
        raise ValueError(f"--annotations needs the semi-supervised term on (label_fraction > 0 "
                         f"and supervised_weight > 0). Received: label_fraction="
                         f"{config.label_fraction}, supervised_weight={config.supervised_weight}")
    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.preset)
    from soundloc_tf.train.training import Trainer, make_strategy  # after flag parsing: slow

    # First, before any op: MultiWorkerMirroredStrategy (TF_CONFIG set) configures the
    # collectives at program start-up and refuses once an op has run (reading records does).
    strategy = make_strategy()
    dataset_fn, validation = None, None
    if FLAGS.records or FLAGS.validation_records:
        from soundloc_tf.dataloaders import records
        from soundloc_tf.train.training import VALIDATION_SAMPLES_DURING_TRAINING

        if FLAGS.records:
            records.read_records(config, FLAGS.records, training=True,  # fail early, verified
                                 annotations=FLAGS.annotations)
            train_records, annotations = FLAGS.records, FLAGS.annotations
            dataset_fn = lambda start: records.read_records(  # noqa: E731
                config, train_records, training=True, seed=config.train_seed, start=start,
                verify=False, annotations=annotations)
            if annotations:
                labelled, total = records.count_labeled(train_records, annotations)
                print(f"Semi-supervised on {labelled} labelled pairs of {total} (annotation "
                      f"layer {annotations})", flush=True)
        if FLAGS.validation_records:
            validation = records.read_records(config, FLAGS.validation_records,
                                              training=False).take(
                VALIDATION_SAMPLES_DURING_TRAINING)
    trainer = Trainer(config, workdir, strategy, dataset_fn=dataset_fn, validation=validation,
                      run_flags={name: FLAGS[name].value for name in RUN_FLAGS})
    if FLAGS.tower_mode == "cached":
        from soundloc_tf.dataloaders import data
        from soundloc_tf.train import feature_cache

        if FLAGS.records:
            source = records.read_records(config, FLAGS.records, training=False, verify=False,
                                          annotations=FLAGS.annotations)
        else:
            source = data.synthetic_dataset(config, config.train_seed, count=FLAGS.cache_samples)
        cache_dir = FLAGS.feature_cache or os.path.join(workdir, "feature_cache")
        manifest = feature_cache.ensure_cache(trainer.model, config, source, cache_dir,
                                              dtype=FLAGS.cache_dtype,
                                              image_tower=FLAGS.cache_image_tower)
        if FLAGS.cache_in_memory == "auto":
            in_memory = feature_cache.fits_in_memory(manifest)
        else:
            in_memory = FLAGS.cache_in_memory == "true"
        held = feature_cache.in_memory_bytes(manifest) / 1e9
        where = (f"held in memory ({held:.2f} GB" if in_memory
                 else f"streamed from disk ({held:.2f} GB if held in memory")
        print(f"Feature cache {where}; --cache_in_memory={FLAGS.cache_in_memory})", flush=True)
        trainer.use_feature_cache(feature_cache.cache_dataset_fn(config, cache_dir, in_memory))
    print(f"Training {config.train_steps} steps, batch {config.batch_size}, on "
          f"{trainer.strategy.num_replicas_in_sync} replica(s)"
          f"{', update compiled with XLA' if trainer.xla_update else ''}; logs in {workdir}",
          flush=True)
    trainer.train()
    print(f"Checkpoints: {os.path.join(workdir, 'checkpoints')}\n"
          f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
