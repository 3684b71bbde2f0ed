"""gRPC: tensorflow.serving.PredictionService/Predict over a ModelStore, with
tensorflow-serving-api's protos (installed apart: serving/README.md)."""

from __future__ import annotations

import sys
import traceback

import numpy as np

from .model_store import DEFAULT_SIGNATURE, ModelStore
from .request_errors import RequestError, bad, echo, first_line

_GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
               429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED", 409: "ABORTED", 403: "PERMISSION_DENIED",
               401: "UNAUTHENTICATED", 499: "CANCELLED"}
GRPC_INSTALL_HINT = ("gRPC needs tensorflow-serving-api's protos: pip install --no-deps "
                     "tensorflow-serving-api==2.21.0 (--no-deps: it would pull a second "
                     "TensorFlow next to tensorflow-cpu)")

# A string tensor element once materialised: its bytes object's header and the pointer to it.
STRING_ELEMENT_BYTES = 41

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
        raise bad(f"input {key}: expects {_dtype_name(info.dtype)}, got "
                  f"{_dtype_name(proto.dtype)}")
    dtype = _dtype_name(proto.dtype)
    if dtype not in _VALUE_FIELDS:
        raise bad(f"input {key}: dtype {dtype} is not supported over gRPC by the dev server")
    if proto.tensor_shape.unknown_rank:
        raise bad(f"input {key}: the TensorProto's shape has unknown rank")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise bad(f"input {key}: shape {shape} has a negative dimension; a tensor's "
                  "dimensions are >= 0")
    expected = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    if expected is not None and (len(shape) != len(expected) or any(
            e >= 0 and e != a for e, a in zip(expected, shape))):
        raise bad(f"input {key}: expected shape {expected} (-1: any), got {shape}")
    if shape and shape[0] > max_instances:
        raise RequestError(413, f"the request holds {shape[0]} instances; the limit is "
                           f"{max_instances} per request (--max_instances)")
    count = int(np.prod(shape, dtype=object)) if shape else 1  # Python ints: no overflow
    field, per_element = _VALUE_FIELDS[dtype]
    values = getattr(proto, field)
    if dtype == "string":
        if proto.tensor_content:
            raise bad(f"input {key}: a string tensor carries its values in string_val, not "
                      "tensor_content")
        if len(values) > count:
            raise bad(f"input {key}: {len(values)} values for shape {shape} ({count} "
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
                raise bad(f"input {key}: tensor_content holds {len(proto.tensor_content)} "
                          f"bytes; shape {shape} of {dtype} needs {nbytes}")
        elif len(values) > count * per_element or len(values) % per_element:
            raise bad(f"input {key}: {len(values)} values in {field} for shape {shape} "
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
                    raise bad(f"input names {echo(str(sorted(request.inputs)))} do not "
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
                              f"Internal: {type(error).__name__}: {first_line(error)}")

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
