"""Evaluation plots: files that decode, the right cases chosen, TensorBoard images written."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf.dataloaders import data
from soundloc_tf.eval import plots
from soundloc_tf.config import get_config
from soundloc_tf.eval.evaluation import EvaluationDetails


def _png_shape(path):
    return tuple(tf.io.decode_png(tf.io.read_file(str(path))).shape)


def test_success_curve_png(tmp_path):
    path = plots.success_curve({"model": np.array([0.9, 0.6, 0.1]),
                                "whole_image": np.array([0.2, 0.2, 0.2])},
                               str(tmp_path / "curve.png"), "test")
    assert _png_shape(path) == (450, 600, 4)
    with pytest.raises(ValueError, match="Received: curves={}"):
        plots.success_curve({}, str(tmp_path / "none.png"))


def test_best_and_worst_cases():
    best, worst = plots.best_and_worst(np.array([0.2, 0.9, 0.5, 0.9, 0.0]), 2)
    np.testing.assert_array_equal(best, [1, 3])
    np.testing.assert_array_equal(worst, [4, 0])
    with pytest.raises(ValueError, match="Received: count=0"):
        plots.best_and_worst(np.zeros(3), 0)


def test_gather_elements_keeps_the_requested_order():
    config = get_config("tiny")
    scenes = data.synthetic_dataset(config, 0, count=6)
    picked = plots.gather_elements(scenes, [4, 1])
    ids = [i.decode() for i in picked["id"]]
    assert ids == ["synthetic/0/4", "synthetic/0/1"]
    assert picked["image"].shape == (2, 96, 96, 3)
    with pytest.raises(ValueError, match="shorter than the indices"):
        plots.gather_elements(scenes, [9])


def test_overlay_grid_per_class_and_distributions(tmp_path):
    images = np.random.default_rng(0).uniform(size=[3, 32, 32, 3]).astype(np.float32)
    maps = np.random.default_rng(1).uniform(size=[3, 4, 4]).astype(np.float32)
    boxes = np.tile(np.array([[[0.1, 0.1, 0.6, 0.6]]], np.float32), (3, 1, 1))
    grid = plots.overlay_grid(images, maps, boxes, ["a", "b", "c"], str(tmp_path / "g.png"),
                              columns=2)
    assert _png_shape(grid)[:2] == (400, 320)  # 2 rows x 2.0 in, 2 columns x 1.6 in at 100 dpi
    with pytest.raises(ValueError, match="Received: 3, 3, 3, 2"):
        plots.overlay_grid(images, maps, boxes, ["a", "b"], str(tmp_path / "x.png"))
    per_class = {"0": {"ciou_at_0_5": 0.5, "mean_ciou": 0.4, "pointing_game": 0.9, "n": 4},
                 "10": {"ciou_at_0_5": 0.1, "mean_ciou": 0.2, "pointing_game": 0.3, "n": 2}}
    assert _png_shape(plots.per_class(per_class, str(tmp_path / "c.png")))[2] == 4
    confidences = {"positive": {"score": np.array([0.8, 0.9]), "map_peak": np.array([0.3, 0.2])},
                   "silence": {"score": np.array([0.1, 0.2]), "map_peak": np.array([0.1, 0.1])}}
    assert _png_shape(plots.score_distributions(confidences, str(tmp_path / "s.png")))[:2] == \
        (380, 1000)
    with pytest.raises(ValueError, match="under 'positive'"):
        plots.score_distributions({"silence": confidences["silence"]}, str(tmp_path / "y.png"))
    series = {"semi": [(0.0, 0.2, 0.0), (0.1, 0.7, 0.05), (1.0, 0.9, 0.01)]}
    assert _png_shape(plots.metric_vs_fraction(series, str(tmp_path / "f.png"), "cIoU",
                                               references={"control": 0.5}))[:2] == (420, 650)


def _tensorboard_tags(logdir):
    tags = set()
    for path in glob.glob(f"{logdir}/events.out.tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_write_evaluation_plots_writes_pngs_and_tensorboard_images(tmp_path):
    config = get_config("tiny")
    scenes = data.synthetic_dataset(config, 0, count=5)
    cious = np.array([0.1, 0.8, 0.4, 0.0, 0.6])
    details = EvaluationDetails(
        ciou=cious, pointing=np.array([0, 1, 1, 0, 1.0]), class_id=np.array([0, 1, 0, 1, 2]),
        attention=np.random.default_rng(0).uniform(size=[5, 12, 12]).astype(np.float32),
        boxes=np.tile(np.array([[[[0.1, 0.1, 0.5, 0.5]]]], np.float32), (5, 1, 1, 1)),
        curves={"model": cious, "whole_image": np.full(5, 0.2)},
        confidences={"positive": {"score": np.ones(5), "map_peak": np.ones(5)},
                     "silence": {"score": np.zeros(5), "map_peak": np.zeros(5)}})
    result = {"n": 5, "rule": "fixed", "threshold": 0.5,
              "per_class": {"0": {"ciou_at_0_5": 0.0, "mean_ciou": 0.25, "pointing_game": 0.5,
                                  "n": 2}}}
    paths = plots.write_evaluation_plots(result, details, scenes, str(tmp_path), num_cases=2,
                                         tensorboard_dir=str(tmp_path / "tb"), step=7)
    assert set(paths) == {"success_curve", "best_worst", "per_class", "score_distributions"}
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in paths)
    assert _tensorboard_tags(tmp_path / "tb") == {f"evaluation/{name}" for name in paths}
