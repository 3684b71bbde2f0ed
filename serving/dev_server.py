"""A development stand-in for TensorFlow Serving: its REST and gRPC APIs, on 127.0.0.1.

  soundloc-dev-server --model_base_path=exports/soundloc [--model_name=soundloc]
                      [--rest_api_port=8501] [--port=8500] [--all_versions]

Serves the versions of one exported model (`<model_base_path>/<version>/`)
with TF Serving's URLs, JSON rules and gRPC service, so the client, curl and
any TF Serving client work against either:

  GET  /v1/models/<name>[/versions/<v>]            model status
  GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs
  POST /v1/models/<name>[/versions/<v>]:predict    row ("instances") or
       columnar ("inputs") body, {"b64": ...} for bytes; answers
       {"predictions": [...]} or {"outputs": {...}}
  gRPC tensorflow.serving.PredictionService/Predict (--port; needs
       tensorflow-serving-api, see serving/README.md)

Like TF Serving it loads only the latest version (--all_versions loads them
all) and replays each version's assets.extra/tf_serving_warmup_requests
before serving it.  Errors are {"error": "<message>"} (gRPC: the status
code TF Serving uses) with TF Serving's HTTP codes: 400 for bad requests
(malformed JSON, missing or unknown inputs, unknown signature, undecodable
bytes: the in-graph checks' message), 404 for an unknown model or version,
413 for a request over a limit; an unexpected failure is a 500 for that
request only.  Error messages are cut to the line that explains them.

Limits, each a 413 naming it (TF Serving has none of these; they keep one
request from exhausting a development machine):
  --max_body_bytes      request body (64 MiB; gRPC: message size)
  --max_instances       instances in one request (64)
  --max_response_bytes  the answer, estimated at 24 bytes per number before
                        the model runs (64 MiB: 55 instances of a 224 x 224
                        heat map)
  --memory_budget_bytes what the requests being decoded at once may claim
                        (1 GiB), estimated before decoding: JSON values
                        counted in the body, the bytes a gRPC TensorProto's
                        shape would take; more waits, over all of it: 413

The network layers are maintained servers, not hand-written ones: waitress
(REST; pure Python, no dependencies) owns the listen backlog (1024),
keep-alive, the connection limit (--max_connections, more wait in the
backlog) and a bounded pool of worker threads (--threads); grpcio (gRPC,
installed with TensorFlow) owns HTTP/2.  Requests are not batched and
versions are not polled for.  For development and tests on a machine
without Docker; production uses TF Serving (serving/README.md).  It needs
only the standard library, numpy, TensorFlow (to load the SavedModel),
waitress and grpcio: never soundloc_tf.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import gc
import importlib.util
import json
import os
import re
import sys
import threading
import time
import traceback
from typing import Any, Iterator, Sequence

import numpy as np

from soundloc_tf.tf_logs import quiet_tensorflow

from .threaded import ThreadedServer, create_server

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 64
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Memory the requests being decoded and run at once may claim, estimated before anything is
# materialised (REST: the JSON parse; gRPC: the tensors a TensorProto claims).  1 GiB: one
# 64 MiB body of floats (about 0.75 GB estimated) at a time, small requests beside it.
DEFAULT_MEMORY_BUDGET_BYTES = 1024 * 1024 * 1024
# A request waits this long for its share of the budget, then gets a 503 (clients retry).
BUDGET_WAIT_SECONDS = 120.0
# The cost of parsing a JSON body, measured with tracemalloc over json.loads, the walk and the
# numpy arrays (tests/test_hostile_round2.py): the body itself twice (the bytes and the str
# values copied out of it), per value (a number, string or list: its object, the pointer to
# it and its numpy element; measured 29-69 bytes, objects' members up to 129) and per JSON
# object (a dict).  Floats, the legitimate case, are over-estimated about 2.5x.
JSON_BYTES_PER_BODY_BYTE = 2
JSON_BYTES_PER_VALUE = 104
JSON_BYTES_PER_OBJECT = 512
# A string tensor element once materialised: its bytes object's header and the pointer to it.
STRING_ELEMENT_BYTES = 41
# Names and other client-chosen text echoed in an error are cut to this many characters, so
# a 100 kB model name cannot push the answer (gRPC: its status metadata) over a limit.
MAX_ECHOED_CHARS = 200
# Versions are int64 in TF Serving (gRPC's Int64Value): at most 19 digits.
MAX_VERSION_DIGITS = 19
DEFAULT_SIGNATURE = "serving_default"
# The answer's JSON is estimated at this many bytes per number ("-0.123456789012345678, ").
BYTES_PER_NUMBER = 24
# Nesting of JSON lists deeper than this is refused before it is walked (numpy's limit: 64).
MAX_JSON_DEPTH = 32
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Answers from this size on hand their freed memory back to the system once sent.
_TRIM_AFTER_BYTES = 1 << 20
# Parses estimated at this size or more do too, once done (glibc keeps the heap otherwise).
_TRIM_AFTER_PARSE_BYTES = 64 << 20
# Parses estimated at this size or more pause the cyclic garbage collector (_GcPause): about
# a 1.4 MB body of floats.
_PAUSE_GC_FROM_BYTES = 16 << 20
# Bodies up to this many times the limit are read and answered with a JSON 413; larger
# ones get waitress's own 413 as soon as their header arrives.
_DRAIN_FACTOR = 4
_PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)")
_MODEL_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?(?:/(metadata))?")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict",
            411: "Length Required", 413: "Content Too Large", 429: "Too Many Requests",
            499: "Client Closed Request", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable", 504: "Gateway Timeout", 401: "Unauthorized",
            403: "Forbidden"}


class RequestError(Exception):
    """A failed request: HTTP status and the message for {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def _echo(text: str) -> str:
    """Client-chosen text as an error message quotes it: cut to MAX_ECHOED_CHARS, with lone
    surrogates escaped (they cannot be encoded as UTF-8 for the answer)."""
    shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(shown) > MAX_ECHOED_CHARS:
        shown = f"{shown[:MAX_ECHOED_CHARS]}... ({len(text)} characters)"
    return shown


def _utf8(text: str, what: str) -> str:
    """`text` when it is valid Unicode (JSON can carry lone surrogates, \\ud800, which no
    UTF-8 string holds: TF's string tensors and protobuf's keys need UTF-8); a 400 otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start].encode("utf-8", "backslashreplace").decode("ascii")
        raise _bad(f"{what} is not valid Unicode: {error.reason} ({bad} at character "
                   f"{error.start})") from None
    return text


class MemoryBudget:
    """Bytes that requests claim before they materialise anything (a JSON parse, tensors from
    a TensorProto), so the server's memory is bounded by what requests *claim* rather than by
    how many arrive at once.

    A claim larger than the whole budget is a 413 at once; others wait (at most
    BUDGET_WAIT_SECONDS, then a 503) until enough is free.  One claim per request, never
    nested, so waiting cannot deadlock.
    """

    def __init__(self, capacity: int, wait_seconds: float = BUDGET_WAIT_SECONDS):
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.free = capacity
        self._changed = threading.Condition()

    def claim(self, nbytes: int, what: str) -> "_Claim":
        """A context manager holding `nbytes` of the budget; `what` names the cost in errors."""
        if nbytes > self.capacity:
            raise RequestError(413, f"{what} would take about {nbytes} bytes of memory, over "
                               f"the server's budget of {self.capacity} bytes "
                               "(--memory_budget_bytes); send fewer instances")
        return _Claim(self, nbytes)


class _Claim:
    def __init__(self, budget: MemoryBudget, nbytes: int):
        self.budget, self.nbytes = budget, nbytes

    def __enter__(self) -> "_Claim":
        budget = self.budget
        with budget._changed:
            if not budget._changed.wait_for(lambda: budget.free >= self.nbytes,
                                            timeout=budget.wait_seconds):
                raise RequestError(503, f"the server is busy: {self.nbytes} bytes of memory "
                                   f"were not free within {budget.wait_seconds:g} s; retry")
            budget.free -= self.nbytes
        return self

    def __exit__(self, *exc_info: Any) -> None:
        budget = self.budget
        with budget._changed:
            budget.free += self.nbytes
            budget._changed.notify_all()


def json_cost(body: bytes) -> int:
    """An upper bound of the memory parsing `body` takes, counted without parsing it (bytes.count
    runs at memory speed): every JSON value but the first follows a ',', '[' or ':'."""
    values = 1 + body.count(b",") + body.count(b"[") + body.count(b":")
    return (JSON_BYTES_PER_BODY_BYTE * len(body) + JSON_BYTES_PER_VALUE * values
            + JSON_BYTES_PER_OBJECT * body.count(b"{"))


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
        # IndexError: truncated variables ("Read less bytes than requested"); OSError: missing.
        except (tf.errors.OpError, OSError, ValueError, IndexError, KeyError) as error:
            reason = str(getattr(error, "message", None) or error).strip().splitlines()
            raise ValueError(f"cannot load the SavedModel ({type(error).__name__}: "
                             f"{reason[0] if reason else 'no message'}); its variables/ may be "
                             f"missing or truncated: export it again. Received: {path!r}") from None
        self.functions = dict(self.module.signatures)
        self.warmup_requests = self._replay_warmup()

    def _replay_warmup(self) -> int:
        """Runs every warm-up record, as TF Serving does before it serves a version."""
        path = os.path.join(self.path, WARMUP_PATH)
        if not os.path.isfile(path):
            return 0
        with open(path, "rb") as f:
            records = read_tfrecords(f.read())
        for i, record in enumerate(records):
            try:
                signature, tensors = parse_prediction_log(record)
            # protobuf's DecodeError, a bad varint (ValueError), a claimed shape make_ndarray
            # cannot fill, bytes that are not UTF-8: all one damaged record.
            except Exception as error:
                raise ValueError(f"warm-up record {i} is not a PredictionLog "
                                 f"({type(error).__name__}: {_first_line(error)}). Received: "
                                 f"{path!r}") from None
            try:
                self.functions[signature](**{k: _constant(v) for k, v in tensors.items()})
            except Exception as error:  # TF Serving refuses to load such a version too
                raise ValueError(f"warm-up request {i} ({signature}) failed: "
                                 f"{_first_line(error)}. Received: {path!r}") from None
        return len(records)

    def inputs(self, signature: str):
        # protobuf's map keys must encode as UTF-8: a lone surrogate is a 400, not a 500.
        _utf8(signature, "signature_name")
        if signature not in self.signature_defs or signature not in self.functions:
            raise _bad(f'Serving signature name: "{_echo(signature)}" not found in signature def')
        inputs = self.signature_defs[signature].inputs
        if not inputs:
            raise _bad(f"Failed to get input map for signature: {signature}")
        return inputs


class ModelStore:
    """The versions of one model found under `model_base_path` (integer directory names),
    and the limits every request to them is held to."""

    def __init__(self, model_base_path: str, model_name: str | None = None,
                 all_versions: bool = False, max_instances: int = DEFAULT_MAX_INSTANCES,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 max_concurrent_predictions: int = 4,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES):
        self.max_instances = max_instances
        self.max_response_bytes = max_response_bytes
        # What requests decode at once (REST and gRPC together), claimed before decoding.
        self.budget = MemoryBudget(memory_budget_bytes)
        # Model runs at once, over REST and gRPC together; more wait their turn.
        self.running = threading.BoundedSemaphore(max_concurrent_predictions)
        if not os.path.isdir(model_base_path):
            raise ValueError(f"model_base_path is not a directory. Received: {model_base_path!r}")
        self.model_name = model_name or os.path.basename(os.path.normpath(model_base_path))
        found = sorted(int(d) for d in os.listdir(model_base_path)
                       if d.isascii() and d.isdigit() and os.path.isfile(
                           os.path.join(model_base_path, d, "saved_model.pb")))
        if not found:
            raise ValueError("no version directories (<model_base_path>/<integer>/saved_model.pb) "
                             f"to serve. Received: {model_base_path!r}")
        chosen = found if all_versions else found[-1:]
        self.versions = {v: LoadedVersion(v, os.path.join(model_base_path, str(v)))
                         for v in chosen}

    def get(self, name: str, version: int | None) -> LoadedVersion:
        if name != self.model_name or (version is not None and version not in self.versions):
            spec = f"Latest({_echo(name)})" if version is None else \
                f"Specific({_echo(name)}, {version})"
            raise RequestError(404, f"Servable not found for request: {spec}")
        return self.versions[max(self.versions) if version is None else version]

    def status(self, name: str, version: int | None) -> dict:
        if name != self.model_name:
            raise RequestError(404, f"Could not find any versions of model {_echo(name)}")
        if version is not None and version not in self.versions:
            raise RequestError(404, f"Could not find version {version} of model {_echo(name)}")
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

    def predict_json(self, name: str, version: int | None, body: bytes) -> Iterator[bytes]:
        """A REST :predict body -> the answer's JSON, in pieces of one instance each."""
        loaded = self.get(name, version)
        # The parse costs up to 36x the body (measured): claimed from the budget before it
        # starts, and held until the answer is built.
        cost = json_cost(body)
        try:
            with self.budget.claim(cost, f"parsing the {len(body)}-byte JSON body"), \
                    _gc_paused(cost >= _PAUSE_GC_FROM_BYTES):
                return self._predict_parsed(loaded, body)
        finally:
            if cost >= _TRIM_AFTER_PARSE_BYTES and _LIBC is not None:
                _LIBC.malloc_trim(0)  # the parse's objects are freed: hand their heap back

    def _predict_parsed(self, loaded: LoadedVersion, body: bytes) -> list[bytes]:
        """predict_json's work, run inside its memory claim."""
        request = _parse_json(body)
        signature = request.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature, str):
            raise _bad("'signature_name' key must be a string value.")
        signature = signature or DEFAULT_SIGNATURE
        tensors, row_format = _request_tensors(request, loaded.inputs(signature))
        del request  # the parsed JSON: its objects are the bulk of the claim
        with self.running:  # the answer is built inside the slot: its memory is bounded
            return _response_chunks(self.predict(loaded, signature, tensors), row_format)

    def predict(self, loaded: LoadedVersion, signature: str,
                tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked input arrays -> output arrays, within the instance and answer limits.

        Callers hold `self.running` while they run and encode the answer.
        """
        _check_shapes(tensors, loaded.inputs(signature))
        count = len(next(iter(tensors.values())))
        if count > self.max_instances:
            raise RequestError(413, f"the request holds {count} instances; the limit is "
                               f"{self.max_instances} per request (--max_instances)")
        numbers = count * _numbers_per_instance(loaded.signature_defs[signature].outputs)
        if numbers * BYTES_PER_NUMBER > self.max_response_bytes:
            most = self.max_response_bytes // (BYTES_PER_NUMBER * (numbers // max(count, 1)))
            raise RequestError(413, f"the answer would hold {numbers} numbers (about "
                               f"{numbers * BYTES_PER_NUMBER} bytes), over the limit of "
                               f"{self.max_response_bytes} bytes (--max_response_bytes); "
                               f"send at most {most} instances")
        return _run(loaded.functions[signature], tensors)


def _yield_float(text: str) -> float:
    """json's parse_float as a Python function: the C scanner calls it for every number, and
    each call is a point where the interpreter hands the GIL to the other threads.  With the
    built-in `float` the scanner never does: one 60 MB body held the GIL for 1.5 s, and every
    other request waited (issue 31's combined load)."""
    return float(text)


def _yield_int(text: str) -> int:
    """json's parse_int, for the same reason as _yield_float (a body of zeros is ints)."""
    return int(text)


class _GcPause:
    """Pauses the cyclic garbage collector while large JSON bodies are parsed and walked.

    The parse creates millions of lists; each full collection then traverses all of them with
    the GIL held (measured: 0.2-0.5 s stalls of every other thread per 60 MB body, and the
    parse itself 2x slower).  The parsed tree holds no cycles, and whatever other threads
    leave meanwhile is collected when the last large parse ends.  Counted, so overlapping
    parses keep it paused until the last one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._reenable = True

    @contextlib.contextmanager
    def __call__(self, pause: bool) -> Iterator[None]:
        if not pause:
            yield
            return
        with self._lock:
            if self._active == 0:
                self._reenable = gc.isenabled()
                gc.disable()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._reenable:
                    gc.enable()


_gc_paused = _GcPause()


def _parse_json(body: bytes) -> dict:
    if not body.strip():
        raise _bad("JSON Parse error: The document is empty")
    try:
        value = json.loads(body, parse_float=_yield_float, parse_int=_yield_int)
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
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise _bad(f"Unknown named input: {unknown[0]} in 'inputs' object; the signature takes "
                   f"{', '.join(names)}")
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
            if depth >= MAX_JSON_DEPTH:
                raise _bad(f"lists nested more than {MAX_JSON_DEPTH} deep; tensors have at most "
                           f"{MAX_JSON_DEPTH} dimensions here")
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
                out[i] = _utf8(leaf, f"string value {i}").encode("utf-8")
            else:
                raise _bad(f"JSON Value: {json.dumps(leaf)[:80]} not of expected type: string")
        return out.reshape(shape)
    if dtype.is_floating or dtype.is_integer or dtype == tf.bool:
        kind = "bool" if dtype == tf.bool else "float" if dtype.is_floating else "integer"
        for leaf in leaves:
            ok = isinstance(leaf, bool) if dtype == tf.bool else (
                isinstance(leaf, (int, float)) and not isinstance(leaf, bool)
                and (dtype.is_floating or isinstance(leaf, int) or leaf.is_integer()))
            if not ok:
                raise _bad(f"JSON Value: {json.dumps(leaf)[:80]} not of expected type: {kind}")
        try:
            return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
        except OverflowError:  # e.g. a 400-digit integer
            big = next(v for v in leaves if isinstance(v, int) and abs(v) > 2 ** 63)
            raise _bad(f"JSON Value: {str(big)[:20]}... ({len(str(abs(big)))} digits) is out of "
                       f"range for {dtype.name}") from None
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

    from .client import error_line

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


def _response_chunks(outputs: dict[str, np.ndarray], row_format: bool) -> list[bytes]:
    """The answer's JSON in pieces of one instance each: the whole answer is never one
    Python list of floats (about 60 bytes a number)."""
    names = sorted(outputs)

    def column(name: str) -> Iterator[bytes]:
        array = outputs[name]
        if array.ndim == 0:
            yield json.dumps(_json_value(array, name)).encode()
            return
        yield b"["
        for i in range(len(array)):
            yield (b", " if i else b"") + json.dumps(_json_value(array[i], name)).encode()
        yield b"]"

    if not row_format:
        if len(names) == 1:
            return [b'{"outputs": ', *column(names[0]), b"}"]
        pieces = [b'{"outputs": {']
        for i, name in enumerate(names):
            pieces += [(b", " if i else b"") + json.dumps(name).encode() + b": ", *column(name)]
        return pieces + [b"}}"]
    batch = {outputs[n].shape[0] if outputs[n].ndim else -1 for n in names}
    if len(batch) != 1 or -1 in batch:
        raise RequestError(400, "Tensors in the output do not have the same 0-th dimension; use "
                           "the columnar ('inputs') format")
    pieces = [b'{"predictions": [']
    for i in range(batch.pop()):
        row = _json_value(outputs[names[0]][i], names[0]) if len(names) == 1 else \
            {n: _json_value(outputs[n][i], n) for n in names}
        pieces.append((b", " if i else b"") + json.dumps(row).encode())
    return pieces + [b"]}"]


def _numbers_per_instance(outputs) -> int:
    """Numbers one instance adds to the answer, from the signature's output shapes."""
    total = 0
    for info in outputs.values():
        dims = [d.size for d in info.tensor_shape.dim][1:]
        total += int(np.prod([max(d, 1) for d in dims])) if dims else 1
    return total


def _constant(array: np.ndarray):
    import tensorflow as tf

    return tf.constant(array)


def _first_line(error: BaseException) -> str:
    from .client import error_line

    return error_line(getattr(error, "message", None) or str(error) or type(error).__name__)


# ---------------------------------------------------------------------------
# Warm-up records: TFRecord framing around PredictionLog protos, read by hand (the
# wheel ships no TF Serving protos): varints and length-delimited fields only.


def read_tfrecords(data: bytes) -> list[bytes]:
    """Payloads of a TFRecord file (length, CRC, payload, CRC; the CRCs are not checked)."""
    records, pos = [], 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"truncated TFRecord header at byte {pos}")
        length = int.from_bytes(data[pos:pos + 8], "little")
        if pos + 16 + length > len(data):
            raise ValueError(f"truncated TFRecord payload at byte {pos}")
        records.append(data[pos + 12:pos + 12 + length])
        pos += 16 + length
    return records


def _fields(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, bytes) of each length-delimited field of a message; others skipped."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("truncated varint in a warm-up record")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        kind = key & 7
        if kind == 0:
            varint()
        elif kind in (1, 5):
            pos += 8 if kind == 1 else 4
        elif kind == 2:
            length = varint()
            yield key >> 3, data[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {kind} in a warm-up record")


def parse_prediction_log(record: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """PredictionLog.predict_log.request -> (signature name, input arrays)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    signature, tensors = DEFAULT_SIGNATURE, {}
    for number, log in _fields(record):
        for part, request in (_fields(log) if number == 6 else ()):
            for key, value in (_fields(request) if part == 1 else ()):
                if key == 1:  # ModelSpec
                    signature = dict(_fields(value)).get(3, b"").decode() or signature
                elif key == 2:  # map<string, TensorProto> entry
                    entry = dict(_fields(value))
                    proto = tensor_pb2.TensorProto.FromString(entry.get(2, b""))
                    tensors[entry.get(1, b"").decode()] = tf.make_ndarray(proto)
    if not tensors:
        raise ValueError("a warm-up record holds no predict request")
    return signature, tensors


# ---------------------------------------------------------------------------
# REST, as a WSGI application served by waitress.


class RestApp:
    """TF Serving's REST API over a ModelStore, as a WSGI application."""

    def __init__(self, store: ModelStore, max_body_bytes: int, quiet: bool):
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.quiet = quiet

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        started = time.perf_counter()
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            # PEP 3333 hands the path over as latin-1 characters of its bytes; URLs carry
            # UTF-8, so a model named 'sóundloc' (served over gRPC) must match here too (N14).
            try:
                path = path.encode("latin-1").decode("utf-8")
            except UnicodeError:
                raise _bad(f"the URL path is not UTF-8: {_echo(path)}") from None
            body = self._read_body(environ) if method == "POST" else b""
            status, pieces = 200, self._dispatch(method, path, body)
        except RequestError as error:
            status, pieces = error.status, [json.dumps({"error": error.message}).encode()]
        except Exception as error:  # never let one request take the server down
            traceback.print_exc(file=sys.stderr)
            status = 500
            pieces = [json.dumps({"error": f"Internal: {type(error).__name__}: {error}"}).encode()]
        size = sum(len(p) for p in pieces)
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "application/json"), ("Content-Length", str(size))])
        if not self.quiet:
            sys.stderr.write(f"{environ.get('REMOTE_ADDR', '-')} {method} {path} {status} "
                             f"{(time.perf_counter() - started) * 1000:.1f} ms\n")
        return _Answer(pieces) if size >= _TRIM_AFTER_BYTES else pieces

    def _read_body(self, environ: dict) -> bytes:
        # waitress has checked the header and read the whole body (up to 4x the limit), so
        # the connection stays usable and the client reads this 413 after its upload.
        size = int(environ.get("CONTENT_LENGTH") or 0)
        if size > self.max_body_bytes:
            raise RequestError(413, f"the request body of {size} bytes exceeds the limit of "
                               f"{self.max_body_bytes} bytes")
        return environ["wsgi.input"].read(size)

    def _dispatch(self, method: str, path: str, body: bytes) -> list[bytes]:
        store = self.store
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match:
                name, version, verb = match.groups()
                if verb.lower() != "predict":
                    raise RequestError(501, f"only :predict is implemented by the dev server, "
                                       f"not :{verb}")
                return store.predict_json(name, _version(version), body)
        elif method == "GET":
            match = _MODEL_PATH.fullmatch(path)
            if match:
                name, version, metadata = match.groups()
                if not name:
                    raise _bad("Missing model name in request.")
                answer = store.metadata(name, _version(version)) if metadata else \
                    store.status(name, _version(version))
                return [json.dumps(answer).encode()]
        if path.lower().startswith("/v1/"):
            raise _bad(f"Malformed request: {method} {path}")
        raise RequestError(404, f"Not found: {method} {path} (the API is under /v1/models/)")


