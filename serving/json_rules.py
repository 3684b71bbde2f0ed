"""TF Serving's REST JSON rules: a :predict body -> input arrays, output arrays -> the answer.

Row ("instances") or columnar ("inputs") bodies, {"b64": ...} for bytes, and TF Serving's
error messages for each broken rule (tests compare them with TF Serving's).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Iterator

import numpy as np

from .request_errors import RequestError, bad, utf8

# Nesting of JSON lists deeper than this is refused before it is walked (numpy's limit: 64).
MAX_JSON_DEPTH = 32


def _yield_float(text: str) -> float:
    """json's parse_float as a Python function: the C scanner calls it for every number, and
    each call is a point where the interpreter hands the GIL to the other threads.  With the
    built-in `float` the scanner never does: one 60 MB body held the GIL for 1.5 s, and every
    other request waited (issue 31's combined load)."""
    return float(text)


def _yield_int(text: str) -> int:
    """json's parse_int, for the same reason as _yield_float (a body of zeros is ints)."""
    return int(text)


def parse_json(body: bytes) -> dict:
    """A request body -> its JSON object; a 400 in TF Serving's words when it is not one."""
    if not body.strip():
        raise bad("JSON Parse error: The document is empty")
    try:
        value = json.loads(body, parse_float=_yield_float, parse_int=_yield_int)
    except (ValueError, RecursionError) as error:
        raise bad(f"JSON Parse error: {error}") from None
    if not isinstance(value, dict):
        raise bad("JSON Value: the request body is not a JSON object")
    return value


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def request_tensors(request: dict, infos) -> tuple[dict[str, np.ndarray], bool]:
    """TF Serving's row/columnar rules -> {input name: array}, and whether it was row format."""
    names = sorted(infos)
    has_instances, has_inputs = "instances" in request, "inputs" in request
    if has_instances and has_inputs:
        raise bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys "
                  "to exist")
    if not has_instances and not has_inputs:
        raise bad("Missing 'inputs' or 'instances' key")
    if has_instances:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise bad("Excepting 'instances' to be an list/array")
        if not instances:
            raise bad("No values in 'instances' array")
        objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
        if not objects and len(names) > 1:
            raise bad("instances is a plain list, but expecting list of objects as multiple "
                      "input tensors required as per tensorinfo_map")
        columns: dict[str, list] = {n: [] for n in names}
        for i, element in enumerate(instances):
            if objects:
                if not isinstance(element, dict) or _is_b64(element):
                    raise bad(f"Expecting object but got list at item {i} of input list")
                if sorted(element) != names:
                    raise bad(f"Failed to process element: {i} of 'instances' list. JSON object "
                              f"keys {sorted(element)} must be equal to: {','.join(names)}")
                for name in names:
                    columns[name].append((i, element[name]))
            else:
                if isinstance(element, dict) and not _is_b64(element):
                    raise bad(f"Expecting value/list but got object at item {i} of input list")
                columns[names[0]].append((i, element))
        tensors = {}
        for name, items in columns.items():
            arrays = []
            for i, value in items:
                try:
                    arrays.append(_to_array(value, infos[name].dtype))
                except RequestError as error:
                    raise bad(f"Failed to process element: {i} key: {name} of 'instances' list. "
                              f"Error: {error.message}") from None
                if arrays[-1].shape != arrays[0].shape:
                    raise bad(f"Failed to process element: {i} key: {name} of 'instances' list. "
                              f"Error: Expecting shape {list(arrays[0].shape)} but got: "
                              f"{list(arrays[-1].shape)}")
            tensors[name] = np.stack(arrays)
        return check_shapes(tensors, infos), True
    inputs = request["inputs"]
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise bad("inputs is a plain value/list, but expecting an object as multiple input "
                      "tensors required as per tensorinfo_map")
        inputs = {names[0]: inputs}
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise bad(f"Unknown named input: {unknown[0]} in 'inputs' object; the signature takes "
                  f"{', '.join(names)}")
    tensors = {}
    for name in names:
        if name not in inputs:
            raise bad(f"Missing named input: {name} in 'inputs' object.")
        try:
            tensors[name] = _to_array(inputs[name], infos[name].dtype)
        except RequestError as error:
            raise bad(f"input {name}: {error.message}") from None
    return check_shapes(tensors, infos), False


def _to_array(value: Any, dtype_enum: int) -> np.ndarray:
    """A JSON value (nested lists, {"b64"} objects) -> numpy array of the signature's dtype."""
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(dtype_enum)
    shape: list[int] = []
    leaves: list[Any] = []

    def walk(node: Any, depth: int) -> None:
        if isinstance(node, list):
            if depth >= MAX_JSON_DEPTH:
                raise bad(f"lists nested more than {MAX_JSON_DEPTH} deep; tensors have at most "
                          f"{MAX_JSON_DEPTH} dimensions here")
            if depth == len(shape):
                shape.append(len(node))
            elif depth > len(shape) or shape[depth] != len(node):
                raise bad("the nested lists are ragged: every list at one depth needs the same "
                          "length")
            for child in node:
                walk(child, depth + 1)
        else:
            if depth != len(shape):
                raise bad("the nested lists are ragged: values and lists mix at one depth")
            leaves.append(node)

    walk(value, 0)
    if dtype == tf.string:
        out = np.empty(len(leaves), dtype=object)
        for i, leaf in enumerate(leaves):
            if _is_b64(leaf):
                if not isinstance(leaf["b64"], str):
                    raise bad("the 'b64' value must be a string")
                try:
                    out[i] = base64.b64decode(leaf["b64"], validate=True)
                except (binascii.Error, ValueError):
                    raise bad("Unable to base64 decode the 'b64' value") from None
            elif isinstance(leaf, str):
                out[i] = utf8(leaf, f"string value {i}").encode("utf-8")
            else:
                raise bad(f"JSON Value: {json.dumps(leaf)[:80]} not of expected type: string")
        return out.reshape(shape)
    if dtype.is_floating or dtype.is_integer or dtype == tf.bool:
        kind = "bool" if dtype == tf.bool else "float" if dtype.is_floating else "integer"
        for leaf in leaves:
            ok = isinstance(leaf, bool) if dtype == tf.bool else (
                isinstance(leaf, (int, float)) and not isinstance(leaf, bool)
                and (dtype.is_floating or isinstance(leaf, int) or leaf.is_integer()))
            if not ok:
                raise bad(f"JSON Value: {json.dumps(leaf)[:80]} not of expected type: {kind}")
        try:
            return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
        except OverflowError:  # e.g. a 400-digit integer
            big = next(v for v in leaves if isinstance(v, int) and abs(v) > 2 ** 63)
            raise bad(f"JSON Value: {str(big)[:20]}... ({len(str(abs(big)))} digits) is out of "
                      f"range for {dtype.name}") from None
    raise bad(f"inputs of dtype {dtype.name} are not supported by the dev server")


def check_shapes(tensors: dict[str, np.ndarray], infos) -> dict[str, np.ndarray]:
    for name, array in tensors.items():
        proto = infos[name].tensor_shape
        if proto.unknown_rank:
            continue
        expected = [d.size for d in proto.dim]
        if array.ndim != len(expected) or any(e >= 0 and e != a for e, a in
                                              zip(expected, array.shape)):
            raise bad(f"input {name}: expected shape {expected} (-1: any), got "
                      f"{list(array.shape)}")
    return tensors


def _json_value(array: np.ndarray, name: str) -> Any:
    if array.dtype == object:
        if name.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")},
                                otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def response_chunks(outputs: dict[str, np.ndarray], row_format: bool) -> list[bytes]:
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
