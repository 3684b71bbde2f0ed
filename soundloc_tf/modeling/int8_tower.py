"""The frozen image tower through int8 convolutions, for building a feature cache.

Why: on x86 CPUs with AVX-512 VNNI, TensorFlow's oneDNN int8 convolutions run
VGG16 several times faster than float32, and faster than bfloat16 (figures in
benchmarks/README.md). The cache build is the one place the
tower runs over every sample, so it sets how much faster cached training is
than training through the tower.

Static post-training quantisation of a `models.build_image_tower` tower:
weights symmetric int8 with one scale per output channel; activations quint8
with one range per layer, the largest value the float tower gives on
calibration images (larger values saturate); bias, ReLU and the requantisation
fused into each convolution. The pixel normalisation and the first convolution
(3 signed input channels, a few percent of the work) stay float32, and the last
convolution (no ReLU) is dequantised to float32. The visual maps differ from
float32 by about 2 % (relative L2) and their per-location cosines, which the
attention uses, by under 0.1 %: measured in tests/test_int8_tower.py.

The int8 kernels exist only in TensorFlow's oneDNN build for x86, which TensorFlow
turns on by default only on CPUs with AVX-512 VNNI, bf16 or AMX (TF_ENABLE_ONEDNN_OPTS=1
turns it on elsewhere, =0 off); `check_supported` says so in one line when they are
missing. Nothing here is exported: SavedModels keep the float tower.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

# Images the float tower runs over to set each layer's activation range. More see
# rarer peaks (fewer saturated values) at a float32 pass each.
CALIBRATION_IMAGES = 16
_QINT8_MAX = 127.0
_MIN_RANGE = 1e-6  # a layer silent on every calibration image still needs a range


def _layers(tower: keras.Model) -> list[keras.layers.Layer]:
    """The tower's compute layers in order, checked to be what this module can run."""
    layers = [layer for layer in tower.layers
              if not isinstance(layer, keras.layers.InputLayer)
              and layer.name != "visual_map_float32"]  # the bfloat16 tower's output cast
    if (len(layers) < 2 or layers[0].name != "normalize"
            or not isinstance(layers[1], keras.layers.Conv2D)):
        raise ValueError("an int8 tower needs a models.build_image_tower tower (normalize, "
                         f"then convolutions). Received layers: {[l.name for l in layers]}")
    convs = [l for l in layers if isinstance(l, keras.layers.Conv2D)]
    for layer in layers[1:]:
        if isinstance(layer, keras.layers.Conv2D):
            last = layer is convs[-1]
            activation = getattr(layer.activation, "__name__", repr(layer.activation))
            if (layer.strides != (1, 1) or layer.padding != "same" or not layer.use_bias
                    or activation != ("linear" if last else "relu")):
                raise ValueError("an int8 tower runs stride-1 'same' convolutions with a bias, "
                                 f"ReLU except the last. Received: {layer.name} "
                                 f"(strides={layer.strides}, padding={layer.padding!r}, "
                                 f"activation={activation!r})")
        elif isinstance(layer, keras.layers.MaxPooling2D):
            if layer.pool_size != (2, 2) or layer.strides != (2, 2) or layer.padding != "valid":
                raise ValueError(f"an int8 tower runs 2x2 max pooling. Received: {layer.name}")
        else:
            raise ValueError(f"an int8 tower cannot run layer {layer.name!r} "
                             f"({type(layer).__name__})")
    if len(convs) < 2:
        raise ValueError(f"an int8 tower needs at least 2 convolutions. Received: {len(convs)}")
    return layers


def calibrate(tower: keras.Model, images: tf.Tensor) -> list[float]:
    """The largest output of every convolution but the last on `images` (float tower)."""
    layers = _layers(tower)
    convs = [l for l in layers if isinstance(l, keras.layers.Conv2D)]
    if images.shape[0] == 0:
        raise ValueError("calibration needs at least one image. Received: 0")
    taps = keras.Model(tower.input, [l.output for l in convs[:-1]])
    return [max(float(tf.reduce_max(tf.cast(out, tf.float32))), _MIN_RANGE)
            for out in taps(images, training=False)]


def _quantized_filter(conv: keras.layers.Conv2D) -> tuple[np.ndarray, np.ndarray]:
    """int8 kernel and m, its per-output-channel range [-m, m]: m = max |w| over the channel."""
    kernel = np.asarray(conv.kernel.numpy(), np.float32)
    peak = np.maximum(np.abs(kernel).max(axis=(0, 1, 2)), 1e-12)
    q = np.clip(np.round(kernel / peak * _QINT8_MAX), -_QINT8_MAX, _QINT8_MAX).astype(np.int8)
    return q, peak


