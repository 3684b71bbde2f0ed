"""Client for a soundloc model served by TensorFlow Serving (or serving/dev_server.py).

  soundloc-client [--server=http://localhost:8501] [--model_name=soundloc] [--version=N] status
  soundloc-client ... metadata
  soundloc-client ... [--grpc=localhost:8500] predict --image=scene.jpg --sound=scene.wav
                      [--image=... --sound=...] [--format=row|columnar] [--output_dir=predictions]

`predict` sends the files to the `serving_default` signature (REST: as
{"b64": ...}; with --grpc: as string tensors to PredictionService/Predict),
writes <output_dir>/<image name>_overlay.png (heat map and box over the
image at its own resolution, turned as its EXIF says) and <image
name>_box.json, and prints the boxes as JSON.  Images that share a name get
"-2", "-3", ... added, so no result overwrites another; the files are
written all together or not at all.

It depends on nothing but the exported signatures: over REST (GET
/v1/models/<name>[/versions/<v>], .../metadata, POST ...:predict) the
standard library, numpy, and Pillow for the PNG; over gRPC also grpcio and
tensorflow-serving-api's protos (which import TensorFlow).  Requests have a
timeout; connection failures, timeouts and 5xx answers are retried with
exponential backoff, 4xx answers are not (a 413 sent while the body was
still uploading included).  Server errors become one-line `ServingError`
messages; on the command line, "error: <message>" on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import sys
import time
import urllib.parse
from typing import Any, Callable, Sequence

import numpy as np

OVERLAY_OPACITY = 0.5
DEFAULT_SERVER = "http://localhost:8501"
DEFAULT_GRPC_SERVER = "localhost:8500"
# Bounds of the retry policy: a timeout or delay must be a finite number of seconds the
# socket and time.sleep accept (inf and 1e10 overflow C's time_t: a traceback otherwise).
MAX_TIMEOUT_SECONDS = 24 * 3600.0
MAX_BACKOFF_SECONDS = 3600.0
MAX_RETRIES = 20
# Files read for a request: the dev server's default body limit (base64 makes a file a third
# larger, so a bigger one could not be sent); /dev/zero or a huge file is refused instead of
# read without bound.
MAX_FILE_BYTES = 64 * 1024 * 1024
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


class ServingError(Exception):
    """A request that failed: the server's one-line message, the HTTP status (None: no
    answer, or gRPC) and the gRPC status code name (None: REST)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def error_line(message: str) -> str:
    """TF Serving's error text reduced to the line that explains it.

    Graph errors carry node names and stack lines after the first line, and
    TF Serving C-escapes the message (newlines arrive as a backslash and
    "n"); a failed in-graph check reads "assertion failed: [<message>]".
    """
    text = str(message).replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
    text = _FUNCTION_NODE.sub("", text)
    if "assertion failed: [" in text:
        text = text.split("assertion failed: [", 1)[1]
        # The check's own text may end in "]" (e.g. "[1, 4096]"): drop only the wrapper's.
        return text.split("]\n", 1)[0] if "]\n" in text else text.strip()[:-1]
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Detected at node", "<stack traces", "[[")) \
                and line != "Graph execution error:":
            return line
    return text.strip() or "unknown error"


class ServingClient:
    """TF Serving's REST API for one model: status, metadata, predict."""

    def __init__(self, server: str = DEFAULT_SERVER, model_name: str = "soundloc",
                 version: int | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep):
        parsed = urllib.parse.urlparse(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"server must be an http(s)://host:port URL. Received: "
                             f"server={server!r}")
        if not model_name or "/" in model_name or ":" in model_name:
            raise ValueError(f"model_name must be a plain name. Received: "
                             f"model_name={model_name!r}")
        if version is not None and (isinstance(version, bool) or int(version) < 1):
            raise ValueError(f"version must be a positive integer. Received: version={version!r}")
        check_retry_policy(timeout, retries, backoff)
        self.server = server.rstrip("/")
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._sleep = sleep

    @property
    def model_url(self) -> str:
        url = f"{self.server}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        return url if self.version is None else f"{url}/versions/{self.version}"

    # -- HTTP ------------------------------------------------------------------

    def request(self, method: str, url: str, body: dict | None = None) -> dict:
        """One JSON request with retries; returns the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        attempt = 0
        while True:
            try:
                status, payload = self._exchange(method, url, data)
                if status < 400:
                    return _decode_json(payload, status)
                message = _error_text(payload) or f"HTTP {status}"
                failure = ServingError(f"{error_line(message)} (HTTP {status})", status)
                if status < 500:
                    raise failure
            except (http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", None) or error
                failure = ServingError(f"no answer from {self.server} ({reason})")
            if attempt >= self.retries:
                raise failure
            self._sleep(self.backoff * 2 ** attempt)
            attempt += 1

    def _exchange(self, method: str, url: str, data: bytes | None) -> tuple[int, bytes]:
        """(status, body) of one HTTP request.

        A server may answer before it has read the whole body (a 413 for a body over
        its limit) and close the connection: the upload then fails with a broken pipe
        or a reset, but the answer is already in the socket, so it is read and
        returned rather than reported as a lost connection (and retried).
        """
        parsed = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parsed.scheme == "https" else \
            http.client.HTTPConnection
        connection = kind(parsed.netloc, timeout=self.timeout)
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            try:
                connection.request(method, target, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the answer, if the server sent one, is read below
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def status(self) -> dict:
        """GET /v1/models/<name>[/versions/<v>]: {"model_version_status": [...]}."""
        return self.request("GET", self.model_url)

    def metadata(self) -> dict:
        """GET .../metadata: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        return self.request("GET", self.model_url + "/metadata")

    def predict(self, body: dict) -> dict:
        """POST ...:predict with a request body as TF Serving documents it."""
        return self.request("POST", self.model_url + ":predict", body)

    # -- soundloc --------------------------------------------------------------

    def localize(self, images: Sequence[bytes], sounds: Sequence[bytes],
                 request_format: str = "row") -> list[dict[str, Any]]:
        """Image and WAV file bytes -> one {"heatmap", "box", "score"} per pair."""
        if request_format not in ("row", "columnar"):
            raise ValueError("request_format must be 'row' or 'columnar'. Received: "
                             f"request_format={request_format!r}")
        if len(images) != len(sounds) or not images:
            raise ValueError("need the same, non-zero number of images and sounds. Received: "
                             f"{len(images)} images, {len(sounds)} sounds")
        body = localize_request(images, sounds, request_format)
        return parse_localize_response(self.predict(body), len(images))


class GrpcClient:
    """TF Serving's gRPC API (PredictionService/Predict, port 8500) for one model.

    Uses tensorflow-serving-api's protos (install it with --no-deps, see
    serving/README.md).  They live under tensorflow.core, so this client
    imports TensorFlow; the REST client does not.  UNAVAILABLE and
    DEADLINE_EXCEEDED are retried with exponential backoff, other failures
    are not.

    Args:
        target: host:port of the gRPC server.
        model_name: the served model's name.
        version: a version number; None: the latest.
        timeout: seconds per call.
        retries: retries after UNAVAILABLE or DEADLINE_EXCEEDED.
        backoff: first retry delay in seconds, doubled on each retry.
        max_message_bytes: the largest answer accepted.
    """

    _RETRIED = ("UNAVAILABLE", "DEADLINE_EXCEEDED")

    def __init__(self, target: str = DEFAULT_GRPC_SERVER, model_name: str = "soundloc",
                 version: int | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 max_message_bytes: int = 256 * 1024 * 1024):
        if not re.fullmatch(r"[^\s/:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", target or ""):
            raise ValueError(f"target must be host:port. Received: target={target!r}")
        if version is not None and (isinstance(version, bool) or int(version) < 1):
            raise ValueError(f"version must be a positive integer. Received: version={version!r}")
        check_retry_policy(timeout, retries, backoff)
        import grpc

        try:
            from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        except ImportError:
            raise ValueError("gRPC needs tensorflow-serving-api's protos: pip install --no-deps "
                             "tensorflow-serving-api==2.21.0") from None
        self.target, self.model_name = target, model_name
        self.version = None if version is None else int(version)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._sleep = sleep
        self._grpc, self._predict_pb2 = grpc, predict_pb2
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, inputs: dict[str, np.ndarray],
                signature: str = "serving_default") -> dict[str, np.ndarray]:
        """Input arrays (object arrays of bytes for strings) -> output arrays."""
        request = self._predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        for key, array in inputs.items():
            request.inputs[key].CopyFrom(tensor_proto(np.asarray(array)))
        attempt = 0
        while True:
            try:
                response = self._stub.Predict(request, timeout=self.timeout)
                return {key: tensor_array(proto) for key, proto in response.outputs.items()}
            except self._grpc.RpcError as error:
                code = error.code().name
                failure = ServingError(f"{error_line(error.details() or code)} (gRPC {code})",
                                       code=code)
                if code not in self._RETRIED or attempt >= self.retries:
                    raise failure from None
            self._sleep(self.backoff * 2 ** attempt)
            attempt += 1

    def localize(self, images: Sequence[bytes], sounds: Sequence[bytes]) -> list[dict[str, Any]]:
        """Image and WAV file bytes -> one {"heatmap", "box", "score"} per pair."""
        if len(images) != len(sounds) or not images:
            raise ValueError("need the same, non-zero number of images and sounds. Received: "
                             f"{len(images)} images, {len(sounds)} sounds")
        out = self.predict({"image_bytes": np.array(list(images), dtype=object),
                            "wav_bytes": np.array(list(sounds), dtype=object)})
        return parse_localize_response({"outputs": {k: out[k].tolist() for k in out}},
                                       len(images))

    def close(self) -> None:
        self._channel.close()


def tensor_proto(array: np.ndarray):
    """A numpy array (float32, int64, or bytes objects) -> tensorflow.TensorProto."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if array.dtype == object or array.dtype.kind == "S":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(bytes(v) for v in array.reshape(-1))
    elif array.dtype.kind == "f":
        proto.dtype = types_pb2.DT_FLOAT
        proto.tensor_content = array.astype("<f4").tobytes()
    elif array.dtype.kind in "iu":
        proto.dtype = types_pb2.DT_INT64
        proto.tensor_content = array.astype("<i8").tobytes()
    else:
        raise ValueError(f"arrays are float, integer or bytes. Received: dtype={array.dtype}")
    return proto


def tensor_array(proto) -> np.ndarray:
    """A float32, int64 or string tensorflow.TensorProto -> numpy array."""
    from tensorflow.core.framework import types_pb2

    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    dtype, values = {types_pb2.DT_FLOAT: ("<f4", proto.float_val),
                     types_pb2.DT_INT64: ("<i8", proto.int64_val)}.get(proto.dtype, (None, None))
    if dtype is None:
        raise ServingError(f"unexpected answer from the server: tensor of dtype enum "
                           f"{proto.dtype}")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    return np.array(values, dtype).reshape(shape) if len(values) != 1 else \
        np.full(shape, values[0], dtype)


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def localize_request(images: Sequence[bytes], sounds: Sequence[bytes],
                     request_format: str = "row") -> dict:
    """The `serving_default` predict body in row ("instances") or columnar ("inputs") form."""
    if request_format == "row":
        return {"signature_name": "serving_default",
                "instances": [{"image_bytes": b64(i), "wav_bytes": b64(s)}
                              for i, s in zip(images, sounds)]}
    return {"signature_name": "serving_default",
            "inputs": {"image_bytes": [b64(i) for i in images],
                       "wav_bytes": [b64(s) for s in sounds]}}


def parse_localize_response(answer: dict, count: int) -> list[dict[str, Any]]:
    """{"predictions": [...]} or {"outputs": {...}} -> per-pair heatmap/box/score."""
    try:
        if "predictions" in answer:
            rows = answer["predictions"]
        else:
            outputs = answer["outputs"]
            rows = [{k: outputs[k][i] for k in ("heatmap", "box", "score")} for i in range(count)]
        results = [{"heatmap": np.asarray(r["heatmap"], np.float32),
                    "box": [float(v) for v in r["box"]], "score": float(r["score"])} for r in rows]
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ServingError(f"unexpected answer from the server ({type(error).__name__}: {error}); "
                           "is this a soundloc model?") from None
    if len(results) != count or any(r["heatmap"].ndim != 2 or len(r["box"]) != 4
                                    for r in results):
        raise ServingError(f"unexpected answer from the server: {len(results)} results for "
                           f"{count} pairs, or wrong shapes")
    return results


# ---------------------------------------------------------------------------
# Overlays (numpy + Pillow; the colours match soundloc_tf.visualize.colorize).


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> RGB float [H, W, 3], the same jet-like map as the TensorBoard images."""
    x = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)[..., None]
    return np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)


