"""TF Serving's warm-up records: their one definition, written by the export, read by the server.

An export holds `WARMUP_PATH`, a TFRecord file of PredictionLog protos, each wrapping one
PredictRequest.  TF Serving (and serving/dev_server.py) replays them before it serves a
version, so the first user request does not pay for the graph's first run.

The protos are encoded and parsed by hand (varints and length-delimited fields only): the
wheel ships no tensorflow-serving-api; the tests parse the records with TF Serving's own
protos.  Floor 0, and the dev server imports it: only the standard library and numpy at
import time.  TensorFlow (TensorProtos, the TFRecord writer) is imported inside the
functions, so a command line has quieted TensorFlow's start-up log (tf_logs) before it loads.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")


# ---------------------------------------------------------------------------
# Writing.


def write_warmup_records(path: str, model_name: str,
                         requests: Sequence[tuple[str, dict[str, np.ndarray]]]) -> None:
    """Writes `requests` to `path` as TFRecords of PredictionLog protos.

    Args:
        path: the file to write, normally `<version dir>/WARMUP_PATH`; its folder is made.
        model_name: the model_spec.name of every request.
        requests: (signature name, {input name: array}) of each request, in replay order.
    """
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            writer.write(prediction_log(model_name, signature, inputs))


def prediction_log(model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> bytes:
    """A PredictionLog holding one PredictRequest, serialised (five length-delimited fields).

    Args:
        model_name: the request's model_spec.name.
        signature: the request's model_spec.signature_name.
        inputs: the request's input arrays by name.
    """
    import tensorflow as tf

    spec = _proto_field(1, model_name.encode()) + _proto_field(3, signature.encode())
    entries = b"".join(
        _proto_field(2, _proto_field(1, key.encode())
                     + _proto_field(2, tf.make_tensor_proto(value).SerializeToString()))
        for key, value in sorted(inputs.items()))
    request = _proto_field(1, spec) + entries  # PredictRequest: model_spec, inputs
    return _proto_field(6, _proto_field(1, request))  # PredictionLog.predict_log.request


def _proto_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# ---------------------------------------------------------------------------
# Reading.


def read_tfrecords(data: bytes) -> list[bytes]:
    """Payloads of a TFRecord file (length, CRC, payload, CRC; the CRCs are not checked).

    Args:
        data: the whole file's bytes.

    Raises:
        ValueError: a record's header or payload is cut short.
    """
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


def parse_prediction_log(record: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """PredictionLog.predict_log.request -> (signature name, input arrays).

    The name is "" when the request leaves it unset (the server's default signature then).

    Args:
        record: one serialised PredictionLog (a payload of `read_tfrecords`).

    Raises:
        ValueError: the record holds no predict request, or its wire format is broken;
            protobuf's DecodeError for a TensorProto that does not parse.
    """
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    signature, tensors = "", {}
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