class _Answer(list):
    """A large answer's pieces; once waitress has sent them (and calls close), the freed heap
    goes back to the system: glibc keeps it otherwise, and the probe's server kept 1.5 GB."""

    def close(self) -> None:
        self.clear()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc: nothing to trim
        return None


_LIBC = _load_libc()


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    # Checked by length first: int() refuses over 4300 digits with a ValueError (a 500).
    if len(text) > MAX_VERSION_DIGITS or int(text) > 2 ** 63 - 1:
        raise _bad(f"Failed to convert version: {_echo(text)} to numeric (versions are int64).")
    return int(text)


# ---------------------------------------------------------------------------
# gRPC: tensorflow.serving.PredictionService/Predict, with tensorflow-serving-api's protos.

_GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
               429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED", 409: "ABORTED", 403: "PERMISSION_DENIED",
               401: "UNAUTHENTICATED", 499: "CANCELLED"}
GRPC_INSTALL_HINT = ("gRPC needs tensorflow-serving-api's protos: pip install --no-deps "
                     "tensorflow-serving-api==2.21.0 (--no-deps: it would pull a second "
                     "TensorFlow next to tensorflow-cpu)")


# TensorProto's repeated field for each dtype (as tf.make_ndarray reads them) and how many
# field values make one element (complex numbers: two).
_VALUE_FIELDS = {
    "float32": ("float_val", 1), "float64": ("double_val", 1), "int32": ("int_val", 1),
    "int16": ("int_val", 1), "int8": ("int_val", 1), "uint8": ("int_val", 1),
    "uint16": ("int_val", 1), "int64": ("int64_val", 1), "uint32": ("uint32_val", 1),
    "uint64": ("uint64_val", 1), "bool": ("bool_val", 1), "string": ("string_val", 1),
    "float16": ("half_val", 1), "bfloat16": ("half_val", 1),
    "complex64": ("scomplex_val", 2), "complex128": ("dcomplex_val", 2),
}