# The served graph's EXIF search (soundloc_tf/inference/export.py; not imported: it loads
# TensorFlow), mirrored so the overlay is drawn on the picture the model saw: JPEG APP1
# "Exif" among the first 64 segments before the scan, PNG eXIf among the first 64 chunks
# before the first IDAT, 256 IFD entries.  Pillow's exif_transpose looks further (a PNG
# eXIf after IDAT, a JPEG Exif after 500 segments): the model then saw the stored pixels,
# and an overlay turned by Pillow would put the box on the wrong part of the picture.
GRAPH_MAX_IMAGE_SEGMENTS = 64
GRAPH_MAX_EXIF_ENTRIES = 256


def _uint(data: bytes, pos: int, size: int, big: bool) -> int:
    """As the graph's _uint_at: 0 when out of bounds."""
    if pos < 0 or pos + size > len(data):
        return 0
    return int.from_bytes(data[pos:pos + size], "big" if big else "little")


def _tiff_orientation(data: bytes, tiff: int) -> int:
    order = data[tiff:tiff + 2]
    big = order == b"MM"
    ifd = tiff + _uint(data, tiff + 4, 4, big)
    for i in range(min(_uint(data, ifd, 2, big), GRAPH_MAX_EXIF_ENTRIES)):
        entry = ifd + 2 + 12 * i
        if _uint(data, entry, 2, big) == 0x0112:
            value = _uint(data, entry + 8, 2, big)
            return value if order in (b"MM", b"II") and 1 <= value <= 8 else 1
    return 1


