"""The REST contract: the dev server speaks TF Serving's API, the client speaks it back.

The dev server runs in this process on an ephemeral 127.0.0.1 port with both
exported versions; the client runs as the command-line program a user runs.
"""

import ast
import base64
import http.server
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from soundloc_tf.serving.client import ServingClient, ServingError, error_line, localize_request
from soundloc_tf.serving.dev_server import DevServer
from serving_fixtures import (ROOT, SMALL_HEATMAP, assert_one_line_error, exported,  # noqa: F401
                              jpeg_bytes, png_bytes, run_module, scenes, to_uint8, wav_bytes)


@pytest.fixture(scope="module")
def server(exported):
    with DevServer(str(exported.model_dir), port=0, all_versions=True, quiet=True,
                   max_body_bytes=4 * 1024 * 1024) as running:
        yield running


@pytest.fixture(scope="module")
def pairs(exported):
    found = scenes(exported.config, 2)
    images = [jpeg_bytes(to_uint8(found[0]["image"])), png_bytes(to_uint8(found[1]["image"]))]
    sounds = [wav_bytes(s["waveform"], 8000) for s in found]
    return images, sounds


@pytest.fixture(scope="module")
def direct(exported, pairs):
    """serving_default called on the loaded SavedModel, without HTTP."""
    images, sounds = pairs
    signature = tf.saved_model.load(str(exported.version(1))).signatures["serving_default"]
    out = signature(image_bytes=tf.constant(images), wav_bytes=tf.constant(sounds))
    return {k: v.numpy() for k, v in out.items()}


