"""A development stand-in for TensorFlow Serving's REST API, on 127.0.0.1.

  soundloc-dev-server --model_base_path=exports/soundloc [--model_name=soundloc]
                      [--rest_api_port=8501] [--all_versions]

Serves the versions of one exported model (`<model_base_path>/<version>/`)
with the same URLs and JSON rules as TF Serving, so the client and any
curl command work against either:

  GET  /v1/models/<name>[/versions/<v>]            model status
  GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs
  POST /v1/models/<name>[/versions/<v>]:predict    row ("instances") or
       columnar ("inputs") body, {"b64": ...} for bytes; answers
       {"predictions": [...]} or {"outputs": {...}}

Like TF Serving's default version policy it loads only the latest version
(--all_versions loads them all), and errors are {"error": "<message>"} with
TF Serving's HTTP codes: 400 for bad requests (malformed JSON, missing
inputs, unknown signature, undecodable bytes: the in-graph checks'
message), 404 for an unknown model or version, 413 for a body over
--max_body_bytes; an unexpected failure is a 500 for that request only.
Unlike TF Serving, error messages are cut to the line that explains them,
versions are loaded once at start (no polling), there is no request
batching, and only :predict is implemented.

This is for development and tests on a machine without Docker.  Production
uses TF Serving (serving/README.md).  It needs only the standard library,
numpy and TensorFlow (to load the SavedModel): never soundloc_tf.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import http.server
import json
import os
import re
import sys
import threading
import time
import traceback
from typing import Any, Sequence

import numpy as np

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_SIGNATURE = "serving_default"
# Bodies up to this many times the limit are read and dropped before the 413.
_DRAIN_FACTOR = 4
_PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)")
_MODEL_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?(?:/(metadata))?")


class RequestError(Exception):
    """A failed request: HTTP status and the message for {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


# ---------------------------------------------------------------------------
# The model.


class LoadedVersion:
    """One version: the loaded SavedModel and its signature defs (as TF Serving reads them)."""

    def __init__(self, version: int, path: str):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.version = version
        self.path = path
        proto = saved_model_pb2.SavedModel()
        try:
            with open(os.path.join(path, "saved_model.pb"), "rb") as f:
                proto.ParseFromString(f.read())
        except Exception as error:  # protobuf's DecodeError, or an unreadable file
            raise ValueError(f"cannot read saved_model.pb ({type(error).__name__}). Received: "
                             f"{path!r}") from None
        graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
        if not graphs:
            raise ValueError(f"the SavedModel has no 'serve' graph. Received: {path!r}")
        self.signature_defs = graphs[0].signature_def
        try:
            self.module = tf.saved_model.load(path)
        except (tf.errors.OpError, OSError, ValueError) as error:
            raise ValueError(f"cannot load the SavedModel ({type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0]}). Received: {path!r}") from None
        self.functions = dict(self.module.signatures)

    def inputs(self, signature: str):
        if signature not in self.signature_defs:
            raise _bad(f'Serving signature name: "{signature}" not found in signature def')
        inputs = self.signature_defs[signature].inputs
        if not inputs or signature not in self.functions:
            raise _bad(f"Failed to get input map for signature: {signature}")
        return inputs


class ModelStore:
    """The versions of one model found under `model_base_path` (integer directory names)."""

    def __init__(self, model_base_path: str, model_name: str | None = None,
                 all_versions: bool = False):
        if not os.path.isdir(model_base_path):
            raise ValueError(f"model_base_path is not a directory. Received: {model_base_path!r}")
        self.model_name = model_name or os.path.basename(os.path.normpath(model_base_path))
        found = sorted(int(d) for d in os.listdir(model_base_path)
                       if d.isdigit() and os.path.isfile(
                           os.path.join(model_base_path, d, "saved_model.pb")))
        if not found:
            raise ValueError("no version directories (<model_base_path>/<integer>/saved_model.pb) "
                             f"to serve. Received: {model_base_path!r}")
        chosen = found if all_versions else found[-1:]
        self.versions = {v: LoadedVersion(v, os.path.join(model_base_path, str(v)))
                         for v in chosen}

    def get(self, name: str, version: int | None) -> LoadedVersion:
        if name != self.model_name or (version is not None and version not in self.versions):
            spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise RequestError(404, f"Servable not found for request: {spec}")
        return self.versions[max(self.versions) if version is None else version]

    def status(self, name: str, version: int | None) -> dict:
        if name != self.model_name:
            raise RequestError(404, f"Could not find any versions of model {name}")
        if version is not None and version not in self.versions:
            raise RequestError(404, f"Could not find version {version} of model {name}")
        shown = [version] if version is not None else sorted(self.versions, reverse=True)
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for v in shown]}

    def metadata(self, name: str, version: int | None) -> dict:
        from google.protobuf import json_format

        loaded = self.get(name, version)
        defs = {key: json_format.MessageToDict(value, preserving_proto_field_name=True,
                                               always_print_fields_with_no_presence=True)
                for key, value in loaded.signature_defs.items()}
        return {"model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
                "metadata": {"signature_def": {"signature_def": defs}}}

    def predict(self, name: str, version: int | None, body: bytes) -> dict:
        loaded = self.get(name, version)
        request = _parse_json(body)
        signature = request.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature, str):
            raise _bad("'signature_name' key must be a string value.")
        signature = signature or DEFAULT_SIGNATURE
        infos = loaded.inputs(signature)
        tensors, row_format = _request_tensors(request, infos)
        outputs = _run(loaded.functions[signature], tensors)
        return _response(outputs, row_format)


