"""The REST endpoint under (small) load, and its input limits, each exceeded once.

`benchmarks/load_test.py` runs the dev server as a child process; here with 3 clients x 8
requests, every second one bad.  The limit tests use an in-process DevServer on an ephemeral
127.0.0.1 port and assert the 4xx status and the message that names the limit.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest

from benchmarks import load_test
from soundloc_tf.serving.dev_server import DevServer
from serving_fixtures import exported, png_bytes, wav_bytes  # noqa: F401 (fixture)

LIMIT = 256 * 1024  # the test server's --max_body_bytes


@pytest.mark.slow
def test_load_test_serves_every_good_request_and_4xx_for_every_bad_one(exported, tmp_path):
    output = tmp_path / "load.json"
    code = load_test.main([f"--model_base_path={exported.model_dir}", "--clients=3",
                           "--requests=8", "--bad_every=2", "--max_seconds=240",
                           f"--output={output}"])
    result = json.loads(output.read_text())
    assert code == 0, result
    assert result["sent"] == 24 and result["good"] == 12 and result["bad"] == 12
    assert result["failed_good"] == 0 and result["bad_not_4xx"] == 0
    assert result["bad_wrong_status"] == 0  # each bad kind got its own 400/404/413
    assert sum(result["bad_by_kind"].values()) == 12 and all(result["bad_by_kind"].values())
    assert result["statuses"]["200"] == 12
    assert result["server_alive_after"] and not result["stopped_early"]
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["requests_per_second"] > 0
    assert result["rss_growth_mb"] <= 200, result


@pytest.mark.slow
def test_200_concurrent_requests_half_bad_lose_no_good_one(exported, tmp_path):
    """200 clients at once, one request each (a connection each), every second one bad: all
    100 good ones answered 200, every bad one its 4xx, and the server grows by at most 300 MB
    (the bound the dev server documents for its default limits)."""
    output = tmp_path / "burst.json"
    code = load_test.main([f"--model_base_path={exported.model_dir}", "--clients=200",
                           "--requests=1", "--bad_every=2", "--max_seconds=400",
                           "--max_rss_growth_mb=300", f"--output={output}"])
    result = json.loads(output.read_text())
    assert code == 0, result
    assert result["sent"] == 200 and result["good"] == 100 and result["bad"] == 100
    assert result["statuses"]["200"] == 100 and result["failed_good"] == 0
    assert result["bad_not_4xx"] == 0 and result["bad_wrong_status"] == 0
    assert result["server_alive_after"] and result["rss_growth_mb"] <= 300, result


def test_load_test_rejects_an_empty_load():
    with pytest.raises(ValueError, match="clients and requests must be >= 1"):
        load_test.load_test("unused", clients=0)


# ---------------------------------------------------------------------------
# Input limits: body size, image side, sample rate, WAV chunks; audio length and batch size
# are bounded only by the body size (the middle clip_seconds of a long sound are used).


@pytest.fixture(scope="module")
def server(exported):
    with DevServer(str(exported.model_dir), port=0, quiet=True, max_body_bytes=LIMIT) as running:
        yield running


def _predict(server, pairs, raw: bytes | None = None) -> tuple[int, dict]:
    body = raw if raw is not None else json.dumps({"instances": [
        {"image_bytes": {"b64": base64.b64encode(i).decode()},
         "wav_bytes": {"b64": base64.b64encode(s).decode()}} for i, s in pairs]}).encode()
    request = urllib.request.Request(server.url + "/v1/models/soundloc:predict", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _image(side_w: int = 64, side_h: int = 64) -> bytes:
    return png_bytes(np.full((side_h, side_w, 3), 120, np.uint8))


def _tone(seconds: float, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes(0.3 * np.sin(2 * np.pi * 440 * t), rate)


def _with_rate(wav: bytes, rate: int) -> bytes:
    """The same WAV with another sample rate (and byte rate) written into its header."""
    data = bytearray(wav)
    struct.pack_into("<II", data, 24, rate, rate * 2)
    return bytes(data)


def _many_chunks(wav: bytes, count: int) -> bytes:
    """`count` empty LIST chunks inserted before the fmt chunk."""
    junk = b"LIST" + struct.pack("<I", 0)
    body = wav[12:]
    data = b"WAVE" + junk * count + body
    return b"RIFF" + struct.pack("<I", len(data)) + data


def test_the_body_size_limit_is_a_413(server):
    status, answer = _predict(server, [], raw=b" " * (LIMIT + 1))
    assert status == 413
    assert answer["error"] == f"the request body of {LIMIT + 1} bytes exceeds the limit of " \
                              f"{LIMIT} bytes"


def test_an_image_side_over_the_limit_is_a_400(server):
    from soundloc_tf.inference.export import MAX_IMAGE_SIDE

    wide = _image(MAX_IMAGE_SIDE + 1, 2)  # a small file: the header's size is checked
    status, answer = _predict(server, [(wide, _tone(1.0))])
    assert status == 400
    assert f"image is {MAX_IMAGE_SIDE + 1}x2 pixels" in answer["error"], answer
    assert str(MAX_IMAGE_SIDE) in answer["error"]
    status, _ = _predict(server, [(_image(MAX_IMAGE_SIDE, 2), _tone(1.0))])
    assert status == 200


@pytest.mark.parametrize("rate", [3999, 192001])
def test_a_sample_rate_outside_the_range_is_a_400(server, rate):
    from soundloc_tf.inference.export import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

    status, answer = _predict(server, [(_image(), _with_rate(_tone(0.5), rate))])
    assert status == 400
    assert f"sample rate {rate} Hz is outside the supported range " \
           f"[{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz" in answer["error"], answer


def test_a_wav_with_too_many_chunks_is_a_400(server):
    from soundloc_tf.inference.export import MAX_WAV_CHUNKS

    status, _ = _predict(server, [(_image(), _many_chunks(_tone(0.5), 10))])
    assert status == 200
    status, answer = _predict(server, [(_image(), _many_chunks(_tone(0.5), MAX_WAV_CHUNKS + 5))])
    assert status == 400
    assert "wav_bytes[0]" in answer["error"] and "fmt" in answer["error"], answer


def test_audio_length_and_batch_size_are_bounded_by_the_body_only(server):
    # 12 s of audio: only the middle clip_seconds are decoded.
    long_sound = _tone(12.0)
    status, answer = _predict(server, [(_image(), long_sound)])
    assert status == 200 and len(answer["predictions"]) == 1
    # 8 pairs in one request fit the body limit...
    pair = (_image(), _tone(1.0))
    status, answer = _predict(server, [pair] * 8)
    assert status == 200 and len(answer["predictions"]) == 8
    # ...a batch whose body exceeds it is a 413 naming the limit.
    count = LIMIT // len(base64.b64encode(pair[1])) + 2
    status, answer = _predict(server, [pair] * count)
    assert status == 413 and f"limit of {LIMIT} bytes" in answer["error"]
