"""The within-category real-photo validation: folds, mosaics of one category, scores."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from soundloc_tf.config import YAMNET_WEIGHTS
from soundloc_tf.dataloaders import importers
from soundloc_tf.experiments import within_category as wc

RATE = 16000
ANIMALS = ["ant", "bee", "cod", "dog", "eel", "fox", "gnu"]  # one group each
MUSIC = ["harp", "horn", "lute", "oboe"]


def _tone(freq, seconds=0.5):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _make_set(root: Path, photos_per_class=2, sounds_per_class=2) -> None:
    """Photos: grey with the class's colour in its box; recordings: the class's tones."""
    (root / "photos").mkdir(parents=True)
    (root / "sounds").mkdir()
    photos, sounds = [], []
    rng = np.random.default_rng(0)
    for c, name in enumerate(ANIMALS + MUSIC):
        colour = rng.integers(0, 255, 3)
        for j in range(photos_per_class):
            image = np.full([60, 80, 3], 100, np.uint8)
            image[10:40, 20:60] = colour
            image[0, 0] = j  # two photos of a class, not two copies of one
            Image.fromarray(image).save(root / "photos" / f"{name}__{j}.jpg", quality=95)
            photos.append({"file": f"photos/{name}__{j}.jpg", "class": name,
                           "boxes": [[0.25, 1 / 6, 0.75, 2 / 3]]})
        for j in range(sounds_per_class):
            soundfile.write(root / "sounds" / f"{name}__{j}.wav", _tone(200 + 50 * c + 10 * j),
                            RATE)
            sounds.append({"file": f"sounds/{name}__{j}.wav", "class": name,
                           "path_in_package": f"pkg/{name}_{j}.ogg"})
    (root / "manifest.json").write_text(json.dumps({
        "groups": {n: n for n in ANIMALS + MUSIC}, "photos": photos, "sounds": sounds,
        "categories": {**{n: "animals" for n in ANIMALS}, **{n: "music" for n in MUSIC}}}))


@pytest.fixture()
def material(tmp_path):
    _make_set(tmp_path / "set")
    photo_set, categories = wc.load_material([str(tmp_path / "set")], log=lambda m: None)
    return photo_set, categories


def test_a_photo_two_sets_hold_is_loaded_once(tmp_path):
    _make_set(tmp_path / "set")
    _make_set(tmp_path / "bigger")  # the same photos, as a set built over another does
    extra = Image.new("RGB", (80, 60), (1, 2, 3))
    extra.save(tmp_path / "bigger" / "photos" / "ant__9.jpg")
    manifest = json.loads((tmp_path / "bigger" / "manifest.json").read_text())
    manifest["photos"].append({"file": "photos/ant__9.jpg", "class": "ant",
                               "boxes": [[0.0, 0.0, 1.0, 1.0]]})
    (tmp_path / "bigger" / "manifest.json").write_text(json.dumps(manifest))
    lines = []
    photo_set, _ = wc.load_material([str(tmp_path / "set"), str(tmp_path / "bigger")],
                                    log=lines.append)
    assert len(photo_set.photos) == 2 * len(ANIMALS + MUSIC) + 1
    assert [p["file"] for p in photo_set.photos if p["file"].startswith("bigger/")] == [
        "bigger/photos/ant__9.jpg"]
    assert "22 already in an earlier set, dropped" in lines[1]


def test_every_photo_is_held_out_once_and_a_classes_photos_in_different_folds(material):
    photo_set, categories = material
    folds = wc.instance_folds(photo_set, categories, 3)
    held = [p for f in folds for p in f["photos"]]
    assert sorted(held) == sorted(p["file"] for p in photo_set.photos)
    for name in ANIMALS + MUSIC:
        homes = [k for k, f in enumerate(folds) for p in f["photos"] if f"/{name}__" in p]
        assert len(homes) == 2 and homes[0] != homes[1]
    for fold in folds:
        # A held-out recording's class has a held-out photo in the same fold.
        assert {s.split("/")[-1].split("__")[0] for s in fold["sounds"]} <= set(fold["classes"])
        animals = {c for c in fold["classes"] if categories[c] == "animals"}
        assert len(animals) >= 4
        assert fold["left_out"] in animals and fold["left_out_classes"] == [fold["left_out"]]
    assert len({f["left_out"] for f in folds}) == 3


def test_training_never_sees_a_held_out_photo_recording_source_or_the_left_out_group(
        material, tmp_path):
    photo_set, categories = material
    fold = wc.instance_folds(photo_set, categories, 3)[0]
    stamps = importers.StampSet(
        "stamps", classes=[fold["left_out"], "zebra"], groups={fold["left_out"]: fold["left_out"],
                                                               "zebra": "zebra"},
        objects={}, sounds={fold["left_out"]: [np.zeros(4)], "zebra": [np.zeros(4)]},
        backgrounds=[])
    train, stamps = wc.training_set(photo_set, stamps, fold)
    files = {p["file"] for p in train.photos} | {s["file"] for s in train.sounds}
    assert files.isdisjoint(fold["photos"]) and files.isdisjoint(fold["sounds"])
    assert {s["source"] for s in train.sounds}.isdisjoint(fold["sources"])
    assert fold["left_out"] not in {p["class"] for p in train.photos}
    assert fold["left_out"] not in {s["class"] for s in train.sounds}
    assert stamps.classes == ["zebra"]
    heard = {s["class"] for s in train.sounds}
    assert {p["class"] for p in train.photos} <= heard
    # Every other photo trains: all 22 but the held-out ones and the left-out class's.
    left_out_elsewhere = sum(p["class"] == fold["left_out"] and p["file"] not in fold["photos"]
                             for p in photo_set.photos)
    assert len(train.photos) == 22 - len(fold["photos"]) - left_out_elsewhere


def test_mosaics_hold_four_held_out_photos_of_one_category_and_distinct_groups(material):
    photo_set, categories = material
    fold = wc.instance_folds(photo_set, categories, 3)[1]
    mosaics = wc.category_mosaics(photo_set, fold, "animals", categories, 12, 1.0, seed=5)
    assert len(mosaics.images) == 12
    for tiles, s, p in zip(mosaics.classes, mosaics.sounding, mosaics.partners):
        assert len(set(tiles)) == 4 and {categories[c] for c in tiles} == {"animals"}
        assert set(tiles) <= set(fold["classes"]) and s != p
    # The matched sound is a held-out recording of the sounding class: its tone's frequency.
    wave, rate = soundfile.read(__import__("io").BytesIO(mosaics.matched[0]))
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * rate / len(wave)
    name = mosaics.classes[0][mosaics.sounding[0]]
    c = (ANIMALS + MUSIC).index(name)
    assert min(abs(peak_hz - (200 + 50 * c + 10 * j)) for j in range(2)) < 2
    # Four music groups over three folds: no fold holds out four.
    assert wc.category_mosaics(photo_set, fold, "music", categories, 4, 1.0, seed=5) is None


def _tile_map(tile, size=20):
    heat = np.zeros([size, size], np.float32)
    row, col = divmod(tile, 2)
    heat[row * size // 2:(row + 1) * size // 2, col * size // 2:(col + 1) * size // 2] = 1.0
    return heat


def _mosaics(classes, sounding, partners):
    return wc.Mosaics("animals", [b""] * len(classes), [], [], classes, sounding, partners)


def test_a_map_that_follows_the_sound_scores_pointing_one_and_a_gap_of_one():
    m = _mosaics([["ant", "bee", "cod", "dog"]] * 4, [0, 1, 2, 3], [1, 2, 3, 0])
    follows = np.stack([_tile_map(t) for t in m.sounding])
    other = np.stack([_tile_map(t) for t in m.partners])
    result = wc.pooled([{"animals": wc.score(follows, other, m, set())}], "animals", "seen")
    assert result["pointing"] == 1.0 and result["mismatched"] == 0.0 and result["gap"] == 1.0
    assert result["class_min"] == 1.0 and result["n"] == 4


def test_a_map_that_follows_the_photo_has_no_gap_and_its_class_minimum_is_zero():
    m = _mosaics([["ant", "bee", "cod", "dog"]] * 4, [0, 1, 2, 3], [1, 2, 3, 0])
    photo = np.stack([_tile_map(0)] * 4)  # always the same animal, whatever is heard
    result = wc.pooled([{"animals": wc.score(photo, photo, m, set())}], "animals", "seen")
    assert result["pointing"] == 0.25 and result["gap"] == 0.0
    assert result["by_class"] == {"ant": 1.0, "bee": 0.0, "cod": 0.0, "dog": 0.0}
    assert result["class_min"] == 0.0


def test_mosaics_of_a_left_out_class_are_scored_apart():
    m = _mosaics([["ant", "bee", "cod", "dog"]] * 4, [0, 1, 2, 3], [1, 2, 3, 0])
    follows = np.stack([_tile_map(t) for t in m.sounding])
    result = wc.score(follows, follows, m, {"bee"})
    assert result["seen"]["n"] == 3 and result["left_out"]["n"] == 1
    assert result["left_out"]["by_class"] == {"bee": [1, 1]}


def test_seeds_pool_their_folds_then_give_the_mean_and_population_sd():
    rows = [{"pointing": p, "mismatched": 0.2, "gap": p - 0.2, "class_min": 0.1,
             "by_class": {"ant": p}, "n": 10} for p in (0.5, 0.7)]
    out = wc.over_seeds(rows)
    assert out["pointing"] == pytest.approx(0.6) and out["pointing_sd"] == pytest.approx(0.1)
    assert out["by_class"]["ant"] == pytest.approx(0.6) and out["seeds"] == 2


def test_a_class_without_a_category_is_refused_naming_it(tmp_path):
    _make_set(tmp_path / "set")
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    del manifest["categories"]["ant"]
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"Received: \['ant'\]"):
        wc.load_material([str(tmp_path / "set")], log=lambda m: None)


def _make_stamps(root: Path) -> None:
    for sub in ("objects", "sounds", "backgrounds"):
        (root / sub).mkdir(parents=True)
    for c, name in enumerate(ANIMALS[:5]):
        rgba = np.zeros([20, 20, 4], np.uint8)
        rgba[..., :3], rgba[..., 3] = 40 * c, 255
        Image.fromarray(rgba).save(root / "objects" / f"{name}__0.png")
        soundfile.write(root / "sounds" / f"{name}__0.wav", _tone(200 + 50 * c), RATE)
    Image.fromarray(np.full([50, 50, 3], 128, np.uint8)).save(root / "backgrounds" / "bg.jpg")
    (root / "manifest.json").write_text(json.dumps({"sounds": []}))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(os.path.expanduser(YAMNET_WEIGHTS)),
                    reason="needs `soundloc-fetch-weights --what=yamnet`")
def test_quick_run_trains_every_fold_scores_animals_and_serves_the_final_run(tmp_path):
    from soundloc_tf.config import get_config
    from soundloc_tf.train.training import make_strategy

    _make_set(tmp_path / "set")
    _make_stamps(tmp_path / "stamps")
    config = get_config(wc.PRESET, **{**wc.SCALES["quick"], "image_weights": "none"})
    summary = wc.run_within_category(config, str(tmp_path / "out"), "quick",
                                     [str(tmp_path / "set")], str(tmp_path / "stamps"),
                                     make_strategy(), {}, "test", runs_filter=["recommended"],
                                     log=lambda m: None)
    row = summary["table"]["recommended"]["animals"]
    assert row["seen"]["n"] == 3 * wc.COUNTS["quick"]["validation"] - row["left_out"]["n"]
    assert 0.0 <= row["seen"]["pointing"] <= 1.0
    assert row["served"]["n"] == row["seen"]["n"]
    # Served and model pointing agree: the same decoder, towers and localiser.
    assert abs(row["served"]["pointing"] - row["seen"]["pointing"]) <= 1 / row["seen"]["n"]
    assert "| recommended | animals |" in summary["markdown"]