def _parse_json(body: bytes) -> dict:
    if not body.strip():
        raise _bad("JSON Parse error: The document is empty")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise _bad(f"JSON Parse error: {error}") from None
    if not isinstance(value, dict):
        raise _bad("JSON Value: the request body is not a JSON object")
    return value


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _request_tensors(request: dict, infos) -> tuple[dict[str, np.ndarray], bool]:
    """TF Serving's row/columnar rules -> {input name: array}, and whether it was row format."""
    names = sorted(infos)
    has_instances, has_inputs = "instances" in request, "inputs" in request
    if has_instances and has_inputs:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys "
                   "to exist")
    if not has_instances and not has_inputs:
        raise _bad("Missing 'inputs' or 'instances' key")
    if has_instances:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise _bad("Excepting 'instances' to be an list/array")
        if not instances:
            raise _bad("No values in 'instances' array")
        objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
        if not objects and len(names) > 1:
            raise _bad("instances is a plain list, but expecting list of objects as multiple "
                       "input tensors required as per tensorinfo_map")
        columns: dict[str, list] = {n: [] for n in names}
        for i, element in enumerate(instances):
            if objects:
                if not isinstance(element, dict) or _is_b64(element):
                    raise _bad(f"Expecting object but got list at item {i} of input list")
                if sorted(element) != names:
                    raise _bad(f"Failed to process element: {i} of 'instances' list. JSON object "
                               f"keys {sorted(element)} must be equal to: {','.join(names)}")
                for name in names:
                    columns[name].append((i, element[name]))
            else:
                if isinstance(element, dict) and not _is_b64(element):
                    raise _bad(f"Expecting value/list but got object at item {i} of input list")
                columns[names[0]].append((i, element))
        tensors = {}
        for name, items in columns.items():
            arrays = []
            for i, value in items:
                try:
                    arrays.append(_to_array(value, infos[name].dtype))
                except RequestError as error:
                    raise _bad(f"Failed to process element: {i} key: {name} of 'instances' list. "
                               f"Error: {error.message}") from None
                if arrays[-1].shape != arrays[0].shape:
                    raise _bad(f"Failed to process element: {i} key: {name} of 'instances' list. "
                               f"Error: Expecting shape {list(arrays[0].shape)} but got: "
                               f"{list(arrays[-1].shape)}")
            tensors[name] = np.stack(arrays)
        return _check_shapes(tensors, infos), True
    inputs = request["inputs"]
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise _bad("inputs is a plain value/list, but expecting an object as multiple input "
                       "tensors required as per tensorinfo_map")
        inputs = {names[0]: inputs}
    tensors = {}
    for name in names:
        if name not in inputs:
            raise _bad(f"Missing named input: {name} in 'inputs' object.")
        try:
            tensors[name] = _to_array(inputs[name], infos[name].dtype)
        except RequestError as error:
            raise _bad(f"input {name}: {error.message}") from None
    return _check_shapes(tensors, infos), False


