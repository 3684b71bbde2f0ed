"""Several record sets in one run: the weighted mix, its resume, the counts, bad lists.

Three small sets of 6, 8 and 10 pairs (ids "a-0", "b-3", ...; every odd pair boxed
and labelled) are written with `records.write_records` at the tiny preset's audio
settings, so nothing is resampled and the reads are fast.
"""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf.config import get_config
from soundloc_tf.dataloaders import annotations, data, records
from soundloc_tf.modeling.models import build_model
from soundloc_tf.train import feature_cache

ROOT = Path(__file__).resolve().parent.parent
TINY = get_config("tiny")
SIZES = {"a": 6, "b": 8, "c": 10}
WEIGHTS = (0.5, 0.3, 0.2)
# Draws for the empirical shares: the binomial standard deviation of a share is at most
# sqrt(0.25 / 1200) = 0.0144, so TOLERANCE is more than 3 of them.
DRAWS = 1200
TOLERANCE = 0.05
BOX = [0.1, 0.2, 0.6, 0.7]


def _samples(name, count, size=32):
    rng = np.random.default_rng(len(name) + count)
    return [{"image": rng.integers(0, 255, [size, size, 3], dtype=np.uint8),
             "waveform": rng.uniform(-0.5, 0.5, int(TINY.sample_rate * TINY.clip_seconds)),
             "sample_rate": TINY.sample_rate, "boxes": [[BOX]] if i % 2 else [],
             "id": f"{name}-{i}"} for i in range(count)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    made = {}
    for name, count in SIZES.items():
        made[name] = str(root / name)
        records.write_records(_samples(name, count), made[name],
                              sample_rate=TINY.sample_rate, clip_seconds=TINY.clip_seconds,
                              source="test", samples_per_shard=4, image_format="png")
    return made


def _set_of(element_id) -> str:
    return element_id.numpy().decode().split("-")[0]


def _ids(dataset, count):
    return [e["id"].numpy().decode() for e in dataset.take(count)]


def test_the_mix_draws_each_set_in_the_share_its_weight_gives(sets):
    sources = records.parse_record_sets(",".join(sets.values()), ",".join(map(str, WEIGHTS)))
    assert [s.weight for s in sources] == pytest.approx(WEIGHTS)
    mixed = records.read_record_sets(TINY, sources, training=True, seed=1)
    assert mixed.element_spec == data.element_spec(TINY)
    drawn = collections.Counter(_set_of(e["id"]) for e in mixed.take(DRAWS))
    for name, weight in zip(SIZES, WEIGHTS):
        assert abs(drawn[name] / DRAWS - weight) < TOLERANCE, drawn


def test_weights_are_normalised_and_default_to_each_sets_share_of_the_pairs(sets):
    given = records.parse_record_sets([sets["a"], sets["b"]], [3, 1])
    assert [s.weight for s in given] == [0.75, 0.25]
    default = records.parse_record_sets(list(sets.values()))
    total = sum(SIZES.values())
    assert [s.weight for s in default] == pytest.approx([n / total for n in SIZES.values()])


def test_a_resumed_mix_makes_the_same_draws_from_the_same_samples(sets):
    sources = records.parse_record_sets(list(sets.values()), WEIGHTS)
    read = lambda start: list(records.read_record_sets(  # noqa: E731
        TINY, sources, training=True, seed=5, start=start).take(40 - start))
    whole, resumed = read(0), read(17)
    assert [e["id"].numpy() for e in whole[17:]] == [e["id"].numpy() for e in resumed]
    for old, new in zip(whole[17:], resumed):  # the same crops and audio windows too
        np.testing.assert_array_equal(old["image"].numpy(), new["image"].numpy())
        np.testing.assert_array_equal(old["waveform"].numpy(), new["waveform"].numpy())
    other_seed = _ids(records.read_record_sets(TINY, sources, training=True, seed=6), 40)
    assert other_seed != [e["id"].numpy().decode() for e in whole]


def test_one_set_reads_exactly_as_read_records(sets):
    sources = records.parse_record_sets(sets["b"])
    assert sources[0].weight == 1.0
    listed = list(records.read_record_sets(TINY, sources, training=True, seed=3).take(20))
    alone = list(records.read_records(TINY, sets["b"], training=True, seed=3).take(20))
    for one, other in zip(listed, alone, strict=True):
        assert one["id"].numpy() == other["id"].numpy()
        np.testing.assert_array_equal(one["image"].numpy(), other["image"].numpy())


def test_validation_concatenates_the_sets_in_the_order_given(sets):
    sources = records.parse_record_sets([sets["c"], sets["a"]])
    ids = [e["id"].numpy().decode()
           for e in records.read_record_sets(TINY, sources, training=False)]
    assert len(ids) == SIZES["c"] + SIZES["a"] == 16
    assert ids == [f"c-{i}" for i in range(10)] + [f"a-{i}" for i in range(6)]
    assert len(_ids(records.read_record_sets(TINY, sources, training=False, start=12), 99)) == 4


def test_each_set_is_described_by_its_pairs_labelled_pairs_and_weight(sets):
    sources = records.parse_record_sets([sets["a"], sets["c"]], "1,3")
    assert records.describe_record_sets(sources, training=True) == [
        f"Training records {sets['a']}: 6 pairs, 3 labelled, weight 0.250",
        f"Training records {sets['c']}: 10 pairs, 5 labelled, weight 0.750"]
    # A shard pattern is counted over its own shards (the manifest counts the directory).
    pattern = os.path.join(sets["c"], "data-00000-of-*.tfrecord")
    assert records.describe_record_sets(records.parse_record_sets(pattern), False) == [
        f"Validation records {pattern}: 4 pairs, 2 labelled"]


def test_annotation_layers_align_with_the_sets_and_dash_keeps_a_sets_own_labels(sets,
                                                                              tmp_path):
    layer = str(tmp_path / "annotations.json")
    for sample_id in ("b-0", "b-2", "b-4"):  # pairs the records hold unlabelled
        annotations.save_label(layer, sample_id, [BOX], False, "ana", 0)
    sources = records.parse_record_sets([sets["a"], sets["b"]], annotations=f"-,{layer}")
    assert [s.annotations for s in sources] == [None, layer]
    assert [s.labeled for s in sources] == [3, 3]
    labelled = {e["id"].numpy().decode() for e in records.read_record_sets(
        TINY, sources, training=False) if e["labeled"]}
    assert labelled == {"a-1", "a-3", "a-5", "b-0", "b-2", "b-4"}


@pytest.mark.parametrize("records_arg,weights,layers,fragment", [
    ("{a},,{b}", None, None, "empty item"),
    ("{a},", None, None, "empty item"),
    ("", None, None, "empty item"),
    ("{a},{b}", "0.5", None, "one weight per record set (2 sets, 1 weights)"),
    ("{a},{b}", "1,0", None, "finite number > 0"),
    ("{a},{b}", "1,-2", None, "finite number > 0"),
    ("{a},{b}", "1,nan", None, "finite number > 0"),
    ("{a},{b}", "inf,1", None, "finite number > 0"),
    ("{a},{b}", "1,x", None, "weights are numbers"),
    ("{a},{missing}", None, None, "no record files match"),
    ("{a},{b},{a}", None, None, "share shards"),
    ("{a},{a}/data-00000-of-00002.tfrecord", None, None, "share shards"),
    ("{a},{b}", None, "{a}/annotations.json", "one annotation layer per record set"),
])
def test_every_bad_list_is_refused_naming_what_was_received(sets, tmp_path, records_arg,
                                                            weights, layers, fragment):
    paths = {**sets, "missing": str(tmp_path / "missing")}
    given = records_arg.format(**paths)
    layers = layers.format(**paths) if layers else None
    with pytest.raises(ValueError) as error:
        records.parse_record_sets(given, weights, layers)
    message = str(error.value)
    assert fragment in message and f"Received: records={given!r}" in message
    if weights is not None:
        assert f"weights={weights!r}" in message


def test_per_set_feature_caches_mix_with_the_same_draws_as_the_records(sets, tmp_path):
    config = TINY.replace(freeze_image_tower=True, freeze_audio_tower=True, train_seed=2)
    tf.keras.utils.set_random_seed(0)
    model = build_model(config)
    sources = records.parse_record_sets([sets["a"], sets["c"]], "3,1")
    directories = []
    for source in sources:
        directories.append(str(tmp_path / source.key))
        manifest = feature_cache.write_cache(
            model, config, records.read_record_sets(config, [source], training=False),
            directories[-1])
        assert manifest["count"] == source.count
    assert [os.path.basename(d).split("-")[0] for d in directories] == ["a", "c"]
    cached = feature_cache.cache_dataset_fn(config, directories, weights=[0.75, 0.25])
    from_cache = [_set_of(e["id"]) for e in cached(0).take(DRAWS)]
    assert abs(from_cache.count("a") / DRAWS - 0.75) < TOLERANCE
    # The choice of set, element by element, is the live mix's: the same seed, weights.
    live = records.read_record_sets(config, sources, training=True, seed=config.train_seed)
    assert from_cache[:60] == [_set_of(e["id"]) for e in live.take(60)]
    assert [_set_of(e["id"]) for e in cached(25).take(35)] == from_cache[25:60]
    with pytest.raises(ValueError, match="one weight each"):
        feature_cache.cache_dataset_fn(config, directories, weights=[1.0])


def test_a_sets_key_follows_its_shards_not_its_place_in_the_list(sets):
    forward = records.parse_record_sets([sets["a"], sets["b"]])
    backward = records.parse_record_sets([sets["b"], sets["a"]])
    assert forward[0].key == backward[1].key and forward[0].key != forward[1].key
    digits = forward[0].key.split("-")[1]
    assert len(digits) == records.KEY_DIGITS and set(digits) <= set("0123456789abcdef")


def _train(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "soundloc_tf.tools.train", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flags,fragment", [
    (["--records={a},,{b}"], "Received: records="),
    (["--records={a},{b}", "--records_weights=1,2,3"], "one weight per record set"),
])
def test_the_command_line_refuses_a_bad_list_in_one_line_with_exit_code_2(sets, tmp_path,
                                                                         flags, fragment):
    result = _train(f"--workdir={tmp_path}", *(f.format(**sets) for f in flags))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


@pytest.mark.slow
def test_a_cached_run_on_two_weighted_sets_caches_each_and_trains(sets, tmp_path):
    args = [f"--workdir={tmp_path}", f"--records={sets['a']},{sets['c']}",
            "--records_weights=3,1", f"--validation_records={sets['b']},{sets['a']}",
            "--tower_mode=cached", "--batch_size=4", "--eval_every=100",
            "--num_summary_images=0"]
    result = _train(*args, "--train_steps=2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Training records {sets['a']}: 6 pairs, 3 labelled, weight 0.750" in out
    assert f"Training records {sets['c']}: 10 pairs, 5 labelled, weight 0.250" in out
    assert f"Validation records {sets['b']}: 8 pairs, 4 labelled" in out
    assert "Validating on the first 14 of their 14 pairs" in out
    caches = sorted((tmp_path / "feature_cache").iterdir())
    assert [c.name.split("-")[0] for c in caches] == ["a", "c"]
    assert [json.loads((c / "manifest.json").read_text())["count"] for c in caches] == [6, 10]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["run_flags"]["records_weights"] == "3,1"
    again = _train(*args, "--train_steps=3")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("samples (reused)") == 2 and "step 3/3" in again.stdout
