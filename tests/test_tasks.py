"""The localisation task: the tower mode, the data settings, the numeric limits, and a paper
run that resumes, evaluates and exports with the pretrained weights files gone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from soundloc_tf.config import get_config
from soundloc_tf.modeling import models, soundnet
from soundloc_tf.tasks import evaluation, localization
from soundloc_tf.train import run_dir

ROOT = Path(__file__).resolve().parent.parent


# -- the tower mode and the data settings --------------------------------------------------


def test_the_paper_preset_resolves_to_the_cached_mode_and_keeps_its_config():
    config = get_config("paper", image_weights="none", audio_weights="none")
    resolved, mode = localization.resolve_tower_mode(config, None)
    assert mode == "cached" and resolved == config  # a resumed run's config.json is unchanged


@pytest.mark.parametrize("mode, frozen", [("fine_tuned", False), ("frozen", True),
                                          ("cached", True)])
def test_a_tower_mode_sets_both_freeze_fields(mode, frozen):
    resolved, resolved_mode = localization.resolve_tower_mode(get_config("tiny"), mode)
    assert resolved_mode == mode
    assert resolved.freeze_image_tower is frozen and resolved.freeze_audio_tower is frozen
    assert not resolved.cache_features  # the mode is the task's; the config keeps its own


def test_another_mode_turns_the_presets_cache_off():
    config = get_config("paper", image_weights="none", audio_weights="none")
    resolved, mode = localization.resolve_tower_mode(config, "frozen")
    assert mode == "frozen" and not resolved.cache_features


def test_without_a_mode_the_freeze_fields_stay_as_given():
    config = get_config("tiny", freeze_image_tower=True)
    assert localization.resolve_tower_mode(config, None) == (config, None)


def test_a_mode_that_contradicts_an_explicit_freeze_field_is_refused():
    config = get_config("tiny", freeze_image_tower=True)
    with pytest.raises(ValueError, match="--tower_mode=fine_tuned contradicts "
                                         "--freeze_image_tower. Received: "
                                         "--freeze_image_tower=True"):
        localization.resolve_tower_mode(config, "fine_tuned", explicit={"freeze_image_tower"})
    # Not given explicitly (the preset's value): the mode decides.
    assert localization.resolve_tower_mode(config, "fine_tuned")[1] == "fine_tuned"


def test_a_cached_run_refuses_a_tf_config_that_names_no_workers(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="TF_CONFIG must name the workers"):
        localization.LocalizationTask(get_config("tiny"),
                                      localization.DataConfig(tower_mode="cached"))


@pytest.mark.parametrize("settings, message", [
    ({"tower_mode": "warm"}, "--tower_mode must be one of"),
    ({"cache_dtype": "int4"}, "Received: --cache_dtype='int4'"),
    ({"cache_samples": 0}, r"--cache_samples must be an integer in \[1, 2147483647\]"),
    ({"cache_samples": 10 ** 30}, "Received: --cache_samples=" + "1" + "0" * 30),
    ({"annotations": "a.json"}, "--annotations applies to the sets of --records"),
    ({"records_weights": "1,2"}, "--records_weights applies to the sets of --records"),
])
def test_bad_data_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        localization.DataConfig(**settings)


def test_annotations_need_the_supervised_term(tmp_path):
    data_config = localization.DataConfig(records=str(tmp_path), annotations="a.json")
    with pytest.raises(ValueError, match="--annotations needs the semi-supervised term"):
        localization.LocalizationTask(get_config("tiny", label_fraction=0.0), data_config)


def test_the_run_flags_record_the_resolved_mode():
    task = localization.LocalizationTask(
        get_config("paper", image_weights="none", audio_weights="none"))
    assert task.tower_mode == "cached"
    assert task.run_flags == {
        "records": None, "records_weights": None, "annotations": None,
        "validation_records": None, "tower_mode": "cached", "feature_cache": None,
        "cache_dtype": "float16", "cache_image_tower": "model", "cache_in_memory": "auto",
        "cache_samples": 10_000, "cache_parts": 1}


@pytest.mark.parametrize("flag, message", [
    ("--train_steps=10000000000000000000000000",
     "error: train_steps must lie in [-2147483647, 2147483647]. Received: "
     "train_steps=10000000000000000000000000"),
    ("--learning_rate=inf", "error: learning_rate must be a finite number. Received: "
                            "learning_rate=inf"),
])
def test_an_absurd_number_is_one_error_line_and_exit_2(tmp_path, flag, message):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "soundloc_tf.tools.train",
                             f"--workdir={tmp_path}", flag], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [message]
    assert not os.listdir(tmp_path)  # refused before anything was written


# -- a paper run without its weights files ------------------------------------------------


def _paper_config():
    """The paper preset (ImageNet VGG16 and SoundNet-8 from ~/.keras/models, frozen,
    trained from the feature cache) at the sizes a test affords."""
    return get_config("paper", image_size=32, clip_seconds=10.0, batch_size=2, train_steps=2,
                      checkpoint_every=1, eval_every=100, num_summary_images=0,
                      num_eval_samples=2)


def _write_weights_files(home: Path, config) -> None:
    """Random VGG16 and SoundNet-8 weights where the paper preset reads them: the run's
    towers differ from a random build only through these files."""
    weights = home / ".keras" / "models"
    weights.mkdir(parents=True)
    keras.utils.set_random_seed(7)
    vgg = keras.applications.VGG16(include_top=False, weights=None,
                                   input_shape=(config.image_size, config.image_size, 3))
    vgg.save_weights(str(weights / models.IMAGENET_WEIGHTS_FILE))
    soundnet.build_soundnet8(config.num_samples, name="audio_tower").save_weights(
        str(weights / "soundnet8.weights.h5"))


@pytest.fixture
def weightless_paper_run(tmp_path, monkeypatch):
    """A paper run trained with its weights files, which are then gone: HOME and
    KERAS_HOME name an empty directory."""
    monkeypatch.delenv(models.IMAGENET_WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = _paper_config()
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    _write_weights_files(home, config)
    workdir = str(tmp_path / "run")
    task = localization.LocalizationTask(
        config, localization.DataConfig(cache_samples=4), validation_samples=2,
        log=lambda _: None)
    trained = task.build_model()
    losses = task.train(workdir)
    assert np.isfinite(losses["total"])
    empty = tmp_path / "empty_home"
    (empty / ".keras" / "models").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("KERAS_HOME", str(empty / ".keras"))
    with pytest.raises(ValueError, match="weights file is missing"):
        task.build_model(pretrained=True)  # the files are gone indeed
    return workdir, trained, config


@pytest.mark.slow
def test_a_paper_run_evaluates_exports_and_resumes_without_its_weights_files(
        weightless_paper_run, tmp_path):
    from soundloc_tf.inference import export

    workdir, trained, config = weightless_paper_run
    _, restored, step = run_dir.restore_model(workdir)
    assert step == 2
    # The frozen towers come from the checkpoint: the pretrained files' weights, not a
    # random build's.
    image_tower = models.split_model(restored).image
    assert all(np.array_equal(a, b) for a, b in zip(
        image_tower.get_weights(), models.split_model(trained).image.get_weights()))

    result, paths = evaluation.evaluate_run(workdir, evaluation.EvaluationSettings(
        num_samples=2, num_overlays=0, output_dir=str(tmp_path / "eval")))
    assert result["n"] == 2 and result["step"] == 2
    assert json.loads(Path(paths[0]).read_text())["n"] == 2

    path = export.export_run(workdir, str(tmp_path / "exports"))
    assert export.read_export_info(path)["step"] == 2

    resumed = localization.LocalizationTask(
        config.replace(train_steps=3), localization.DataConfig(cache_samples=4),
        validation_samples=2, log=lambda _: None)
    assert np.isfinite(resumed.train(workdir)["total"])  # the cache reused: same towers
    assert run_dir.restore_model(workdir)[2] == 3