def _to_array(value: Any, dtype_enum: int) -> np.ndarray:
    """A JSON value (nested lists, {"b64"} objects) -> numpy array of the signature's dtype."""
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(dtype_enum)
    shape: list[int] = []
    leaves: list[Any] = []

    def walk(node: Any, depth: int) -> None:
        if isinstance(node, list):
            if depth == len(shape):
                shape.append(len(node))
            elif depth > len(shape) or shape[depth] != len(node):
                raise _bad("the nested lists are ragged: every list at one depth needs the same "
                           "length")
            for child in node:
                walk(child, depth + 1)
        else:
            if depth != len(shape):
                raise _bad("the nested lists are ragged: values and lists mix at one depth")
            leaves.append(node)

    walk(value, 0)
    if dtype == tf.string:
        out = np.empty(len(leaves), dtype=object)
        for i, leaf in enumerate(leaves):
            if _is_b64(leaf):
                if not isinstance(leaf["b64"], str):
                    raise _bad("the 'b64' value must be a string")
                try:
                    out[i] = base64.b64decode(leaf["b64"], validate=True)
                except (binascii.Error, ValueError):
                    raise _bad("Unable to base64 decode the 'b64' value") from None
            elif isinstance(leaf, str):
                out[i] = leaf.encode("utf-8")
            else:
                raise _bad(f"JSON Value: {json.dumps(leaf)[:80]} not of expected type: string")
        return out.reshape(shape)
    if dtype.is_floating or dtype.is_integer or dtype == tf.bool:
        kind = "bool" if dtype == tf.bool else "float" if dtype.is_floating else "integer"
        for leaf in leaves:
            ok = isinstance(leaf, bool) if dtype == tf.bool else (
                isinstance(leaf, (int, float)) and not isinstance(leaf, bool)
                and (dtype.is_floating or float(leaf).is_integer()))
            if not ok:
                raise _bad(f"JSON Value: {json.dumps(leaf)[:80]} not of expected type: {kind}")
        return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
    raise _bad(f"inputs of dtype {dtype.name} are not supported by the dev server")


def _check_shapes(tensors: dict[str, np.ndarray], infos) -> dict[str, np.ndarray]:
    for name, array in tensors.items():
        proto = infos[name].tensor_shape
        if proto.unknown_rank:
            continue
        expected = [d.size for d in proto.dim]
        if array.ndim != len(expected) or any(e >= 0 and e != a for e, a in
                                              zip(expected, array.shape)):
            raise _bad(f"input {name}: expected shape {expected} (-1: any), got "
                       f"{list(array.shape)}")
    return tensors


_HTTP_STATUS = {  # TF error class name -> HTTP status, as TF Serving maps canonical codes
    "InvalidArgumentError": 400, "FailedPreconditionError": 400, "OutOfRangeError": 400,
    "NotFoundError": 404, "AlreadyExistsError": 409, "AbortedError": 409,
    "PermissionDeniedError": 403, "UnauthenticatedError": 401, "ResourceExhaustedError": 429,
    "UnimplementedError": 501, "UnavailableError": 503, "DeadlineExceededError": 504,
    "CancelledError": 499,
}


def _run(function, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    from serving.client import error_line

    try:
        outputs = function(**{k: tf.constant(v) for k, v in tensors.items()})
    except tf.errors.OpError as error:
        raise RequestError(_HTTP_STATUS.get(type(error).__name__, 500),
                           error_line(error.message)) from None
    return {k: v.numpy() for k, v in outputs.items()}


def _json_value(array: np.ndarray, name: str) -> Any:
    if array.dtype == object:
        if name.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")},
                                otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def _response(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return {"outputs": _json_value(outputs[names[0]], names[0])}
        return {"outputs": {n: _json_value(outputs[n], n) for n in names}}
    batch = {outputs[n].shape[0] if outputs[n].ndim else -1 for n in names}
    if len(batch) != 1 or -1 in batch:
        raise RequestError(400, "Tensors in the output do not have the same 0-th dimension; use "
                           "the columnar ('inputs') format")
    columns = {n: _json_value(outputs[n], n) for n in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch.pop())]}


