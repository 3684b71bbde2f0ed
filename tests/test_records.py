"""The on-disk format: round trip, augmentation that moves boxes, checksums, resume."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf.dataloaders import data, records
from soundloc_tf.config import get_config

TINY = get_config("tiny")


def _scene_samples(count, size=128, rate=8000, seconds=1.5):
    """Grey images with one red rectangle whose normalised box is the annotation."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        image = np.full([size, size, 3], 90, np.uint8)
        x1, y1 = rng.integers(0, size // 2, 2)
        w, h = rng.integers(size // 6, size // 2, 2)
        image[y1:y1 + h, x1:x1 + w] = [230, 20, 20]
        box = [x1 / size, y1 / size, (x1 + w) / size, (y1 + h) / size]
        samples.append({
            "image": image, "waveform": rng.uniform(-0.5, 0.5, int(rate * seconds)),
            "sample_rate": rate, "boxes": [[box], [box]] if i % 2 else [[box]],
            "labeled": i % 3 == 0, "class_id": i % 4, "id": f"scene-{i:03d}"})
    return samples


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records") / "scenes")
    summary = records.write_records(_scene_samples(12), directory, sample_rate=8000,
                                    clip_seconds=1.5, source="test", samples_per_shard=5,
                                    image_format="png")
    assert summary.count == 12 and len(summary.shards) == 3
    return directory


def _red_box(image):
    """The normalised bounding box of the red pixels of a [S, S, 3] image in [0, 1]."""
    red = (image[..., 0] > 0.6) & (image[..., 1] < 0.35)
    ys, xs = np.nonzero(red)
    s = image.shape[0]
    return np.array([xs.min() / s, ys.min() / s, (xs.max() + 1) / s, (ys.max() + 1) / s])


def test_element_spec_matches_the_synthetic_data(record_dir):
    for preset in ("tiny", "paper"):
        config = get_config(preset)
        dataset = records.read_records(config, record_dir, training=False)
        assert dataset.element_spec == data.element_spec(config)
        assert records.read_records(config, record_dir, training=True).element_spec == \
            data.element_spec(config)


def test_manifest_lists_counts_and_checksums(record_dir):
    manifest = json.load(open(os.path.join(record_dir, "manifest.json")))
    assert manifest["count"] == 12 and manifest["labeled"] == 4
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 2]
    assert manifest["features"] == {"sample_rate": 8000, "clip_seconds": 1.5,
                                    "audio_dtype": "int16",
                                    "boxes": "normalised x1,y1,x2,y2 per annotator"}
    for shard in manifest["shards"]:
        assert records.sha256_of(os.path.join(record_dir, shard["file"])) == shard["sha256"]
    assert not [f for f in os.listdir(record_dir) if f.startswith(".tmp")]


def test_evaluation_round_trip_keeps_pixels_audio_and_boxes(record_dir):
    samples = _scene_samples(12)
    config = TINY.replace(image_size=128, clip_seconds=1.5)
    read = list(records.read_records(config, record_dir, training=False))
    assert [e["id"].numpy().decode() for e in read] == [s["id"] for s in samples]
    for sample, element in zip(samples, read):
        np.testing.assert_allclose(element["image"].numpy() * 255, sample["image"], atol=0.51)
        np.testing.assert_allclose(element["waveform"].numpy(), sample["waveform"], atol=2e-5)
        boxes = element["boxes"].numpy()
        expected = np.zeros([3, 4, 4], np.float32)
        for a, annotator in enumerate(sample["boxes"]):
            expected[a, :len(annotator)] = annotator
        np.testing.assert_allclose(boxes, expected, atol=1e-6)
        assert bool(element["labeled"]) == sample["labeled"]
        assert int(element["class_id"]) == sample["class_id"]


def test_resize_and_audio_crop_for_another_preset(record_dir):
    # Tiny: 96 px and 1.0 s at 8 kHz from 128 px and 1.5 s: the centre second.
    element = next(iter(records.read_records(TINY, record_dir, training=False)))
    sample = _scene_samples(1)[0]
    np.testing.assert_allclose(element["waveform"].numpy(), sample["waveform"][2000:10000],
                               atol=2e-5)
    np.testing.assert_allclose(_red_box(element["image"].numpy()),
                               element["boxes"].numpy()[0, 0], atol=1.5 / 96)


def test_training_crop_and_flip_move_the_boxes_with_the_pixels(record_dir):
    dataset = records.read_records(TINY, record_dir, training=True, seed=5)
    checked = 0
    for element in dataset.take(48):
        image, boxes = element["image"].numpy(), element["boxes"].numpy()
        valid = boxes[..., 2] > boxes[..., 0]
        if not valid.any():
            continue  # the crop cut the object out: its box was dropped with it
        box = boxes[valid][0]
        red = (image[..., 0] > 0.6) & (image[..., 1] < 0.35)
        s = image.shape[0]
        x1, y1, x2, y2 = np.round(box * s).astype(int)
        inside = red[y1:y2, x1:x2].mean()
        outside = (red.sum() - red[y1:y2, x1:x2].sum()) / max(s * s - (y2 - y1) * (x2 - x1), 1)
        assert inside > 0.85 and outside < 0.02, (element["id"], box, inside, outside)
        np.testing.assert_allclose(_red_box(image), box, atol=2.5 / s)
        checked += 1
    assert checked >= 30
    # The same sample comes out in several geometries: crops and flips happened.
    by_id = {}
    for element in dataset.take(48):
        by_id.setdefault(element["id"].numpy(), set()).add(
            tuple(np.round(element["boxes"].numpy()[0, 0], 3)))
    assert max(len(v) for v in by_id.values()) >= 2


def test_training_stream_is_seeded_shuffled_and_resumable(record_dir):
    def ids(seed, start=0, n=30):
        dataset = records.read_records(TINY, record_dir, training=True, seed=seed, start=start)
        return [e["id"].numpy() for e in dataset.take(n)]

    first = ids(1)
    assert first == ids(1)
    assert first != ids(2)
    assert sorted(set(first[:12])) != first[:12]  # shuffled
    assert len(set(first[:12])) == 12  # each epoch visits every sample once
    assert ids(1, start=17, n=13) == first[17:30]  # resume = the same stream, skipped
    # Augmentation is a function of (seed, position): resumed elements are identical.
    resumed = next(iter(records.read_records(TINY, record_dir, training=True, seed=1, start=3)))
    original = list(records.read_records(TINY, record_dir, training=True, seed=1).take(4))[3]
    np.testing.assert_array_equal(resumed["image"].numpy(), original["image"].numpy())


def test_explicit_worker_sharding_partitions_the_samples(record_dir):
    parts = [{e["id"].numpy() for e in records.read_records(
        TINY, record_dir, training=False, num_shards=2, shard_index=i)} for i in range(2)]
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 12


def test_a_pattern_reads_some_shards(record_dir):
    pattern = os.path.join(record_dir, "data-0000[02]-of-00003.tfrecord")
    assert len(list(records.read_records(TINY, pattern, training=False))) == 7


def test_corrupted_shard_is_refused_by_name(tmp_path):
    directory = str(tmp_path / "bad")
    records.write_records(_scene_samples(4), directory, sample_rate=8000, clip_seconds=1.5,
                          source="test", samples_per_shard=2)
    shard = os.path.join(directory, "data-00001-of-00002.tfrecord")
    with open(shard, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="corrupted shard.*data-00001-of-00002.tfrecord"):
        records.read_records(TINY, directory, training=False)
    with open(shard, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="corrupted shard \\(size.*data-00001-of-00002"):
        records.read_records(TINY, directory, training=True)


def test_failed_write_leaves_no_manifest_and_no_temporary_files(tmp_path):
    samples = _scene_samples(5)
    samples[3]["boxes"] = [[[0.5, 0.5, 0.2, 0.9]]]  # x2 < x1
    directory = tmp_path / "partial"
    with pytest.raises(ValueError, match="x1 < x2"):
        records.write_records(samples, str(directory), sample_rate=8000, clip_seconds=1.5,
                              source="test", samples_per_shard=2)
    assert os.listdir(directory) == []
    with pytest.raises(ValueError, match="no manifest.json"):
        records.read_records(TINY, str(directory), training=False)


def test_writer_refuses_duplicates_wrong_rates_and_existing_records(tmp_path, record_dir):
    samples = _scene_samples(3)
    samples[2]["id"] = samples[0]["id"]
    with pytest.raises(ValueError, match="duplicate sample id"):
        records.write_records(samples, str(tmp_path / "a"), sample_rate=8000, clip_seconds=1.5,
                              source="test")
    with pytest.raises(ValueError, match="sample rate 16000. Received: sample_rate=8000"):
        records.write_records(_scene_samples(1), str(tmp_path / "b"), sample_rate=16000,
                              clip_seconds=1.5, source="test")
    with pytest.raises(ValueError, match="already holds records"):
        records.write_records(_scene_samples(1), record_dir, sample_rate=8000, clip_seconds=1.5,
                              source="test")


def test_extra_boxes_and_annotators_are_dropped_when_packed():
    boxes = tf.constant([[0, 0, .1, .1]] * 6 + [[.2, .2, .3, .3]] * 2, tf.float32)
    annotator = tf.constant([0, 0, 0, 0, 0, 1, 3, 2], tf.int64)
    packed = records.pack_boxes(boxes, annotator).numpy()
    assert (packed[0, :, 2] > 0).sum() == 4  # 5 boxes of annotator 0 -> 4
    assert (packed[1, :, 2] > 0).sum() == 1 and (packed[2, :, 2] > 0).sum() == 1
    np.testing.assert_allclose(packed[2, 0], [.2, .2, .3, .3])  # annotator 3 dropped


def test_records_made_at_another_rate_are_resampled(tmp_path):
    rate, n = 16000, 16000
    t = np.arange(n) / rate
    sample = {"image": np.zeros([32, 32, 3], np.uint8), "sample_rate": rate,
              "waveform": 0.5 * np.sin(2 * np.pi * 500 * t), "id": "tone"}
    records.write_records([sample], str(tmp_path / "r"), sample_rate=rate, clip_seconds=1.0,
                          source="test", audio_dtype="float32")
    element = next(iter(records.read_records(TINY, str(tmp_path / "r"), training=False)))
    audio = element["waveform"].numpy()  # 8 kHz, 1 s
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 8000 / len(audio) == pytest.approx(500, abs=1)
    assert np.max(np.abs(audio[100:-100])) == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_train_tool_trains_from_records(record_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [sys.executable, "-m", "soundloc_tf.tools.train", f"--workdir={tmp_path / 'run'}",
            f"--records={record_dir}", f"--validation_records={record_dir}", "--batch_size=4",
            "--eval_every=100", "--checkpoint_every=1", "--num_summary_images=0"]
    first = subprocess.run(args + ["--train_steps=2"], cwd=root, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "step 2/2" in first.stdout and "validation at step 2" in first.stdout
    missing = subprocess.run(args[:3] + ["--records=/nonexistent/records"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no record files match" in missing.stderr
