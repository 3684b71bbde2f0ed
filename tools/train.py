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

--records (record directories or shard patterns, comma-separated, see
docs/DATA.md) trains on imported data instead: shuffled with --train_seed,
augmented, repeated, and on resume skipped to step * batch_size.  Several
sets are mixed, each element drawn from set i with probability weight i:
--records_weights=0.5,0.3,0.2 (normalised), by default each set's share of
all pairs (as likely per pair as one concatenated set).  One line per set
gives its pairs, labelled pairs and weight.  The skip replays the same
stream, mix included, when the files are unchanged; with other files (or
another worker count) the resume is approximate.  --validation_records takes
a list too: the sets are concatenated in order.

--annotations (with --records) trains the semi-supervised term on the labels
drawn in soundloc-studio (<records>/annotations.json): exactly its pairs with
boxes are labelled, whatever the records hold, and their number is printed.
With several sets, give one layer per set, comma-separated, '-' for a set
that keeps its own labels.  With --tower_mode=cached, each set of a list is
cached in its own <feature_cache>/<set name>-<checksum> and the caches mixed.
"""

from __future__ import annotations

import os

from absl import flags

from . import common

flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, TensorBoard logs. "
                    "Default: runs/<preset>.")
flags.DEFINE_string("records", None, "Train on these record sets (directories or shard "
                    "patterns, comma-separated; several are mixed, see --records_weights) "
                    "instead of the synthetic scenes.")
flags.DEFINE_string("records_weights", None, "With several --records: each set's share of "
                    "the mix, comma-separated numbers > 0 (normalised). Default: in "
                    "proportion to each set's pairs.")
flags.DEFINE_string("annotations", None, "With --records: the annotation layer (labels "
                    "drawn in soundloc-studio, <records>/annotations.json) whose labelled "
                    "pairs, and only those, the semi-supervised term trains on; with several "
                    "sets one per set, comma-separated, '-' for a set's own labels.")
flags.DEFINE_string("validation_records", None, "Validate on these record sets (comma-"
                    "separated, concatenated in order; the first "
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
RUN_FLAGS = ("preset", "records", "records_weights", "annotations", "validation_records",
             "tower_mode", "feature_cache", "cache_dtype", "cache_image_tower",
             "cache_in_memory", "cache_samples")


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
    if FLAGS.records_weights and not FLAGS.records:
        raise ValueError(f"--records_weights weighs the sets of --records; it needs them. "
                         f"Received: --records_weights={FLAGS.records_weights!r}")
    if FLAGS.annotations and not (config.label_fraction > 0 and config.supervised_weight > 0):
        raise ValueError(f"--annotations needs the semi-supervised term on (label_fraction > 0 "
                         f"and supervised_weight > 0). Received: label_fraction="
                         f"{config.label_fraction}, supervised_weight={config.supervised_weight}")
    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.preset)
    from soundloc_tf.dataloaders import records
    from soundloc_tf.train.training import Trainer, make_strategy  # after flag parsing: slow

    # Only manifests are read here, so a bad list fails in one line before the slow set-up.
    train_sets = (records.parse_record_sets(FLAGS.records, FLAGS.records_weights,
                                            FLAGS.annotations) if FLAGS.records else None)
    validation_sets = (records.parse_record_sets(FLAGS.validation_records)
                       if FLAGS.validation_records else None)
    # First, before any op: MultiWorkerMirroredStrategy (TF_CONFIG set) configures the
    # collectives at program start-up and refuses once an op has run (reading records does).
    strategy = make_strategy()
    dataset_fn, validation = None, None
    if train_sets:
        for line in records.describe_record_sets(train_sets, training=True):
            print(line, flush=True)
        records.read_record_sets(config, train_sets, training=True)  # fail early, verified
        dataset_fn = lambda start: records.read_record_sets(  # noqa: E731
            config, train_sets, training=True, seed=config.train_seed, start=start,
            verify=False)
        layered = [s for s in train_sets if s.annotations]
        if layered:
            print(f"Semi-supervised on {sum(s.labeled for s in layered)} labelled pairs of "
                  f"{sum(s.count for s in layered)} (annotation layer "
                  f"{', '.join(s.annotations for s in layered)})", flush=True)
    if validation_sets:
        from soundloc_tf.train.training import VALIDATION_SAMPLES_DURING_TRAINING

        for line in records.describe_record_sets(validation_sets, training=False):
            print(line, flush=True)
        total = sum(s.count for s in validation_sets)
        if len(validation_sets) > 1:  # the first set may fill the whole validation sample
            print(f"Validating on the first {min(total, VALIDATION_SAMPLES_DURING_TRAINING)} "
                  f"of their {total} pairs, concatenated in order", flush=True)
        validation = records.read_record_sets(config, validation_sets, training=False).take(
            VALIDATION_SAMPLES_DURING_TRAINING)
    trainer = Trainer(config, workdir, strategy, dataset_fn=dataset_fn, validation=validation,
                      run_flags={name: FLAGS[name].value for name in RUN_FLAGS})
    if FLAGS.tower_mode == "cached":
        from soundloc_tf.dataloaders import data
        from soundloc_tf.train import feature_cache

        cache_dir = FLAGS.feature_cache or os.path.join(workdir, "feature_cache")
        if train_sets and len(train_sets) > 1:  # one cache per set, mixed as the sets are
            sources = {os.path.join(cache_dir, s.key): records.read_record_sets(
                config, [s], training=False, verify=False) for s in train_sets}
        elif train_sets:
            sources = {cache_dir: records.read_record_sets(config, train_sets, training=False,
                                                           verify=False)}
        else:
            sources = {cache_dir: data.synthetic_dataset(config, config.train_seed,
                                                         count=FLAGS.cache_samples)}
        manifests = [feature_cache.ensure_cache(trainer.model, config, source, directory,
                                                dtype=FLAGS.cache_dtype,
                                                image_tower=FLAGS.cache_image_tower)
                     for directory, source in sources.items()]
        if FLAGS.cache_in_memory == "auto":
            in_memory = feature_cache.fits_in_memory(manifests)
        else:
            in_memory = FLAGS.cache_in_memory == "true"
        held = sum(feature_cache.in_memory_bytes(m) for m in manifests) / 1e9
        where = (f"held in memory ({held:.2f} GB" if in_memory
                 else f"streamed from disk ({held:.2f} GB if held in memory")
        print(f"Feature cache {where}; --cache_in_memory={FLAGS.cache_in_memory})", flush=True)
        if len(sources) == 1:
            cached = feature_cache.cache_dataset_fn(config, cache_dir, in_memory)
        else:
            cached = feature_cache.cache_dataset_fn(config, list(sources), in_memory,
                                                    weights=[s.weight for s in train_sets])
        trainer.use_feature_cache(cached)
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
