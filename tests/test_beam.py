"""The import and the feature cache on Apache Beam: the single process's output, killable.

Beam is an optional extra (`pip install -e .[beam]`); without it these tests skip. The
pipelines run on the Python FnApiRunner with two worker processes (nothing downloaded).
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("apache_beam", reason="apache-beam is not installed (pip install -e "
                                          ".[beam] in a venv of its own: it pins protobuf 6)")

from soundloc_tf.dataloaders import importers, records  # noqa: E402
from soundloc_tf.pipelines import beam_import, elements, shards  # noqa: E402
from test_importers import RATE, _make_stamps, _moving_square, _write_video  # noqa: E402
from test_photo_sets import _make_photos  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TWO_WORKERS = ["--runner=DirectRunner", "--direct_num_workers=2",
               "--direct_running_mode=multi_processing"]


def _examples(directory) -> dict[str, list[tf.train.Example]]:
    """Shard file -> its examples in order, over the shards the manifest lists (checked).

    Parsed, not compared as bytes: a tf.train.Example's features are a protobuf map, whose
    serialized order may differ between processes.
    """
    record_set = records.resolve(str(directory))
    records.verify_shards(record_set)
    return {os.path.basename(path): [tf.train.Example.FromString(s.numpy())
                                     for s in tf.data.TFRecordDataset(path)]
            for path in record_set.files}


def _by_id(examples: dict[str, list[tf.train.Example]]) -> dict[str, tf.train.Example]:
    return {e.features.feature["id"].bytes_list.value[0].decode(): e
            for shard in examples.values() for e in shard}


def _without_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("seconds", "items_per_second")}


def _assert_same_import(single, beam, same_shards: bool) -> None:
    """The same samples (ids, image and audio bytes, boxes, labels), counts and report; with
    `same_shards` the same shard files holding the same samples in the same order."""
    shards_one, shards_other = _examples(single), _examples(beam)
    one, other = _by_id(shards_one), _by_id(shards_other)
    assert sorted(one) == sorted(other) and len(one) > 0
    assert [i for i in one if one[i] != other[i]] == []
    m1, m2 = (json.loads((Path(d) / "manifest.json").read_text()) for d in (single, beam))
    for key in ("format", "version", "source", "count", "labeled", "features"):
        assert m1[key] == m2[key], key
    assert m1["count"] == sum(s["count"] for s in m2["shards"])
    assert _without_timing(m1["extra"].pop("import")) == \
        _without_timing(m2["extra"].pop("import"))
    assert m1["extra"] == m2["extra"]
    if same_shards:
        assert list(shards_one) == list(shards_other)
        assert [shard == shards_other[name] for name, shard in shards_one.items()] == \
            [True] * len(shards_one)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("beam_videos")
    (root / "holiday").mkdir()
    _write_video(root / "a.mp4", 3.0, frame_fn=_moving_square, tone_hz=500)
    _write_video(root / "holiday" / "b.mkv", 3.0, frame_fn=_moving_square, tone_hz=700)
    _write_video(root / "holiday" / "b.mp4", 2.0, frame_fn=_moving_square, tone_hz=900)
    _write_video(root / "c.mp4", 2.0, frame_fn=_moving_square, tone_hz=300)
    (root / "corrupt.mp4").write_bytes(os.urandom(2000))
    return root


def test_videos_on_two_workers_equal_the_single_process(video_root, tmp_path):
    run = dict(sample_rate=RATE, clip_seconds=1.0, samples_per_shard=4)
    report, summary = importers.run_import("videos", str(video_root), str(tmp_path / "one"),
                                           pairs_per_clip=3, progress=io.StringIO(), **run)
    settings = elements.ImportSettings("videos", str(video_root), RATE, 1.0,
                                       {"pairs_per_clip": 3})
    beam_report, beam_summary = beam_import.run_beam_import(
        settings, str(tmp_path / "beam"), TWO_WORKERS, samples_per_shard=4)
    assert (summary.count, beam_summary.count) == (9, 9)  # a, holiday/b.mkv, c: 3 pairs each
    assert sorted(r.split(":")[0] for _, r in beam_report.skipped) == [
        "duplicate id", "unreadable video"]
    assert beam_report.skipped == report.skipped
    # corrupt.mp4 (item 2 of 5) and holiday/b.mp4 (item 4) are skipped: their positions'
    # shards are short, the others hold what the single process wrote in its order.
    assert [s["count"] for s in json.loads((tmp_path / "beam/manifest.json").read_text())[
        "shards"]] == [4, 2, 3]
    _assert_same_import(tmp_path / "one", tmp_path / "beam", same_shards=False)


def test_composites_and_photo_folds_on_two_workers_equal_the_single_process(tmp_path):
    _make_stamps(tmp_path / "stamps")
    _make_photos(tmp_path / "photos")
    cases = {
        "composites": (tmp_path / "stamps", {"count": 10, "image_size": 64, "seed": 3,
                                             "label_fraction": 0.5, "blend_edges": True}),
        "photos": (tmp_path / "photos", {"count": 9, "image_size": 64, "folds": 3, "fold": 1,
                                         "split": "validation"}),
        "mosaics": (tmp_path / "photos", {"count": 9, "image_size": 64, "seed": 1}),
    }
    for fmt, (source, options) in cases.items():
        single, beam = tmp_path / f"{fmt}_one", tmp_path / f"{fmt}_beam"
        importers.run_import(fmt, str(source), str(single), sample_rate=RATE,
                             clip_seconds=0.5, samples_per_shard=4, progress=io.StringIO(),
                             **options)
        beam_import.run_beam_import(elements.ImportSettings(fmt, str(source), RATE, 0.5,
                                                            options),
                                    str(beam), TWO_WORKERS, samples_per_shard=4)
        # Every scene is imported, so the shards are the single process's, file for file.
        _assert_same_import(single, beam, same_shards=True)
    manifest = json.loads((tmp_path / "composites_beam" / "manifest.json").read_text())
    assert manifest["extra"]["import"]["skipped"] == 2  # flat__0.png, bell__1.wav


def test_a_beam_import_takes_the_independent_formats_only(tmp_path):
    settings = elements.ImportSettings("flickr", str(tmp_path), RATE, 1.0)
    with pytest.raises(ValueError, match=r"format videos / composites / mosaics / photos .*"
                                         r"Received: format='flickr'"):
        beam_import.run_beam_import(settings, str(tmp_path / "out"), TWO_WORKERS)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds records"):
        shards.clear_leftovers(str(tmp_path / "out"), "data")


def _tool(*args):
    return [sys.executable, "-m", "tools.import_data", *map(str, args)]


def test_a_killed_import_leaves_no_manifest_and_the_rerun_completes(tmp_path):
    """SIGKILL to the whole pipeline (launcher and workers) once the first part is on disk;
    the rerun of the same command line clears what was left and equals the single process."""
    _make_stamps(tmp_path / "stamps")
    out = tmp_path / "out"
    command = _tool("--format=composites", f"--input={tmp_path / 'stamps'}", f"--output={out}",
                    "--count=60", "--image_size=128", "--sample_rate=8000",
                    "--clip_seconds=4", "--samples_per_shard=2", "--runner=DirectRunner",
                    *TWO_WORKERS[1:])
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while not list(out.glob(f"{shards.PART_PREFIX}-*")) and time.monotonic() < deadline:
            assert process.poll() is None, "the import ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    left = os.listdir(out)
    assert any(name.startswith(shards.PART_PREFIX) for name in left)
    assert "manifest.json" not in left
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "composites: imported 60, skipped 2" in rerun.stdout
    assert "Wrote 60 samples" in rerun.stdout
    assert not [n for n in os.listdir(out) if n.startswith((shards.PART_PREFIX, ".tmp-"))]
    importers.run_import("composites", str(tmp_path / "stamps"), str(tmp_path / "one"),
                         sample_rate=8000, clip_seconds=4, count=60, image_size=128,
                         samples_per_shard=2, progress=io.StringIO())
    _assert_same_import(tmp_path / "one", out, same_shards=True)


# ---------------------------------------------------------------------------
# The feature cache.


def test_the_beam_cache_equals_write_cache_within_float16_rounding(tmp_path):
    from soundloc_tf.config import get_config
    from soundloc_tf.dataloaders import data
    from soundloc_tf.modeling.models import build_model
    from soundloc_tf.pipelines import beam_cache
    from soundloc_tf.train import feature_cache

    config = get_config("tiny", freeze_image_tower=True, freeze_audio_tower=True)
    samples = [{k: v.numpy() for k, v in e.items()} | {"sample_rate": config.sample_rate}
               for e in data.synthetic_dataset(config, 0, count=22)]
    records.write_records(samples, str(tmp_path / "records"), sample_rate=config.sample_rate,
                          clip_seconds=config.num_samples / config.sample_rate,
                          source="synthetic", samples_per_shard=5)
    tf.keras.utils.set_random_seed(4)
    model = build_model(config)
    single = feature_cache.write_cache(
        model, config, records.read_records(config, str(tmp_path / "records"), training=False),
        str(tmp_path / "single"), batch_size=8, samples_per_shard=8)
    beam = beam_cache.run_beam_cache(model, config, str(tmp_path / "records"),
                                     str(tmp_path / "beam"), TWO_WORKERS, batch_size=4,
                                     samples_per_shard=8)
    timing = ("seconds", "shards")
    assert {k: v for k, v in beam.items() if k not in timing} == \
        {k: v for k, v in single.items() if k not in timing}
    assert [(s["file"], s["count"]) for s in beam["shards"]] == \
        [(s["file"], s["count"]) for s in single["shards"]] == \
        [("features-00000-of-00003.tfrecord", 8), ("features-00001-of-00003.tfrecord", 8),
         ("features-00002-of-00003.tfrecord", 6)]
    # Nothing else is left: no part, no copy of the weights.
    assert sorted(os.listdir(tmp_path / "beam")) == sorted(os.listdir(tmp_path / "single"))
    read = [list(feature_cache.read_cache(config, str(tmp_path / d), training=False,
                                          model=model)) for d in ("single", "beam")]
    assert [e["id"].numpy() for e in read[0]] == [e["id"].numpy() for e in read[1]]
    for a, b in zip(*read):
        for name in ("boxes", "labeled", "class_id"):
            np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
        for name in ("visual_map", "audio_feature"):
            x, y = (t.numpy().astype(np.float32) for t in (a[name], b[name]))
            # float16 keeps 11 significant bits: one rounding step is 2^-10 of the value.
            np.testing.assert_allclose(y, x, rtol=2.0 ** -10, atol=1e-6)