# ---------------------------------------------------------------------------
# HTTP.


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "soundloc-dev-server"
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a connection may stall before it is dropped
    server: "_HTTPServer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        try:
            if method != "POST" and self.headers.get("Content-Length", "0") != "0":
                self.close_connection = True  # an unread body must not become the next request
            body = self._read_body() if method == "POST" else b""
            status, answer = 200, self._dispatch(method, path, body)
        except RequestError as error:
            status, answer = error.status, {"error": error.message}
        except Exception as error:  # never let one request take the server down
            traceback.print_exc(file=sys.stderr)
            status, answer = 500, {"error": f"Internal: {type(error).__name__}: {error}"}
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client went away
            self.close_connection = True
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {method} {path} {status} "
                             f"{(time.perf_counter() - started) * 1000:.1f} ms\n")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            raise RequestError(411, "send the body with a Content-Length header (chunked "
                               "transfer is not supported by the dev server)")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise _bad(f"bad Content-Length header: {length!r}") from None
        if size < 0:
            self.close_connection = True
            raise _bad(f"bad Content-Length header: {length!r}")
        if size > self.server.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as a request
            if size <= _DRAIN_FACTOR * self.server.max_body_bytes:
                # Read and drop it, so a client that sends before it reads gets the 413.
                left = size
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise RequestError(413, f"the request body of {size} bytes exceeds the limit of "
                               f"{self.server.max_body_bytes} bytes")
        body = self.rfile.read(size)
        if len(body) != size:
            self.close_connection = True
            raise _bad(f"the request body ended after {len(body)} of {size} bytes")
        return body

    def _dispatch(self, method: str, path: str, body: bytes) -> dict:
        store = self.server.store
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match:
                name, version, verb = match.groups()
                if verb.lower() != "predict":
                    raise RequestError(501, f"only :predict is implemented by the dev server, "
                                       f"not :{verb}")
                with self.server.predictions:
                    return store.predict(_unquote(name), _version(version), body)
        elif method == "GET":
            match = _MODEL_PATH.fullmatch(path)
            if match:
                name, version, metadata = match.groups()
                if not name:
                    raise _bad("Missing model name in request.")
                if metadata:
                    return store.metadata(_unquote(name), _version(version))
                return store.status(_unquote(name), _version(version))
        if path.lower().startswith("/v1/"):
            raise _bad(f"Malformed request: {method} {path}")
        raise RequestError(404, f"Not found: {method} {path} (the API is under /v1/models/)")

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _handle logs one line per request, with its duration

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        if not self.server.quiet:
            super().log_message(format, *args)


def _unquote(name: str) -> str:
    from urllib.parse import unquote

    return unquote(name)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    value = int(text)
    if value > 2 ** 63 - 1:
        raise _bad(f"Failed to convert version: {text} to numeric.")
    return value


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, store: ModelStore, max_body_bytes: int, quiet: bool,
                 max_concurrent_predictions: int):
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.quiet = quiet
        self.predictions = threading.BoundedSemaphore(max_concurrent_predictions)
        super().__init__(address, _Handler)


class DevServer:
    """TF Serving's REST API for one exported model, in this process.

        with DevServer("exports/soundloc", port=0) as server:   # port 0: any free port
            urllib.request.urlopen(server.url + "/v1/models/soundloc")
    """

    def __init__(self, model_base_path: str, model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 8501, all_versions: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, quiet: bool = False,
                 max_concurrent_predictions: int = 4):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must lie in [0, 65535]. Received: port={port}")
        if max_body_bytes < 1 or max_concurrent_predictions < 1:
            raise ValueError("max_body_bytes and max_concurrent_predictions must be >= 1. "
                             f"Received: {max_body_bytes}, {max_concurrent_predictions}")
        self.store = ModelStore(model_base_path, model_name, all_versions)
        self.httpd = _HTTPServer((host, port), self.store, max_body_bytes, quiet,
                                 max_concurrent_predictions)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "DevServer":
        """Serves in a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="soundloc-dev-server")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "DevServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="soundloc-dev-server",
        description="Development stand-in for TF Serving's REST API (production: TF Serving).")
    parser.add_argument("--model_base_path", required=True,
                        help="directory holding the integer version directories")
    parser.add_argument("--model_name", default=None, help="default: the directory's name")
    parser.add_argument("--host", default="127.0.0.1", help="default %(default)s (local only)")
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--all_versions", action="store_true",
                        help="load every version, not only the latest")
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = parser.parse_args(argv)
    try:
        server = DevServer(args.model_base_path, args.model_name, args.host, args.rest_api_port,
                           args.all_versions, args.max_body_bytes, args.quiet)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    versions = ", ".join(str(v) for v in sorted(server.store.versions))
    print(f"Serving {server.store.model_name} (versions {versions}) at {server.url}/v1/models/"
          f"{server.store.model_name}  (development server; production: TF Serving)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


def run() -> None:
    """Console entry point: soundloc-dev-server."""
    sys.exit(main())


if __name__ == "__main__":
    run()
