"""What was left of issue 31 after round two, one test (or a few) each, named after its defect.

Each failed before its fix:
 N2 (GIL) a 60 MB JSON parse held the GIL for seconds: every other request waited
 N5 a corrupt shard under a re-signed manifest, a manifest naming ../other/<shard>
 N8 import --clip_seconds=inf|1e308, localize --video of a 1x1 video, Ctrl-C in export
 N12 one-line errors that named the wrong thing   N13 export --version beyond int64
 N14 a UTF-8 model name over REST                  N15 SIGTERM left hidden partial outputs
and annotations.validate_boxes' OverflowError on a huge integer.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest

from soundloc_tf.serving import memory_budget
from soundloc_tf.serving.dev_server import DevServer
from serving_fixtures import assert_one_line_error, exported, run_module  # noqa: F401

MB = 1024 * 1024


def _request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _floats_body(target_bytes: int) -> bytes:
    pixel = "[0.12345678,0.12345678,0.12345678]"
    image = "[" + ",".join(["[" + ",".join([pixel] * 96) + "]"] * 96) + "]"
    return ('{"signature_name": "serving_tensors", "inputs": {"image": [%s], "waveform": '
            '[[0.5]]}}' % ",".join([image] * (target_bytes // (len(image) + 1)))).encode()


# N2, the GIL: a large parse lets the other threads run --------------------------------


@pytest.mark.slow
def test_N2_a_large_json_parse_hands_the_gil_to_other_threads(exported):
    """A 30 MB body is parsed by the server's worker thread (in this process) while this
    thread sleeps 1 ms at a time: the longest it waits for the GIL is its stall.  Before:
    about 0.75 s (json's C scanner holds the GIL for the whole parse, and full collections of
    its lists add more); after: tens of milliseconds."""
    body = _floats_body(30_000_000)
    assert memory_budget.json_cost(body) >= memory_budget.PAUSE_GC_FROM_BYTES
    with DevServer(str(exported.model_dir), port=0, quiet=True) as server:
        answer: list = []
        worker = threading.Thread(target=lambda: answer.append(_request(
            server.url + "/v1/models/soundloc:predict", "POST", body)))
        stalls = []
        worker.start()
        while worker.is_alive():
            started = time.perf_counter()
            time.sleep(0.001)
            stalls.append(time.perf_counter() - started)
        worker.join()
    assert answer[0][0] == 400 and "input waveform: expected shape" in answer[0][1]["error"]
    assert len(stalls) > 100 and max(stalls) < 0.3, sorted(stalls)[-5:]


# N12 and N13: version directories and numbers ------------------------------------------


def test_N12_a_superscript_digit_directory_beside_the_versions_is_ignored(tmp_path):
    from soundloc_tf.inference import export

    (tmp_path / "1").mkdir()
    (tmp_path / "\u00b2").mkdir()  # '²'.isdigit() is True; before: "invalid literal for int()"
    assert export.next_version(str(tmp_path)) == 2


def test_N13_an_export_version_beyond_int64_is_refused(tmp_path):
    from soundloc_tf.config import get_config
    from soundloc_tf.inference import export

    with pytest.raises(ValueError, match=r"version must be an integer in \[1, "
                                         r"9223372036854775807\].*Received: "
                                         r"version=100000000000000000000"):
        export.export_model(None, get_config("tiny"), str(tmp_path), version=10 ** 20)
    result = run_module("tools.export", f"--workdir={tmp_path}",
                        "--version=100000000000000000000")  # before: exit 0
    assert_one_line_error(result, "--version", "9223372036854775807")


# N14: a UTF-8 model name over REST ------------------------------------------------------


def test_N14_a_utf8_model_name_is_served_over_rest(exported):
    from urllib.parse import quote

    with DevServer(str(exported.model_dir), model_name="s\u00f3undloc", port=0,
                   quiet=True) as server:
        status, answer = _request(server.url + "/v1/models/" + quote("s\u00f3undloc"))
        assert status == 200, answer  # before: 404 (the latin-1 path never matched)
        assert answer["model_version_status"][0]["state"] == "AVAILABLE"
        status, answer = _request(server.url + "/v1/models/%FF")
        assert status == 400 and answer["error"].startswith("the URL path is not UTF-8")


# N15: SIGTERM takes Ctrl-C's path --------------------------------------------------------


def test_N15_sigterm_while_export_traces_leaves_no_hidden_partial_version(exported, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from serving_fixtures import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    base = tmp_path / "exports"
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.export", f"--workdir={exported.workdir}",
         f"--export_base={base}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        staging = list((base / "soundloc").glob(".*.tmp-*")) if (base / "soundloc").is_dir() \
            else []
        if staging:
            break
        time.sleep(0.05)
    assert staging, "export never began writing its staging directory"
    process.send_signal(signal.SIGTERM)  # before: the staging directory stayed behind
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: interrupted; nothing was left half-written"), stderr
    assert "Traceback" not in stderr
    assert list((base / "soundloc").iterdir()) == []


# N12: import's clip length named, whatever the number ------------------------------------


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1e308", "0"])
def test_N12_an_impossible_clip_length_is_refused_naming_clip_seconds(tmp_path, value):
    # before: "cannot convert float NaN to integer", or -1 blamed num_samples, or inf and
    # 1e308 ended in a traceback
    source = tmp_path / "clips"
    source.mkdir()
    result = run_module("tools.import_data", "--format=videos", f"--input={source}",
                        f"--output={tmp_path / 'out'}", f"--clip_seconds={value}")
    assert_one_line_error(result, "clip_seconds must be a finite number in (0, 600]",
                          f"clip_seconds={float(value)}")
    assert not (tmp_path / "out").exists()


def test_N12_too_many_pairs_per_clip_is_refused_up_front_naming_pairs_per_clip(tmp_path):
    # before: 100000 ran 111 s and 2 GB, then blamed a "duplicate sample id"
    source = tmp_path / "clips"
    source.mkdir()
    result = run_module("tools.import_data", "--format=videos", f"--input={source}",
                        f"--output={tmp_path / 'out'}", "--pairs_per_clip=100000")
    assert_one_line_error(result, "pairs_per_clip must lie in [1, 1000]",
                          "pairs_per_clip=100000")
    assert not (tmp_path / "out").exists()


def test_N12_pairs_closer_than_an_id_can_tell_skip_the_clip_naming_the_most_it_holds(tmp_path):
    pytest.importorskip("av")
    import io

    from soundloc_tf.dataloaders import importers
    from test_importers import RATE, _moving_square, _write_video

    root = tmp_path / "videos"
    root.mkdir()
    _write_video(root / "short.mp4", 1.0, frame_fn=_moving_square)
    _write_video(root / "long.mp4", 3.0, frame_fn=_moving_square)
    report, summary = importers.run_import("videos", str(root), str(tmp_path / "out"),
                                           sample_rate=RATE, clip_seconds=0.5,
                                           pairs_per_clip=150, progress=io.StringIO())
    # 150 pairs lie 20 ms apart in the 3 s clip: every id distinct; the 1 s clip holds 99.
    assert (report.imported, summary.count) == (150, 150)
    (path, reason), = report.skipped
    assert os.path.basename(path) == "short.mp4"
    assert reason == ("150 pairs do not fit a 1.00 s clip (pairs lie more than 10 ms apart, "
                      "at most 99 here)")

# N5: damaged records end in one line, in the reader or in the tool -----------------------


def _tiny_records(directory) -> None:
    import numpy as np

    from soundloc_tf.dataloaders import records

    rng = np.random.default_rng(0)
    samples = [{"image": records.encode_image(rng.integers(0, 255, [96, 96, 3], np.uint8),
                                              "jpeg"),
                "waveform": rng.uniform(-0.5, 0.5, 8000).astype(np.float32),
                "sample_rate": 8000, "boxes": [[[0.1, 0.1, 0.5, 0.5]]], "labeled": True,
                "class_id": 0, "id": f"n5/{i}"} for i in range(8)]
    records.write_records(iter(samples), str(directory), sample_rate=8000, clip_seconds=1.0,
                          source="test")


def _resign(directory, edit) -> None:
    import hashlib

    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        if path.is_file():
            shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            shard["bytes"] = path.stat().st_size
    manifest_path.write_text(json.dumps(manifest))


def test_N5_a_manifest_naming_a_shard_elsewhere_is_refused(tmp_path):
    from soundloc_tf.dataloaders import records

    _tiny_records(tmp_path / "set")

    def elsewhere(manifest):
        manifest["shards"][0]["file"] = "../other/" + manifest["shards"][0]["file"]

    _resign(tmp_path / "set", elsewhere)
    with pytest.raises(ValueError, match=r"names a shard that is not a file beside it"):
        records.load_manifest(str(tmp_path / "set"))  # before: KeyError in verify_shards
    result = run_module("tools.train", "--preset=tiny", f"--records={tmp_path / 'set'}",
                        f"--workdir={tmp_path / 'run'}", "--train_steps=1")
    assert_one_line_error(result, "names a shard that is not a file beside it", "../other/")


def test_N5_a_corrupt_shard_under_a_resigned_manifest_is_one_line(tmp_path):
    _tiny_records(tmp_path / "set")
    shard = next((tmp_path / "set").glob("*.tfrecord*"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64  # breaks a record's CRC
    shard.write_bytes(bytes(data))
    _resign(tmp_path / "set", lambda manifest: None)  # the checksums vouch for the damage
    result = run_module("tools.train", "--preset=tiny", f"--records={tmp_path / 'set'}",
                        f"--workdir={tmp_path / 'run'}", "--train_steps=2", "--batch_size=2",
                        "--eval_every=1000", "--num_summary_images=0")
    assert_one_line_error(result, "damaged records")  # before: a DataLossError traceback


@pytest.mark.parametrize("damage", ["length", "payload"])
def test_N5_the_studio_refuses_a_corrupt_shard_under_a_resigned_manifest(tmp_path, damage):
    # before: a length of 2^60 was read as is (MemoryError); a garbled payload a DecodeError
    import struct

    from soundloc_tf.serving.studio.pairs import RecordPairs

    _tiny_records(tmp_path / "set")
    shard = next((tmp_path / "set").glob("*.tfrecord*"))
    data = bytearray(shard.read_bytes())
    if damage == "length":
        data[:8] = struct.pack("<Q", 2 ** 60)
    else:
        data[12:76] = b"\xff" * 64
    shard.write_bytes(bytes(data))
    _resign(tmp_path / "set", lambda manifest: None)
    expected = (rf"the record at byte 0 claims {2 ** 60} bytes, past the end of the "
                rf"{len(data)}-byte file" if damage == "length" else
                r"the record at byte 0 is not a soundloc example with an id \(DecodeError\)")
    with pytest.raises(ValueError, match=rf"^corrupt TFRecord: {expected}\. Received: "):
        RecordPairs(str(tmp_path / "set"))


def test_N10_a_box_holding_a_400_digit_integer_is_refused_naming_the_box():
    from soundloc_tf.dataloaders import annotations

    huge = 10 ** 400
    with pytest.raises(ValueError, match=r"a box is 4 finite numbers x1, y1, x2, y2. Received: "
                                         r"box=\[0, 0, 1000000000.*\.\.\.$"):
        annotations.validate_boxes([[0, 0, huge, 1]], False)  # before: OverflowError
    assert annotations.validate_boxes([[0, 0, 1, 1]], False) == [[0.0, 0.0, 1.0, 1.0]]


# N12: a damaged checkpoint state file is named; a lost one loses no checkpoint -------------


def _saved_checkpoints(workdir, saves: int) -> list[str]:
    import tensorflow as tf

    step = tf.Variable(0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step),
                                         str(workdir / "checkpoints"), max_to_keep=None)
    paths = []
    for i in range(saves):
        step.assign(i)
        paths.append(manager.save())
    return paths


def test_N12_a_binary_checkpoint_state_file_is_refused_naming_it(tmp_path):
    # before: "'utf-8' codec can't decode byte 0x80" from train, evaluate and export
    from soundloc_tf.train import run_dir

    _saved_checkpoints(tmp_path, 2)
    state = tmp_path / "checkpoints" / "checkpoint"
    state.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match=r"^the checkpoint state file is damaged \(it is not "
                       r"the text TensorFlow writes\); delete it and the checkpoints beside "
                       rf"it are read instead\. Received: {state} \("):
        run_dir.checkpoint_paths(str(tmp_path))


@pytest.mark.parametrize("damage", ["deleted", "text TensorFlow ignores"])
def test_N12_without_a_state_file_the_checkpoints_beside_it_are_listed_oldest_first(tmp_path,
                                                                                   damage):
    from soundloc_tf.train import run_dir

    saved = _saved_checkpoints(tmp_path, 11)  # ckpt-10 after ckpt-9, not after ckpt-1
    state = tmp_path / "checkpoints" / "checkpoint"
    state.unlink() if damage == "deleted" else state.write_text("model_checkpoint_path: {{{")
    assert run_dir.checkpoint_paths(str(tmp_path)) == saved
    assert run_dir.checkpoint_paths(str(tmp_path / "elsewhere")) == []


# N8: a video too small to show a source is refused before the model loads ----------------


@pytest.mark.parametrize("width,height", [(1, 1), (64, 8)])
def test_N8_a_video_smaller_than_16_pixels_a_side_is_refused_naming_its_size(
        tmp_path, exported, width, height):
    # before: 1x1 ended in an IndexError traceback from PyAV while writing the overlay
    pytest.importorskip("av")
    import numpy as np

    from test_importers import _write_video  # MPEG-4 Part 2: libx264 refuses odd sides

    path = tmp_path / "tiny.mp4"
    _write_video(path, 1.0, size=(width, height),
                 frame_fn=lambda t: np.full((height, width, 3), 128, np.uint8))
    result = run_module("soundloc_tf.tools.localize", f"--saved_model={exported.model_dir}",
                        f"--video={path}", f"--output_dir={tmp_path / 'out'}")
    assert_one_line_error(result, f"the video is {width}x{height} pixels (width x height); "
                          f"each side must be at least 16", repr(str(path)))
    assert not (tmp_path / "out").exists()