def graph_exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8; 1: none found) the served graph reads from JPEG or PNG bytes."""
    tiff = -1
    if data.startswith(b"\xff\xd8"):
        pos = 2
        for _ in range(GRAPH_MAX_IMAGE_SEGMENTS):
            if pos + 10 > len(data):
                break
            marker, size = _uint(data, pos, 2, True), _uint(data, pos + 2, 2, True)
            if marker == 0xFFE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
                tiff = pos + 10
                break
            if marker >> 8 != 0xFF or marker == 0xFFDA or size < 2:
                break  # not a marker, or the scan: no EXIF before the pixels
            pos += 2 + size
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        pos = 8
        for _ in range(GRAPH_MAX_IMAGE_SEGMENTS):
            if pos + 12 > len(data):
                break
            kind = data[pos + 4:pos + 8]
            if kind == b"eXIf":
                tiff = pos + 8
                break
            if kind == b"IDAT":
                break
            pos += 12 + _uint(data, pos, 4, True)
    return _tiff_orientation(data, tiff) if tiff >= 0 else 1


def load_rgb(data: bytes) -> np.ndarray:
    """Image file bytes -> uint8 RGB [H, W, 3] as the served model saw it (turned as its EXIF
    orientation says where the graph finds it: graph_exif_orientation); 16-bit and gray
    images scaled to 8 bits."""
    from PIL import Image

    turns = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose
    orientation = graph_exif_orientation(data)
    with Image.open(io.BytesIO(data)) as stored:
        stored.load()
        image = stored.transpose(turns[orientation]) if orientation in turns else stored.copy()
    with image:
        if image.mode.startswith("I;16") or image.mode == "I":
            values = np.asarray(image, dtype=np.float64)
            scale = 65535.0 if values.max() > 255 else 255.0
            gray = np.round(values / scale * 255.0).clip(0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.asarray(image.convert("RGB"))


def overlay_png(image: np.ndarray, heatmap: np.ndarray, box: Sequence[float]) -> bytes:
    """uint8 RGB image, heat map [h, w] in [0, 1] and normalised box -> PNG bytes."""
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    resized = Image.fromarray(np.asarray(heatmap, np.float32)).resize(
        (width, height), Image.BILINEAR)
    heat = np.asarray(resized, np.float32)
    low, high = heat.min(), heat.max()
    heat = (heat - low) / max(high - low, 1e-12)
    blended = (1.0 - OVERLAY_OPACITY) * image.astype(np.float32) / 255.0 + \
        OVERLAY_OPACITY * colorize(heat)
    picture = Image.fromarray(np.round(blended * 255.0).clip(0, 255).astype(np.uint8))
    x1, y1, x2, y2 = box
    ImageDraw.Draw(picture).rectangle(
        [x1 * width, y1 * height, max(x2 * width - 1, x1 * width),
         max(y2 * height - 1, y1 * height)], outline=(255, 255, 255))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------------------
# Command line.


def _decode_json(payload: bytes, status: int) -> dict:
    try:
        value = json.loads(payload)
    except ValueError:
        raise ServingError(f"the server answered HTTP {status} with a body that is not JSON "
                           f"({len(payload)} bytes)", status) from None
    if not isinstance(value, dict):
        raise ServingError(f"the server answered HTTP {status} with JSON that is not an object",
                           status)
    return value


def _error_text(payload: bytes) -> str:
    try:
        value = json.loads(payload)
    except ValueError:  # e.g. waitress's "Request Entity Too Large\r\n\r\nexceeds max_body ..."
        lines = [line.strip() for line in payload.decode("utf-8", "replace").splitlines()]
        return ": ".join(line for line in lines if line)[:500]
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return value["error"]
    return ""


def write_files(files: dict[str, bytes]) -> None:
    """Writes every file under a temporary name, then renames them all: on a full disk the
    temporaries are removed and no file is replaced or left half written."""
    written = []
    try:
        for path, data in files.items():
            written.append(path + ".tmp")
            with open(path + ".tmp", "wb") as f:
                f.write(data)
        for path in files:
            os.replace(path + ".tmp", path)
    except OSError as error:
        for temporary in written:
            if os.path.exists(temporary):
                os.remove(temporary)
        raise OSError(f"cannot write {len(files)} output files in "
                      f"{os.path.dirname(next(iter(files))) or '.'!r} ({error.strerror or error}); "
                      "nothing was written") from None


def output_stems(image_paths: Sequence[str]) -> list[str]:
    """One distinct file-name stem per pair: the image's name, with "-2", "-3", ... added
    when images share a name (same file twice, or same name in different folders)."""
    stems: list[str] = []
    for path in image_paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        candidate, n = stem, 1
        while candidate in stems:
            n += 1
            candidate = f"{stem}-{n}"
        stems.append(candidate)
    return stems


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundloc-client", description="Query a soundloc model served by TensorFlow Serving.")
    parser.add_argument("--server", default=DEFAULT_SERVER,
                        help="REST endpoint (default %(default)s)")
    parser.add_argument("--grpc", default=None, metavar="HOST:PORT",
                        help=f"send predict over gRPC to this address (TF Serving: "
                             f"{DEFAULT_GRPC_SERVER}) instead of REST")
    parser.add_argument("--model_name", default="soundloc")
    parser.add_argument("--version", type=int, default=None, help="default: the latest")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries after connection errors, timeouts and 5xx answers")
    parser.add_argument("--backoff", type=float, default=0.5,
                        help="first retry delay in seconds, doubled on each retry")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="GET /v1/models/<name>")
    commands.add_parser("metadata", help="GET /v1/models/<name>/metadata")
    predict = commands.add_parser("predict", help="localise sounds in images")
    predict.add_argument("--image", action="append", required=True,
                         help="JPEG or PNG; repeat for a batch")
    predict.add_argument("--sound", action="append", required=True, help="WAV; one per --image")
    predict.add_argument("--format", choices=("row", "columnar"), default="row",
                         help="request body: 'instances' (row) or 'inputs' (columnar)")
    predict.add_argument("--output_dir", default="predictions")
    return parser


def check_retry_policy(timeout: float, retries: int, backoff: float) -> None:
    """One ValueError naming the first flag out of range (NaN and infinity included)."""
    import math

    for name, value, low, high, low_open in (
            ("timeout", timeout, 0.0, MAX_TIMEOUT_SECONDS, True),
            ("retries", retries, 0, MAX_RETRIES, False),
            ("backoff", backoff, 0.0, MAX_BACKOFF_SECONDS, False)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not ok:
            interval = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
            what = "an integer" if name == "retries" else "a number of seconds"
            raise ValueError(f"{name} must be {what} in {interval}. Received: {name}={value!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        client = ServingClient(args.server, args.model_name, args.version, args.timeout,
                               args.retries, args.backoff)
        if args.command == "status":
            print(json.dumps(client.status(), indent=1))
        elif args.command == "metadata":
            print(json.dumps(client.metadata(), indent=1))
        else:
            if len(args.image) != len(args.sound):
                raise ValueError(f"give one --sound per --image. Received: {len(args.image)} "
                                 f"images, {len(args.sound)} sounds")
            images = [_read(p) for p in args.image]
            sounds = [_read(p) for p in args.sound]
            if args.grpc:
                results = GrpcClient(args.grpc, args.model_name, args.version, args.timeout,
                                     args.retries, args.backoff).localize(images, sounds)
            else:
                results = client.localize(images, sounds, args.format)
            os.makedirs(args.output_dir, exist_ok=True)
            summary, files = [], {}
            for path, sound, data, result, stem in zip(args.image, args.sound, images, results,
                                                       output_stems(args.image)):
                overlay_path = os.path.join(args.output_dir, f"{stem}_overlay.png")
                box_path = os.path.join(args.output_dir, f"{stem}_box.json")
                entry = {"image": path, "sound": sound,
                         "box": [round(v, 6) for v in result["box"]],
                         "score": round(result["score"], 6), "overlay": overlay_path}
                try:
                    picture = load_rgb(data)
                except Exception as error:  # Pillow raises many types for unreadable files
                    raise ValueError(f"the server accepted {path!r} but Pillow cannot read it "
                                     f"to draw the overlay ({type(error).__name__})") from None
                files[overlay_path] = overlay_png(picture, result["heatmap"], result["box"])
                files[box_path] = json.dumps(entry, indent=1).encode()
                summary.append(entry)
            write_files(files)
            print(json.dumps(summary, indent=1))
    except (ServingError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _read(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `limit` of them.

    Opened without blocking and checked with fstat (no race with a stat before the open): a
    FIFO named x.wav would block the open until a writer came, /dev/zero would be read for
    ever.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise ValueError(f"cannot read {path!r} ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"cannot read {path!r}: not a regular file (a device, FIFO or "
                         "directory)")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as error:
            raise ValueError(f"cannot read {path!r} ({error.strerror})") from None
    if len(data) > limit:
        raise ValueError(f"cannot read {path!r}: larger than the limit of {limit} bytes")
    return data


def run() -> None:
    """Console entry point: soundloc-client."""
    sys.exit(main())


if __name__ == "__main__":
    run()