def _http(server, method, path, body=None, raw=None, headers=None):
    """(status, decoded JSON) of one request; never raises for HTTP errors."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ---------------------------------------------------------------------------
# Status, metadata, predict.


def test_status_lists_the_loaded_versions(server):
    client = ServingClient(server.url)
    assert client.status() == {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in ("2", "1")]}
    assert [s["version"] for s in ServingClient(server.url, version=1).status()[
        "model_version_status"]] == ["1"]


def test_metadata_is_the_signature_def_map(server, exported):
    answer = ServingClient(server.url, version=1).metadata()
    assert answer["model_spec"] == {"name": "soundloc", "signature_name": "", "version": "1"}
    defs = answer["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_tensors"} <= set(defs)
    image_bytes = defs["serving_default"]["inputs"]["image_bytes"]
    assert image_bytes["dtype"] == "DT_STRING"
    assert [d["size"] for d in image_bytes["tensor_shape"]["dim"]] == ["-1"]
    heatmap = defs["serving_tensors"]["outputs"]["heatmap"]
    assert [d["size"] for d in heatmap["tensor_shape"]["dim"]] == ["-1", "224", "224"]
    assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    latest = ServingClient(server.url).metadata()
    assert latest["model_spec"]["version"] == "2"


@pytest.mark.parametrize("request_format", ["row", "columnar"])
def test_predict_returns_what_the_saved_model_computes(server, pairs, direct, request_format):
    images, sounds = pairs
    client = ServingClient(server.url, version=1)
    started = time.perf_counter()
    results = client.localize(images, sounds, request_format)
    elapsed = time.perf_counter() - started
    assert len(results) == 2
    for i, result in enumerate(results):
        # JSON carries float32 values exactly (as float64 text).
        np.testing.assert_array_equal(result["heatmap"], direct["heatmap"][i])
        assert result["box"] == [float(v) for v in direct["box"][i]]
        assert result["score"] == float(direct["score"][i])
    assert elapsed < 30  # measured ~0.15 s for two pairs on 2 CPU cores


def test_raw_bodies_follow_tf_serving_rules(server, pairs):
    images, sounds = pairs
    row = _http(server, "POST", "/v1/models/soundloc/versions/1:predict",
                localize_request(images[:1], sounds[:1], "row"))
    assert row[0] == 200 and set(row[1]) == {"predictions"}
    assert set(row[1]["predictions"][0]) == {"heatmap", "box", "score"}
    columnar = _http(server, "POST", "/v1/models/soundloc/versions/1:predict",
                     localize_request(images[:1], sounds[:1], "columnar"))
    assert columnar[0] == 200 and set(columnar[1]["outputs"]) == {"heatmap", "box", "score"}
    assert columnar[1]["outputs"]["box"] == [row[1]["predictions"][0]["box"]]
    # signature_name is optional: serving_default.
    body = localize_request(images[:1], sounds[:1])
    del body["signature_name"]
    assert _http(server, "POST", "/v1/models/soundloc/versions/1:predict", body)[1] == row[1]


def test_versions_route_to_their_own_export(server, pairs):
    images, sounds = pairs
    small = ServingClient(server.url, version=2).localize(images[:1], sounds[:1])[0]
    latest = ServingClient(server.url).localize(images[:1], sounds[:1])[0]
    large = ServingClient(server.url, version=1).localize(images[:1], sounds[:1])[0]
    assert small["heatmap"].shape == latest["heatmap"].shape == (SMALL_HEATMAP, SMALL_HEATMAP)
    assert large["heatmap"].shape == (224, 224)
    with pytest.raises(ServingError, match=r"Servable not found for request: Specific\(soundloc, "
                                           r"3\) \(HTTP 404\)"):
        ServingClient(server.url, version=3).localize(images[:1], sounds[:1])


def test_serving_tensors_signature_over_rest(server, exported, direct):
    found = scenes(exported.config, 1)
    body = {"signature_name": "serving_tensors",
            "instances": [{"image": found[0]["image"].tolist(),
                           "waveform": found[0]["waveform"].tolist()}]}
    status, answer = _http(server, "POST", "/v1/models/soundloc/versions/1:predict", body)
    assert status == 200
    heatmap = np.asarray(answer["predictions"][0]["heatmap"], np.float32)
    assert heatmap.shape == (224, 224) and heatmap.min() == 0 and heatmap.max() == 1


def test_only_the_latest_version_by_default(exported):
    with DevServer(str(exported.model_dir), port=0, quiet=True) as latest_only:
        assert [s["version"] for s in ServingClient(latest_only.url).status()[
            "model_version_status"]] == ["2"]
        status, answer = _http(latest_only, "GET", "/v1/models/soundloc/versions/1")
        assert status == 404 and "Could not find version 1" in answer["error"]


# ---------------------------------------------------------------------------
# Bad requests: a clear 4xx, and the server keeps serving.


def _b64(data):
    return {"b64": base64.b64encode(data).decode()}


def _bad_requests(images, sounds):
    good = {"image_bytes": _b64(images[0]), "wav_bytes": _b64(sounds[0])}
    big = np.zeros([10000, 10000], np.uint8)
    return [
        # (name, method, path, body or raw bytes, status, fragment of the error)
        ("malformed json", "POST", ":predict", b"{\"instances\": [", 400, "JSON Parse error"),
        ("empty body", "POST", ":predict", b"", 400, "The document is empty"),
        ("not an object", "POST", ":predict", [1, 2], 400, "not a JSON object"),
        ("no inputs", "POST", ":predict", {"signature_name": "serving_default"}, 400,
         "Missing 'inputs' or 'instances' key"),
        ("both formats", "POST", ":predict", {"instances": [good], "inputs": good}, 400,
         "expecting only one of 'inputs' or 'instances'"),
        ("missing columnar input", "POST", ":predict",
         {"inputs": {"image_bytes": [_b64(images[0])]}}, 400,
         "Missing named input: wav_bytes in 'inputs' object."),
        ("missing row input", "POST", ":predict",
         {"instances": [{"image_bytes": _b64(images[0])}]}, 400,
         "Failed to process element: 0 of 'instances' list"),
        ("empty instances", "POST", ":predict", {"instances": []}, 400,
         "No values in 'instances' array"),
        ("plain list for two inputs", "POST", ":predict", {"instances": [_b64(images[0])]}, 400,
         "instances is a plain list, but expecting list of objects"),
        ("wrong signature", "POST", ":predict", {"signature_name": "nope", "instances": [good]},
         400, 'Serving signature name: "nope" not found in signature def'),
        ("bad base64", "POST", ":predict",
         {"instances": [{"image_bytes": {"b64": "***"}, "wav_bytes": _b64(sounds[0])}]}, 400,
         "Failed to process element: 0 key: image_bytes of 'instances' list. Error: Unable to "
         "base64 decode"),
        ("number for bytes", "POST", ":predict",
         {"instances": [{"image_bytes": 3, "wav_bytes": _b64(sounds[0])}]}, 400,
         "not of expected type: string"),
        ("image is not an image", "POST", ":predict",
         {"instances": [good, {"image_bytes": _b64(b"GIF89a, no"), "wav_bytes": _b64(sounds[0])}]},
         400, "image_bytes[1]: not a JPEG or PNG image (10 bytes)"),
        ("truncated jpeg", "POST", ":predict",
         {"instances": [{"image_bytes": _b64(images[0][:400]), "wav_bytes": _b64(sounds[0])}]},
         400, "JPEG"),
        ("10000x10000 image", "POST", ":predict",
         {"instances": [{"image_bytes": _b64(png_bytes(big)), "wav_bytes": _b64(sounds[0])}]},
         400, "image_bytes[0]: image is 10000x10000 pixels"),
        ("empty wav", "POST", ":predict",
         {"instances": [{"image_bytes": _b64(images[0]), "wav_bytes": _b64(wav_bytes([], 8000))}]},
         400, "wav_bytes[0]: WAV file holds no audio samples"),
        ("wrong tensor shape", "POST", ":predict",
         {"signature_name": "serving_tensors", "inputs": {"image": [[0.5]], "waveform": [[0.0]]}},
         400, "input image: expected shape [-1, 96, 96, 3]"),
        ("ragged tensor", "POST", ":predict",
         {"signature_name": "serving_tensors", "inputs": {"image": [[0.5], [0.1, 0.2]],
                                                          "waveform": [[0.0]]}},
         400, "ragged"),
        ("unknown model", "POST", "/v1/models/other:predict", {"instances": [good]}, 404,
         "Servable not found for request: Latest(other)"),
        ("classify", "POST", "/v1/models/soundloc:classify", {"examples": []}, 501,
         "only :predict is implemented"),
        ("no model name", "GET", "/v1/models", None, 400, "Missing model name in request."),
        ("malformed path", "GET", "/v1/elsewhere", None, 400, "Malformed request: GET"),
        ("outside the api", "GET", "/index.html", None, 404, "Not found"),
        ("body over the limit", "POST", ":predict", b"x" * (4 * 1024 * 1024 + 1), 413,
         "exceeds the limit of 4194304 bytes"),
    ]


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, pairs):
    images, sounds = pairs
    for name, method, path, body, status, fragment in _bad_requests(images, sounds):
        if path.startswith(":"):
            path = "/v1/models/soundloc/versions/1" + path
        raw = body if isinstance(body, bytes) else None
        got_status, answer = _http(server, method, path, None if raw is not None else body, raw)
        assert got_status == status, (name, got_status, answer)
        assert set(answer) == {"error"} and fragment in answer["error"], (name, answer)
        assert "\n" not in answer["error"], (name, answer)
    assert ServingClient(server.url).status()["model_version_status"][0]["state"] == "AVAILABLE"
    assert len(ServingClient(server.url, version=1).localize(images, sounds)) == 2


def test_concurrent_requests_are_all_answered(server, pairs):
    images, sounds = pairs
    client = ServingClient(server.url, version=1)
    answers, failures = [], []

    def ask(i):
        try:
            if i % 2:
                answers.append(client.localize(images[:1], sounds[:1]))
            else:
                client.localize([b"junk"], sounds[:1])
        except ServingError as error:
            failures.append(error.status)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 3 and failures == [400, 400, 400]


# ---------------------------------------------------------------------------
# The client.


def test_client_program_writes_overlays_and_boxes(server, pairs, tmp_path):
    images, sounds = pairs
    files = []
    for i, (image, sound, ext) in enumerate(zip(images, sounds, ("jpg", "png"))):
        (tmp_path / f"scene{i}.{ext}").write_bytes(image)
        (tmp_path / f"scene{i}.wav").write_bytes(sound)
        files += [f"--image={tmp_path / f'scene{i}.{ext}'}", f"--sound={tmp_path / f'scene{i}.wav'}"]
    out = tmp_path / "out"
    result = run_module("soundloc_tf.serving.client",
                        f"--server={server.url}", "--version=1", "predict",
                        *files, "--format=columnar", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    direct = ServingClient(server.url, version=1).localize(images, sounds)
    from PIL import Image

    for i, entry in enumerate(summary):
        np.testing.assert_allclose(entry["box"], direct[i]["box"], atol=1e-6)
        assert entry["score"] == pytest.approx(direct[i]["score"], abs=1e-6)
        with Image.open(out / f"scene{i}_overlay.png") as overlay:
            assert overlay.size == (96, 96) and overlay.mode == "RGB"
        assert json.loads((out / f"scene{i}_box.json").read_text())["box"] == entry["box"]

    status = run_module("soundloc_tf.serving.client", f"--server={server.url}", "status")
    assert json.loads(status.stdout)["model_version_status"][0]["version"] == "2"
    metadata = run_module("soundloc_tf.serving.client", f"--server={server.url}", "metadata")
    assert "serving_default" in json.loads(metadata.stdout)["metadata"]["signature_def"][
        "signature_def"]


def test_client_program_reports_server_errors_in_one_line(server, pairs, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    (tmp_path / "a.txt").write_bytes(b"plain text")
    (tmp_path / "a.wav").write_bytes(pairs[1][0])
    result = run_module("soundloc_tf.serving.client",
                        f"--server={server.url}", "--version=1", "predict",
                        f"--image={tmp_path / 'a.txt'}", f"--sound={tmp_path / 'a.wav'}",
                        f"--output_dir={tmp_path / 'out'}")
    assert_one_line_error(result, "image_bytes[0]: not a JPEG or PNG image (10 bytes) (HTTP 400)")
    assert not (tmp_path / "out").exists()
    corrupt = run_module("soundloc_tf.serving.client", f"--server={server.url}", "predict",
                         f"--image={tmp_path / 'bad.jpg'}", f"--sound={tmp_path / 'a.wav'}")
    assert_one_line_error(corrupt, "JPEG", "(HTTP 400)")
    nothing = run_module("soundloc_tf.serving.client", "--server=http://127.0.0.1:9", "--retries=1",
                         "--backoff=0.01", "status")
    assert_one_line_error(nothing, "no answer from http://127.0.0.1:9")
    mismatch = run_module("soundloc_tf.serving.client", f"--server={server.url}", "predict",
                          f"--image={tmp_path / 'bad.jpg'}")
    assert mismatch.returncode == 2 and "--sound" in mismatch.stderr


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers with the queued statuses, then 200 {"ok": true}."""

    statuses: list = []
    calls = 0

    def do_GET(self):  # noqa: N802
        type(self).calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        body = json.dumps({"ok": True} if status == 200 else
                          {"error": f"failure {status}\\n\\t [[{{node x}}]]"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flaky.calls = 0
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_retries_back_off_on_5xx_but_not_on_4xx(flaky):
    _, url = flaky
    delays = []
    _Flaky.statuses = [503, 500]
    client = ServingClient(url, retries=3, backoff=0.25, sleep=delays.append)
    assert client.status() == {"ok": True}
    assert delays == [0.25, 0.5] and _Flaky.calls == 3

    _Flaky.calls, delays[:] = 0, []
    _Flaky.statuses = [400]
    with pytest.raises(ServingError) as error:
        client.status()
    assert str(error.value) == "failure 400 (HTTP 400)" and error.value.status == 400
    assert _Flaky.calls == 1 and delays == []

    _Flaky.calls = 0
    _Flaky.statuses = [503] * 5
    with pytest.raises(ServingError, match=r"failure 503 \(HTTP 503\)"):
        client.status()
    assert _Flaky.calls == 4 and delays == [0.25, 0.5, 1.0]


def test_connection_errors_are_retried_then_reported():
    delays = []
    client = ServingClient("http://127.0.0.1:9", retries=2, backoff=0.1, timeout=2,
                           sleep=delays.append)
    with pytest.raises(ServingError, match="no answer from http://127.0.0.1:9") as error:
        client.status()
    assert error.value.status is None and delays == [0.1, 0.2]


def test_error_line_reads_tf_serving_messages():
    escaped = ("assertion failed: [image_bytes[2]: not a JPEG or PNG image (4 bytes)]\\n\\t "
               "[[{{function_node __inference_serving_default_1}}{{node map/while/Assert}}]]")
    assert error_line(escaped) == "image_bytes[2]: not a JPEG or PNG image (4 bytes)"
    assert error_line("Graph execution error:\n\nDetected at node x defined at (most recent "
                      "call last):\n<stack traces unavailable>\nInvalid PNG data, size 10\n\t [[x]]"
                      ) == "Invalid PNG data, size 10"
    assert error_line("Servable not found for request: Latest(x)") == \
        "Servable not found for request: Latest(x)"


# ---------------------------------------------------------------------------
# Layering: the serving programs depend on the SavedModel's signatures only.


@pytest.mark.parametrize("module", ["serving/client.py", "serving/dev_server.py"])
def test_serving_programs_import_no_library_code(module):
    """Besides each other (relative imports), only the standard-library log helper."""
    tree = ast.parse((ROOT / module).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    project = {name for name in imported
               if name and name.split(".")[0] in ("soundloc_tf", "tools", "serving")}
    assert project <= {"soundloc_tf.tf_logs"}


def test_the_client_needs_no_tensorflow():
    result = run_module("soundloc_tf.serving.client", "--help")
    assert result.returncode == 0 and "predict" in result.stdout
    code = ("import sys, soundloc_tf.serving.client; assert 'tensorflow' not in sys.modules; "
            "assert not [m for m in sys.modules if m.startswith('soundloc_tf.') "
            "and m != 'soundloc_tf.serving' and not m.startswith('soundloc_tf.serving.')]")
    import subprocess

    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                          capture_output=True).returncode == 0


def test_dev_server_program_reports_a_bad_model_path(tmp_path):
    result = run_module("soundloc_tf.serving.dev_server",
                        f"--model_base_path={tmp_path / 'missing'}")
    assert_one_line_error(result, "model_base_path is not a directory")
    (tmp_path / "empty").mkdir()
    result = run_module("soundloc_tf.serving.dev_server", f"--model_base_path={tmp_path / 'empty'}")
    assert_one_line_error(result, "no version directories")


def test_deployment_files_name_the_same_model_and_paths():
    readme = (ROOT / "serving" / "README.md").read_text()
    assert "docker run -p 8501:8501 --mount type=bind,source=" in readme
    assert "target=/models/soundloc -e MODEL_NAME=soundloc -t tensorflow/serving" in readme
    for command in ("soundloc-train", "soundloc-export", "soundloc-client"):
        assert command in readme
    config = (ROOT / "serving" / "models.config").read_text()
    assert 'name: "soundloc"' in config and 'base_path: "/models/soundloc"' in config
    assert 'model_platform: "tensorflow"' in config
    batching = (ROOT / "serving" / "batching_parameters.txt").read_text()
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                  "max_enqueued_batches"):
        assert field + " { value: " in batching


# ---------------------------------------------------------------------------
# TF Serving's warm-up records and its gRPC API.

try:
    from tensorflow_serving.apis import prediction_log_pb2
except ImportError:  # installed with --no-deps (serving/README.md)
    prediction_log_pb2 = None
needs_tf_serving_api = pytest.mark.skipif(
    prediction_log_pb2 is None, reason="tensorflow-serving-api is not installed (pip install "
                                       "--no-deps tensorflow-serving-api==2.21.0)")


@needs_tf_serving_api
def test_export_writes_warmup_records_that_tf_serving_parses(exported):
    path = exported.version(1) / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(str(path))]
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == ["serving_default",
                                                               "serving_tensors"]
    assert all(r.model_spec.name == "soundloc" for r in requests)
    images = tf.make_ndarray(requests[0].inputs["image_bytes"])
    assert [bytes(i[:3]) for i in images] == [b"\xff\xd8\xff", b"\x89PN"]  # a JPEG and a PNG
    assert tf.make_ndarray(requests[1].inputs["image"]).shape == (1, 96, 96, 3)
    assert tf.make_ndarray(requests[1].inputs["waveform"]).shape == (1, 8000)


