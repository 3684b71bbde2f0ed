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

With TF_CONFIG set (several workers, docs/CLUSTER.md), --tower_mode=cached needs a
--feature_cache every worker can read: the chief builds it (or reuses it), the others wait
for it, and each worker reads only its --cache_parts' shards.  --dry_run checks the flags
and TF_CONFIG, prints the settings in one line and exits: no file is read.
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
flags.DEFINE_integer("cache_parts", None, "tower_mode=cached: read the cache in this many "
                     "parts, each a shuffle of every n-th shard; a global batch takes an "
                     "equal slice of each, and each worker reads only its parts' shards. One "
                     "worker with the same number trains on the same batches. Default: the "
                     "workers TF_CONFIG names (1 without).", lower_bound=1)
flags.DEFINE_boolean("dry_run", False, "Check the flags and TF_CONFIG, print the settings "
                     "the run would train with and exit; reads no file.")
common.define_config_flags()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    from soundloc_tf.tasks import localization  # after flag parsing: slow
    from soundloc_tf.train.training import make_strategy

    data_config = localization.DataConfig(**{name: FLAGS[name].value for name in (
        "records", "records_weights", "annotations", "validation_records", "tower_mode",
        *localization.CACHE_SETTINGS)})
    config, explicit = common.config_from_flags(), common.overridden_fields()
    tf_config = os.environ.get("TF_CONFIG")
    resolved, tower_mode, resolved_data = localization.check_settings(
        config, data_config, explicit, tf_config)
    if tower_mode != "cached":  # the cache flags would be silently ignored
        for name in localization.CACHE_SETTINGS:
            if FLAGS[name].present:
                raise ValueError(f"--{name} needs --tower_mode=cached. Received: "
                                 f"--{name}={FLAGS[name].value!r}")
    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.preset)
    if FLAGS.dry_run:
        print(f"Dry run: --tower_mode={tower_mode} on {localization.cluster_workers(tf_config)}"
              f" worker(s), global batch {resolved.batch_size}, --cache_parts="
              f"{resolved_data.cache_parts}, --feature_cache={resolved_data.feature_cache}, "
              f"--workdir={workdir}; nothing read or trained")
        return
    task = localization.LocalizationTask(config, data_config, explicit=explicit)
    # First, before any op: MultiWorkerMirroredStrategy (TF_CONFIG set) configures the
    # collectives at program start-up and refuses once an op has run (reading records does).
    strategy = make_strategy()
    task.train(workdir, strategy, run_flags={"preset": FLAGS.preset})
    print(f"Checkpoints: {os.path.join(workdir, 'checkpoints')}\n"
          f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


def run() -> None:
    common.run_tool(main, interrupted=common.INTERRUPTED_RESUMABLE)


if __name__ == "__main__":
    run()