def _dtype_name(enum: int) -> str:
    """A DataType enum's name; an unknown one (999, or 0: DT_INVALID) described, not raised."""
    import tensorflow as tf

    try:
        return tf.dtypes.as_dtype(enum).name
    except (TypeError, ValueError):
        return f"an invalid dtype (enum {enum})"


def _claimed_array_bytes(key: str, proto, info, max_instances: int, max_bytes: int) -> int:
    """Checks what a TensorProto claims (dtype, shape, payload size) against the signature and
    the limits, and returns the bytes tf.make_ndarray would allocate, before it does.

    make_ndarray pads a short repeated field to the claimed shape (TF's rule: fewer values
    than elements repeat the last one; none give zeros), so a 101-byte message could claim
    gigabytes: the claim is bounded here (by the instance limit and by --max_body_bytes, the
    most a message may carry), and the payload must fit the shape exactly (tensor_content) or
    hold at most one value per element (repeated fields).
    """
    if proto.dtype != info.dtype:
        raise _bad(f"input {key}: expects {_dtype_name(info.dtype)}, got "
                   f"{_dtype_name(proto.dtype)}")
    dtype = _dtype_name(proto.dtype)
    if dtype not in _VALUE_FIELDS:
        raise _bad(f"input {key}: dtype {dtype} is not supported over gRPC by the dev server")
    if proto.tensor_shape.unknown_rank:
        raise _bad(f"input {key}: the TensorProto's shape has unknown rank")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise _bad(f"input {key}: shape {shape} has a negative dimension; a tensor's "
                   "dimensions are >= 0")
    expected = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    if expected is not None and (len(shape) != len(expected) or any(
            e >= 0 and e != a for e, a in zip(expected, shape))):
        raise _bad(f"input {key}: expected shape {expected} (-1: any), got {shape}")
    if shape and shape[0] > max_instances:
        raise RequestError(413, f"the request holds {shape[0]} instances; the limit is "
                           f"{max_instances} per request (--max_instances)")
    count = int(np.prod(shape, dtype=object)) if shape else 1  # Python ints: no overflow
    field, per_element = _VALUE_FIELDS[dtype]
    values = getattr(proto, field)
    if dtype == "string":
        if proto.tensor_content:
            raise _bad(f"input {key}: a string tensor carries its values in string_val, not "
                       "tensor_content")
        if len(values) > count:
            raise _bad(f"input {key}: {len(values)} values for shape {shape} ({count} "
                       "elements)")
        # Padding repeats the last string: tf.constant copies each repeat.
        lengths = sum(len(v) for v in values) + (count - len(values)) * (
            len(values[-1]) if values else 0)
        nbytes = count * STRING_ELEMENT_BYTES + lengths
    else:
        itemsize = np.dtype(_numpy_dtype(proto.dtype)).itemsize
        nbytes = count * itemsize
        if proto.tensor_content:
            if len(proto.tensor_content) != nbytes:
                raise _bad(f"input {key}: tensor_content holds {len(proto.tensor_content)} "
                           f"bytes; shape {shape} of {dtype} needs {nbytes}")
        elif len(values) > count * per_element or len(values) % per_element:
            raise _bad(f"input {key}: {len(values)} values in {field} for shape {shape} "
                       f"({count} elements of {dtype})")
    if nbytes > max_bytes:
        raise RequestError(413, f"input {key}: shape {shape} of {dtype} would take {nbytes} "
                           f"bytes once materialised, over the limit of {max_bytes} bytes "
                           "(--max_body_bytes)")
    return nbytes


