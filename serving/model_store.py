"""The versions of one exported model, loaded as TF Serving loads them, and the limits every
request to them is held to (REST and gRPC alike)."""

from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np

from soundloc_tf.warmup import WARMUP_PATH, parse_prediction_log, read_tfrecords

from .json_rules import check_shapes, parse_json, request_tensors, response_chunks
from .memory_budget import (DEFAULT_MEMORY_BUDGET_BYTES, PAUSE_GC_FROM_BYTES,
                            TRIM_AFTER_PARSE_BYTES, MemoryBudget, gc_paused, json_cost,
                            trim_heap)
from .request_errors import RequestError, bad, echo, first_line, utf8

DEFAULT_MAX_INSTANCES = 64
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# The signature TF Serving runs when a request names none: TensorFlow's
# tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY, which the export gives its bytes
# signature (soundloc_tf.inference.signatures.BYTES_SIGNATURE). Written out, not imported:
# the server reads the model only through the SavedModel, and loads TensorFlow only after
# quieting its logs (tests/test_signature_names.py checks the three agree).
DEFAULT_SIGNATURE = "serving_default"
# The answer's JSON is estimated at this many bytes per number ("-0.123456789012345678, ").
BYTES_PER_NUMBER = 24


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
                                 f"({type(error).__name__}: {first_line(error)}). Received: "
                                 f"{path!r}") from None
            signature = signature or DEFAULT_SIGNATURE  # as TF Serving reads an unset name
            try:
                self.functions[signature](**{k: _constant(v) for k, v in tensors.items()})
            except Exception as error:  # TF Serving refuses to load such a version too
                raise ValueError(f"warm-up request {i} ({signature}) failed: "
                                 f"{first_line(error)}. Received: {path!r}") from None
        return len(records)

    def inputs(self, signature: str):
        # protobuf's map keys must encode as UTF-8: a lone surrogate is a 400, not a 500.
        utf8(signature, "signature_name")
        if signature not in self.signature_defs or signature not in self.functions:
            raise bad(f'Serving signature name: "{echo(signature)}" not found in signature def')
        inputs = self.signature_defs[signature].inputs
        if not inputs:
            raise bad(f"Failed to get input map for signature: {signature}")
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
            spec = f"Latest({echo(name)})" if version is None else \
                f"Specific({echo(name)}, {version})"
            raise RequestError(404, f"Servable not found for request: {spec}")
        return self.versions[max(self.versions) if version is None else version]

    def status(self, name: str, version: int | None) -> dict:
        if name != self.model_name:
            raise RequestError(404, f"Could not find any versions of model {echo(name)}")
        if version is not None and version not in self.versions:
            raise RequestError(404, f"Could not find version {version} of model {echo(name)}")
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
                    gc_paused(cost >= PAUSE_GC_FROM_BYTES):
                return self._predict_parsed(loaded, body)
        finally:
            if cost >= TRIM_AFTER_PARSE_BYTES:
                trim_heap()  # the parse's objects are freed: hand their heap back

    def _predict_parsed(self, loaded: LoadedVersion, body: bytes) -> list[bytes]:
        """predict_json's work, run inside its memory claim."""
        request = parse_json(body)
        signature = request.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature, str):
            raise bad("'signature_name' key must be a string value.")
        signature = signature or DEFAULT_SIGNATURE
        tensors, row_format = request_tensors(request, loaded.inputs(signature))
        del request  # the parsed JSON: its objects are the bulk of the claim
        with self.running:  # the answer is built inside the slot: its memory is bounded
            return response_chunks(self.predict(loaded, signature, tensors), row_format)

    def predict(self, loaded: LoadedVersion, signature: str,
                tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked input arrays -> output arrays, within the instance and answer limits.

        Callers hold `self.running` while they run and encode the answer.
        """
        check_shapes(tensors, loaded.inputs(signature))
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