class Int8ImageTower:
    """`tower`'s function, images [N, S, S, 3] in [0, 1] -> float32 visual maps, in int8.

    `ranges` come from `calibrate` (one per convolution but the last). The
    weights are copied in at construction: later changes to `tower` are not seen.
    """

    def __init__(self, tower: keras.Model, ranges: Sequence[float]):
        layers = _layers(tower)
        convs = [l for l in layers if isinstance(l, keras.layers.Conv2D)]
        if len(ranges) != len(convs) - 1 or not all(r > 0 for r in ranges):
            raise ValueError(f"ranges must be {len(convs) - 1} positive numbers, one per "
                             f"convolution but the last. Received: ranges={list(ranges)}")
        self.ranges = [float(r) for r in ranges]
        self._normalize = layers[0]
        first = convs[0]
        self._first = (first.kernel.numpy(),
                       first.bias.numpy())
        # (kind, arrays): "conv" with (int8 filter, its ranges, bias, output range), or "pool".
        # Kept as numpy: the int8 kernels take filters only as graph constants, made in
        # the traced function (a tensor made here would enter it as a captured input).
        self._plan: list[tuple[str, tuple]] = []
        outputs = iter(self.ranges[1:] + [None])
        for layer in layers[layers.index(first) + 1:]:
            if isinstance(layer, keras.layers.Conv2D):
                bias = layer.bias.numpy()
                self._plan.append(("conv", (*_quantized_filter(layer), bias, next(outputs))))
            else:
                self._plan.append(("pool", ()))
        self._function = tf.function(self._forward, reduce_retracing=True)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self._function(images)

    def _forward(self, images: tf.Tensor) -> tf.Tensor:
        x = tf.cast(self._normalize(images), tf.float32)
        kernel, bias = (tf.constant(a, tf.float32) for a in self._first)
        x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), bias))
        x, low, high = tf.raw_ops.QuantizeV2(input=x, min_range=0.0, max_range=self.ranges[0],
                                             T=tf.quint8, mode="SCALED")
        for kind, arrays in self._plan:
            if kind == "pool":
                x, low, high = tf.raw_ops.QuantizedMaxPool(
                    input=x, min_input=low, max_input=high, ksize=[1, 2, 2, 1],
                    strides=[1, 2, 2, 1], padding="VALID")
                continue
            q, peak, bias, output_range = arrays
            common = dict(input=x, filter=tf.constant(q, tf.qint8),
                          bias=tf.constant(bias, tf.float32), min_input=low, max_input=high,
                          min_filter=tf.constant(-peak), max_filter=tf.constant(peak),
                          strides=[1, 1, 1, 1], padding="SAME")
            if output_range is not None:
                x, low, high = tf.raw_ops.QuantizedConv2DWithBiasAndReluAndRequantize(
                    **common, min_freezed_output=0.0, max_freezed_output=output_range,
                    out_type=tf.quint8)
            else:  # the last convolution: int32, one range per channel, to float32
                x, low, high = tf.raw_ops.QuantizedConv2DWithBias(**common, out_type=tf.qint32)
                x = tf.raw_ops.Dequantize(input=x, min_range=low, max_range=high,
                                          mode="SCALED", axis=3)
        return x


def check_supported() -> None:
    """Raises ValueError, in one line, where TensorFlow has no oneDNN int8 convolution."""
    @tf.function
    def probe():
        return tf.raw_ops.QuantizedConv2DWithBias(
            input=tf.zeros([1, 4, 4, 1], tf.quint8), filter=tf.zeros([1, 1, 1, 1], tf.qint8),
            bias=tf.zeros([1]), min_input=0.0, max_input=1.0, min_filter=[-1.0],
            max_filter=[1.0], strides=[1, 1, 1, 1], padding="SAME", out_type=tf.qint32)[0]

    try:
        probe()
    except (tf.errors.OpError, TypeError, ValueError) as error:
        # A graph error's first lines say where; its last says what (without oneDNN:
        # "Missing 0-th output from {{node QuantizedConv2DWithBias}}").
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ValueError("an int8 image tower needs TensorFlow's oneDNN int8 convolutions "
                         "(x86; on by default only with AVX-512 VNNI/bf16/AMX, else set "
                         "TF_ENABLE_ONEDNN_OPTS=1); use the float tower. Received: "
                         f"{type(error).__name__}: {(lines or [''])[-1][:200]}") from None