def _numpy_dtype(enum: int):
    import tensorflow as tf

    return tf.dtypes.as_dtype(enum).as_numpy_dtype


def grpc_server(store: ModelStore, host: str, port: int, max_message_bytes: int,
                threads: int):
    """A started grpc.Server answering PredictionService/Predict: (server, bound port).

    `max_message_bytes` bounds requests; answers are bounded by the store's
    max_response_bytes (checked before the model runs).
    """
    from concurrent import futures

    import grpc
    import tensorflow as tf
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError:
        raise ValueError(GRPC_INSTALL_HINT) from None

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (the proto's name)
            try:
                version = request.model_spec.version.value \
                    if request.model_spec.HasField("version") else None
                loaded = store.get(request.model_spec.name, version)
                signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
                infos = loaded.inputs(signature)
                unknown = sorted(set(request.inputs) - set(infos))
                missing = sorted(set(infos) - set(request.inputs))
                if unknown or missing:
                    raise _bad(f"input names {_echo(str(sorted(request.inputs)))} do not "
                               f"match the signature's {sorted(infos)}")
                # Everything a TensorProto claims is checked before one is materialised; the
                # arrays and their tf.constant copies are claimed from the memory budget.
                claimed = sum(_claimed_array_bytes(key, request.inputs[key], infos[key],
                                                   store.max_instances, max_message_bytes)
                              for key in sorted(request.inputs))  # sorted: one message
                if claimed > max_message_bytes:
                    raise RequestError(413, f"the request's tensors would take {claimed} bytes "
                                       f"once materialised, over the limit of "
                                       f"{max_message_bytes} bytes (--max_body_bytes)")
                with store.budget.claim(2 * claimed, "the request's tensors"):
                    tensors = {key: tf.make_ndarray(proto)
                               for key, proto in request.inputs.items()}
                    with store.running:
                        outputs = store.predict(loaded, signature, tensors)
                        response = predict_pb2.PredictResponse()
                        response.model_spec.name = store.model_name
                        response.model_spec.version.value = loaded.version
                        response.model_spec.signature_name = signature
                        for key, array in outputs.items():
                            response.outputs[key].CopyFrom(tf.make_tensor_proto(array))
                        return response
            except RequestError as error:
                context.abort(getattr(grpc.StatusCode, _GRPC_CODES.get(error.status, "INTERNAL")),
                              error.message)
            except Exception as error:  # never UNKNOWN with a Python exception's text
                traceback.print_exc(file=sys.stderr)
                context.abort(grpc.StatusCode.INTERNAL,
                              f"Internal: {type(error).__name__}: {_first_line(error)}")

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="soundloc-grpc"),
        maximum_concurrent_rpcs=threads * 16,  # beyond: RESOURCE_EXHAUSTED at once
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", store.max_response_bytes),
                 # grpcio sets SO_REUSEPORT by default: a second server on a port in use
                 # would start and the kernel would split the calls between the two.
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(),
                                                                        server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio >= 1.5x raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port} (is the port in use?)")
    server.start()
    return server, bound


