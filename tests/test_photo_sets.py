"""Whole photos: leave-photos-out folds, mosaics whose truth is the sounding tile, photos."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from soundloc_tf.dataloaders import importers, records
from soundloc_tf.config import get_config

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "realsets" / "photos"
STAMPS = ROOT.parent / "shared" / "realsets" / "stamps"
RATE = 8000
# class -> (group, colour, tone Hz); cow and bison sound alike, as do the two drums.
CLASSES = {"cow": ("cattle", (200, 40, 40), 300), "bison": ("cattle", (40, 200, 40), 450),
           "cat": ("cat", (40, 40, 200), 600), "taiko": ("drums", (200, 200, 40), 750),
           "bongo": ("drums", (200, 40, 200), 900), "horse": ("horse", (40, 200, 200), 1050),
           "goose": ("goose", (240, 240, 240), 1200)}


def _tone(freq, seconds=0.5):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _make_photos(root: Path) -> None:
    """One 120x90 photo per class: grey, the class colour inside its box; one tone each."""
    (root / "photos").mkdir(parents=True)
    (root / "sounds").mkdir()
    photos, sounds = [], []
    for i, (name, (group, colour, freq)) in enumerate(CLASSES.items()):
        image = np.full([90, 120, 3], 110, np.uint8)
        image[30:60, 40:100] = colour
        Image.fromarray(image).save(root / "photos" / f"{name}__0.jpg", quality=95)
        photos.append({"file": f"photos/{name}__0.jpg", "class": name,
                       "boxes": [[40 / 120, 30 / 90, 100 / 120, 60 / 90]]})
        soundfile.write(root / "sounds" / f"{name}__0.wav", _tone(freq), RATE)
        sounds.append({"file": f"sounds/{name}__0.wav", "class": name,
                       "path_in_package": f"pkg/{name}.ogg"})
    photos.append({"file": "photos/ghost__0.jpg", "class": "cat", "boxes": [[0, 0, 1, 1]]})
    photos.append({"file": "photos/cat__0.jpg", "class": "cat", "boxes": [[0.5, 0.5, 0.2, 1]]})
    (root / "manifest.json").write_text(json.dumps({
        "groups": {k: v[0] for k, v in CLASSES.items()}, "photos": photos, "sounds": sounds}))


@pytest.fixture()
def photo_dir(tmp_path):
    _make_photos(tmp_path / "photos_set")
    return tmp_path / "photos_set"


def _load(root):
    report = importers.ImportReport("photos")
    return importers.load_photo_set(str(root), RATE, report, io.StringIO()), report


def test_unusable_photos_are_skipped_with_their_reason(photo_dir):
    photo_set, report = _load(photo_dir)
    assert len(photo_set.photos) == 7 and len(photo_set.sounds) == 7
    assert sorted(r for _, r in report.skipped) == [
        "missing image", "no box in [0, 1] with x1 < x2, y1 < y2"]


def test_folds_hold_every_class_once_and_spread_the_groups(photo_dir):
    photo_set, _ = _load(photo_dir)
    folds = importers.photo_folds(photo_set, 2)
    held = [c for f in folds for c in f["classes"]]
    assert sorted(held) == sorted(CLASSES)  # each class validates in exactly one fold
    for fold in folds:
        groups = [CLASSES[c][0] for c in fold["classes"]]
        assert len(set(groups)) >= len(groups) - 1  # alike classes split where they can be
        assert fold["sources"] == sorted(f"pkg/{c}.ogg" for c in fold["classes"])
    # A fold's training split never sees its photos or recordings.
    train = importers.split_photo_set(photo_set, folds[0], "train")
    validation = importers.split_photo_set(photo_set, folds[0], "validation")
    assert {p["class"] for p in train.photos}.isdisjoint(folds[0]["classes"])
    assert {s["class"] for s in train.sounds}.isdisjoint(folds[0]["classes"])
    assert sorted(p["class"] for p in validation.photos) == folds[0]["classes"]
    with pytest.raises(ValueError, match=r"folds must lie in \[2, 7\] \(the number of "
                       r"classes with photos\). Received: folds=8"):
        importers.photo_folds(photo_set, 8)


def test_mosaic_tiles_are_whole_photos_of_distinct_groups_and_the_truth_is_one_tile(photo_dir):
    photo_set, _ = _load(photo_dir)
    for index in range(12):
        rng = np.random.default_rng([3, index])
        mosaic = importers.compose_mosaic(photo_set, rng, 128, RATE, grid=2, augment=False)
        groups = [CLASSES[c][0] for c in mosaic["classes"]]
        assert len(set(groups)) == 4
        s = mosaic["sounding"]
        row, col = divmod(s, 2)
        assert mosaic["box"] == [col / 2, row / 2, (col + 1) / 2, (row + 1) / 2]
        # Unaugmented, each tile is its photo squeezed to 64x64: the box's colour at its place.
        for t, name in enumerate(mosaic["classes"]):
            r, c = divmod(t, 2)
            tile = mosaic["image"][r * 64:(r + 1) * 64, c * 64:(c + 1) * 64].astype(int)
            np.testing.assert_allclose(tile[32, 48], CLASSES[name][1], atol=12)
            np.testing.assert_allclose(tile[5, 5], 110, atol=12)
        # The sound is the sounding tile's recording, looped to the clip length.
        spectrum = np.abs(np.fft.rfft(mosaic["waveform"]))
        assert len(mosaic["waveform"]) == RATE
        assert np.argmax(spectrum) == pytest.approx(CLASSES[mosaic["classes"][s]][2], abs=2)


def test_photo_crops_keep_the_box_on_the_thing(photo_dir):
    photo_set, _ = _load(photo_dir)
    for index in range(20):
        scene = importers.compose_photo(photo_set, np.random.default_rng([5, index]), 96, RATE,
                                        index, augment=True)
        x1, y1, x2, y2 = np.round(np.array(scene["boxes"][0]) * 96).astype(int)
        inside = scene["image"][y1 + 2:y2 - 2, x1 + 2:x2 - 2].astype(int)
        np.testing.assert_allclose(inside.mean(axis=(0, 1)), CLASSES[scene["class"]][1], atol=15)


def test_mosaic_import_of_a_validation_split_writes_only_the_folds_material(photo_dir, tmp_path):
    report, summary = importers.run_import(
        "mosaics", str(photo_dir), str(tmp_path / "val"), sample_rate=RATE, clip_seconds=1.0,
        count=6, image_size=128, folds=2, fold=0, split="validation", progress=io.StringIO())
    assert summary.count == 6
    manifest = json.load(open(tmp_path / "val" / "manifest.json"))
    fold = manifest["extra"]["fold"]
    assert fold["split"] == "validation" and fold["fold"] == 0 and fold["folds"] == 2
    classes = manifest["extra"]["classes"]
    config = get_config("tiny").replace(image_size=128)
    for element in records.read_records(config, str(tmp_path / "val"), training=False):
        assert classes[int(element["class_id"])] in fold["classes"]
        box = element["boxes"].numpy()[0, 0]
        assert sorted(box[2:] - box[:2]) == [0.5, 0.5]  # one tile of the 2x2 grid


def _make_stamps(stamps: Path) -> None:
    """A cut-out and a recording per class (the recordings' sources as in the photos)."""
    for sub in ("objects", "sounds", "backgrounds"):
        (stamps / sub).mkdir(parents=True)
    entries = []
    for name in CLASSES:
        rgba = np.zeros([20, 20, 4], np.uint8)
        rgba[..., :3], rgba[..., 3] = CLASSES[name][1], 255
        Image.fromarray(rgba).save(stamps / "objects" / f"{name}__0.png")
        soundfile.write(stamps / "sounds" / f"{name}__0.wav", _tone(CLASSES[name][2]), RATE)
        entries.append({"sound_wav": f"sounds/{name}__0.wav", "source_file": f"pkg/{name}.ogg"})
    Image.fromarray(np.full([50, 50, 3], 128, np.uint8)).save(stamps / "backgrounds" / "bg.jpg")
    (stamps / "manifest.json").write_text(json.dumps({"sounds": entries}))


def test_composites_leave_out_a_folds_recordings_by_their_source(photo_dir, tmp_path):
    photo_set, _ = _load(photo_dir)
    fold = importers.photo_folds(photo_set, 2)[0]
    stamps = tmp_path / "stamps"
    _make_stamps(stamps)
    report, _ = importers.run_import(
        "composites", str(stamps), str(tmp_path / "out"), sample_rate=RATE, clip_seconds=1.0,
        count=4, image_size=64, holdout_photos=str(photo_dir), folds=2, fold=0,
        progress=io.StringIO())
    assert report.notes["held-out recording left out"] == len(fold["classes"])
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert set(manifest["extra"]["classes"]).isdisjoint(fold["classes"])
    assert manifest["extra"]["held_out_sources"] == fold["sources"]


def test_the_real_photo_experiment_labels_composed_scenes_and_no_whole_photo(photo_dir,
                                                                             tmp_path):
    import tensorflow as tf

    from soundloc_tf.experiments.photo_eval import composed_labels

    _make_stamps(tmp_path / "stamps")
    report = importers.ImportReport("test")
    samples = [*importers.composite_samples(str(tmp_path / "stamps"), RATE, RATE, report, 2,
                                            image_size=64, label_fraction=0.0)]
    for fmt in ("mosaics", "photos"):
        samples += importers.photo_samples(str(photo_dir), fmt, RATE, RATE, report, 2,
                                           image_size=64, label_fraction=0.0)
    ids = [s["id"] for s in samples]
    dataset = tf.data.Dataset.from_tensor_slices({"id": ids, "labeled": [False] * len(ids)})
    labeled = [bool(x["labeled"]) for x in composed_labels(
        lambda start: dataset)(0)]
    assert labeled == [True] * 4 + [False] * 2, ids


def test_a_fold_too_small_for_a_mosaic_is_refused(photo_dir, tmp_path):
    with pytest.raises(ValueError, match="a 2x2 mosaic needs photos of 4 groups. Received: 3"):
        importers.run_import("mosaics", str(photo_dir), str(tmp_path / "out"),
                             sample_rate=RATE, clip_seconds=1.0, count=2, folds=2, fold=1,
                             split="validation", progress=io.StringIO())
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize("options, message", [
    ({"folds": 2, "fold": 2}, r"fold must lie in \[0, folds\). Received: fold=2, folds=2"),
    ({"split": "test"}, "split must be 'train' or 'validation'. Received: split='test'"),
    ({"grid": 5}, r"grid must lie in \[2, 4\]. Received: grid=5"),
    ({"holdout_photos": "x"}, "holdout_photos applies to format='composites'"),
])
def test_bad_fold_options_are_refused_before_any_work(photo_dir, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        importers.run_import("mosaics", str(photo_dir), str(tmp_path / "out"),
                             sample_rate=RATE, clip_seconds=1.0, **options)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_import_tool_refuses_a_fold_out_of_range_in_one_line(photo_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "soundloc_tf.tools.import_data", "--format=photos",
         f"--input={photo_dir}", f"--output={tmp_path / 'out'}", "--folds=3", "--fold=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: fold must lie in [0, folds). Received: fold=3, folds=3" in result.stderr


@pytest.mark.skipif(not (PHOTOS.is_dir() and STAMPS.is_dir()),
                    reason=f"real photos or stamps absent: {PHOTOS}, {STAMPS}")
def test_real_photo_folds_validate_on_unseen_photos_and_recordings():
    photo_set, report = _load(PHOTOS)
    assert len(photo_set.photos) == 15 and not report.skipped
    folds = importers.photo_folds(photo_set, 3)
    for fold in folds:
        assert len({photo_set.groups[c] for c in fold["classes"]}) >= 4  # a 2x2 mosaic fits
    # The photos' Tux Paint recordings are stamps recordings too: they leave with their fold.
    stamps_report = importers.ImportReport("composites")
    stamps = importers.load_stamps(str(STAMPS), RATE, stamps_report,
                                   exclude_sources=folds[0]["sources"])
    assert stamps_report.notes["held-out recording left out"] == 2  # bear, goat
    assert "bear" not in stamps.sounds and "goat" not in stamps.sounds


def test_training_pairs_name_what_a_fold_trains_for_each_held_out_class(photo_dir, tmp_path):
    photo_set, _ = _load(photo_dir)
    stamps = tmp_path / "stamps"
    _make_stamps(stamps)  # every stamps recording is also a photo's: held out with it
    # A second cat recording from another source: the held-out cat's cut-out trains with it.
    soundfile.write(stamps / "sounds" / "cat__1.wav", _tone(650), RATE)
    pairs = {}
    for fold in importers.photo_folds(photo_set, 2):
        loaded = importers.load_stamps(str(stamps), RATE, importers.ImportReport("t"),
                                       exclude_sources=fold["sources"])
        pairs.update(importers.training_pairs(photo_set, fold, loaded))
        assert importers.training_pairs(photo_set, fold).keys() == set(fold["classes"])
    # Alike classes sit in different folds, so each trains the other; the rest train nothing
    # of their group.
    assert pairs == {"cow": ["bison"], "bison": ["cow"], "taiko": ["bongo"],
                     "bongo": ["taiko"], "cat": ["cat"], "horse": [], "goose": []}


def test_mosaics_of_one_category_never_mix_categories(photo_dir):
    photo_set, _ = _load(photo_dir)
    categories = {"cow": "animals", "bison": "animals", "cat": "animals", "horse": "animals",
                  "goose": "animals", "taiko": "music", "bongo": "music"}
    mixed = within = 0
    for index in range(16):
        tiles = importers.compose_mosaic(photo_set, np.random.default_rng([4, index]), 128,
                                         RATE, grid=2, augment=False)["classes"]
        mixed += len({categories[c] for c in tiles}) > 1
        one = importers.compose_mosaic(photo_set, np.random.default_rng([4, index]), 128, RATE,
                                       grid=2, augment=False, categories=categories)
        # Only the animals have photos of four groups: every such mosaic is all animals.
        within += {categories[c] for c in one["classes"]} == {"animals"}
        assert len({CLASSES[c][0] for c in one["classes"]}) == 4
    assert within == 16 and mixed >= 8
    too_few = {**categories, "goose": "birds"}
    with pytest.raises(ValueError, match=r"one category needs photos of 4 groups of a "
                       r"category. Received: \{'animals': 3, 'birds': 1, 'music': 1\}"):
        importers.compose_mosaic(photo_set, np.random.default_rng(0), 128, RATE, grid=2,
                                 categories=too_few)