def test_the_dev_server_replays_the_warmup_records(server):
    assert {v: loaded.warmup_requests for v, loaded in server.store.versions.items()} == \
        {1: 2, 2: 2}


@pytest.fixture(scope="module")
def grpc_server(exported):
    with DevServer(str(exported.model_dir), port=0, grpc_port=0, all_versions=True,
                   quiet=True) as running:
        yield running


@needs_tf_serving_api
def test_grpc_predict_round_trip_equals_rest(grpc_server, pairs):
    from soundloc_tf.serving.client import GrpcClient

    images, sounds = pairs
    rest = ServingClient(grpc_server.url, version=1).localize(images, sounds)
    client = GrpcClient(grpc_server.grpc_target, version=1)
    over_grpc = client.localize(images, sounds)
    for a, b in zip(over_grpc, rest):
        np.testing.assert_array_equal(a["heatmap"], b["heatmap"])
        assert a["box"] == b["box"] and a["score"] == b["score"]
    latest = GrpcClient(grpc_server.grpc_target).localize(images[:1], sounds[:1])[0]
    assert latest["heatmap"].shape == (SMALL_HEATMAP, SMALL_HEATMAP)
    with pytest.raises(ServingError) as error:
        client.localize([b"junk"], sounds[:1])
    assert error.value.code == "INVALID_ARGUMENT"
    assert str(error.value) == ("image_bytes[0]: not a JPEG or PNG image (4 bytes) "
                                "(gRPC INVALID_ARGUMENT)")
    with pytest.raises(ServingError, match=r"Servable not found for request: Specific\(soundloc, "
                                           r"7\) \(gRPC NOT_FOUND\)"):
        GrpcClient(grpc_server.grpc_target, version=7).localize(images[:1], sounds[:1])
    client.close()


@pytest.mark.slow
@needs_tf_serving_api
def test_client_program_predicts_over_grpc(grpc_server, pairs, tmp_path):
    images, sounds = pairs
    (tmp_path / "a.jpg").write_bytes(images[0])
    (tmp_path / "a.wav").write_bytes(sounds[0])
    result = run_module("soundloc_tf.serving.client",
                        f"--grpc={grpc_server.grpc_target}", "--version=1",
                        "predict", f"--image={tmp_path / 'a.jpg'}",
                        f"--sound={tmp_path / 'a.wav'}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    rest = ServingClient(grpc_server.url, version=1).localize(images[:1], sounds[:1])[0]
    assert json.loads(result.stdout)[0]["box"] == [round(v, 6) for v in rest["box"]]