# ---------------------------------------------------------------------------
# Both servers.


class DevServer(ThreadedServer):
    """TF Serving's REST (and, with `grpc_port`, gRPC) API for one exported model, in this
    process.

        with DevServer("exports/soundloc", port=0) as server:   # port 0: any free port
            urllib.request.urlopen(server.url + "/v1/models/soundloc")

    Args:
        model_base_path: directory holding the integer version directories.
        model_name: the name in URLs; default: the directory's name.
        host: address to listen on (loopback by default).
        port: REST port (0: any free one).
        all_versions: load every version, not only the latest.
        max_body_bytes: request body limit (REST body, gRPC message), 413 beyond.
        quiet: no request log on stderr.
        max_concurrent_predictions: model runs at once; the others wait.
        grpc_port: gRPC port (0: any free one; None: no gRPC).
        max_instances: instances per request, 413 beyond.
        max_response_bytes: estimated answer size, 413 beyond.
        threads: worker threads of each server.
        max_connections: open REST connections; more wait in the listen backlog.
        memory_budget_bytes: memory the requests being decoded at once may claim (413 for a
            request claiming more, the others wait for their share).
    """

    thread_name = "soundloc-dev-server"

    def __init__(self, model_base_path: str, model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 8501, all_versions: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, quiet: bool = False,
                 max_concurrent_predictions: int = 4, grpc_port: int | None = None,
                 max_instances: int = DEFAULT_MAX_INSTANCES,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, threads: int = 8,
                 max_connections: int = 100,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES):
        for name, value in (("port", port), ("grpc_port", grpc_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must lie in [0, 65535]. Received: {name}={value}")
        limits = {"max_body_bytes": max_body_bytes, "max_instances": max_instances,
                  "max_response_bytes": max_response_bytes, "threads": threads,
                  "max_connections": max_connections,
                  "max_concurrent_predictions": max_concurrent_predictions,
                  "memory_budget_bytes": memory_budget_bytes}
        if min(limits.values()) < 1:
            raise ValueError(f"limits must be >= 1. Received: {limits}")
        self.store = ModelStore(model_base_path, model_name, all_versions, max_instances,
                                max_response_bytes, max_concurrent_predictions,
                                memory_budget_bytes)
        # waitress with deadlines it lacks (threaded.py): idle keep-alive connections closed
        # after 5 s (at once at the connection limit), headers due 10 s after their first byte.
        self.server = create_server(
            RestApp(self.store, max_body_bytes, quiet), host=host, port=port, threads=threads,
            backlog=1024, connection_limit=max_connections,
            max_request_body_size=_DRAIN_FACTOR * max_body_bytes + 1, ident="soundloc-dev-server",
            expose_tracebacks=False)
        self.grpc = self.grpc_port = None
        if grpc_port is not None:
            try:
                self.grpc, self.grpc_port = grpc_server(self.store, host, grpc_port,
                                                        max_body_bytes, threads)
            except BaseException:
                self.server.close()
                raise

    @property
    def grpc_target(self) -> str | None:
        """host:port of the gRPC server (None: not started)."""
        return None if self.grpc is None else f"{self.server.effective_host}:{self.grpc_port}"

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace=1).wait()
        super().stop()


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="soundloc-dev-server",
        description="Development stand-in for TF Serving's REST and gRPC APIs (production: "
                    "TF Serving).")
    parser.add_argument("--model_base_path", required=True,
                        help="directory holding the integer version directories")
    parser.add_argument("--model_name", default=None, help="default: the directory's name")
    parser.add_argument("--host", default="127.0.0.1", help="default %(default)s (local only)")
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--port", type=int, default=8500,
                        help="gRPC port, as TF Serving's flag (default %(default)s; -1: no gRPC; "
                             "without tensorflow-serving-api: REST only, with a note)")
    parser.add_argument("--all_versions", action="store_true",
                        help="load every version, not only the latest")
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max_instances", type=int, default=DEFAULT_MAX_INSTANCES)
    parser.add_argument("--max_response_bytes", type=int, default=DEFAULT_MAX_RESPONSE_BYTES)
    parser.add_argument("--threads", type=int, default=8, help="worker threads per server")
    parser.add_argument("--max_connections", type=int, default=100,
                        help="open REST connections; more wait in the listen backlog")
    parser.add_argument("--memory_budget_bytes", type=int, default=DEFAULT_MEMORY_BUDGET_BYTES,
                        help="memory the requests being decoded at once may claim, estimated "
                             "before decoding (REST JSON, gRPC tensors); default %(default)s")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    parser.add_argument("--verbose", action="store_true", help="TensorFlow's C++ log lines too")
    args = parser.parse_args(argv)
    grpc_port = None if args.port < 0 else args.port
    if grpc_port is not None and importlib.util.find_spec("tensorflow_serving") is None:
        print(f"note: REST only; {GRPC_INSTALL_HINT}", file=sys.stderr)
        grpc_port = None
    try:
        server = DevServer(args.model_base_path, args.model_name, args.host, args.rest_api_port,
                           args.all_versions, args.max_body_bytes, args.quiet,
                           grpc_port=grpc_port,
                           max_instances=args.max_instances,
                           max_response_bytes=args.max_response_bytes, threads=args.threads,
                           max_connections=args.max_connections,
                           memory_budget_bytes=args.memory_budget_bytes)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    versions = ", ".join(str(v) for v in sorted(server.store.versions))
    warmed = sum(v.warmup_requests for v in server.store.versions.values())
    grpc_note = f" (gRPC: {server.grpc_target})" if server.grpc_target else ""
    print(f"Serving {server.store.model_name} (versions {versions}; {warmed} warm-up requests "
          f"replayed) at {server.url}/v1/models/{server.store.model_name}{grpc_note}  "
          "(development server; production: TF Serving)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def run() -> None:
    """Console entry point: soundloc-dev-server."""
    sys.exit(main())


if __name__ == "__main__":
    run()
