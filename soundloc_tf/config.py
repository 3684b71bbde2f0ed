"""One configuration object for every tool: the fields, their derived geometry, validation.

Where a configuration starts (one rule for the library and the command lines):

* `Config()`'s field defaults are the paper's method as published (VGG16 at 320x320 giving
  a 20x20 map, triplet loss, softmax(ReLU(cos)), Adam at 1e-4, batch 30), with the
  in-graph log-mel audio tower, which needs no converted weights, in SoundNet-8's place.
  They are the base every preset is written against, and what a field missing from an
  old run's config.json means; they are not a run's starting point on their own.
* A run starts from a named preset (soundloc_tf/presets.py), and from
  `DEFAULT_PRESET` ("tiny", minutes on 2 CPU cores) when none is named: `get_config()`
  and every command line's `--preset` alike. `get_config("paper")` is the paper's towers
  with their pretrained weights (README.md's paragraph on the presets).
* Keyword overrides (`get_config(preset, **overrides)`), or the command lines' flags, one
  per field, change any field of the preset.

The facts about each tower (sample rates, shortest clips, feature widths, weights paths,
image downsampling) live in the tower table, soundloc_tf/towers.py, which this module and
soundloc_tf/modeling read. Every other module reads its numbers from a `Config`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from soundloc_tf import presets, towers

# Names other modules and tests import from here; each fact's home is soundloc_tf/towers.py
# or soundloc_tf/presets.py.
from soundloc_tf.presets import DEFAULT_PRESET, PRESETS  # noqa: F401 (re-exported)
from soundloc_tf.towers import (  # noqa: F401 (re-exported)
    DEFAULT_AUDIO_FEATURE, SOUNDNET8_MIN_SAMPLES, SOUNDNET8_WEIGHTS, YAMNET_MIN_SAMPLES,
    YAMNET_NUM_CLASSES, YAMNET_WEIGHTS)

IMAGE_TOWERS = tuple(towers.IMAGE)
AUDIO_TOWERS = tuple(towers.AUDIO)
# audio tower -> {feature: width}, `Config.audio_feature`'s choices (towers.AudioTower).
AUDIO_FEATURES: dict[str, dict[str, int | None]] = {
    name: dict(tower.features) for name, tower in towers.AUDIO.items()}
UNSUPERVISED_LOSSES = ("triplet", "infonce", "hard_way", "none")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
TOWER_PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
    """All hyper-parameters of data, model, losses, training and evaluation.

    The field defaults are the paper's method as published, the base of every preset
    (the module docstring states how `Config()`, `get_config()` and the command lines
    relate). Construction validates every field and raises ValueError naming the values
    received.
    """

    # --- image stream -----------------------------------------------------
    image_size: int = 320
    image_tower: str = "vgg16"
    # "imagenet" (Keras download), "none" (random init) or a .weights.h5 path.
    image_weights: str = "imagenet"
    # Conv widths of the tiny VGG-style tower, one VGG block per entry; every
    # block but the last ends in a 2x2 max-pool.
    tiny_image_widths: tuple[int, ...] = (16, 32, 64, 64)
    freeze_image_tower: bool = True
    # "bfloat16" runs the image tower's convolutions in bfloat16 (Keras's
    # mixed_bfloat16: float32 weights, bf16 arithmetic) and hands a float32
    # map on: faster where the CPU has AVX-512 BF16 (or on a GPU), at a small cost
    # in accuracy (benchmarks/README.md), hence not the default. The localiser and
    # losses stay in float32.
    image_tower_precision: str = "float32"

    # --- audio stream -----------------------------------------------------
    audio_tower: str = "logmel"
    sample_rate: int = 22050
    clip_seconds: float = 20.0
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 0.0  # 0 means sample_rate / 2
    audio_widths: tuple[int, ...] = (64, 128, 256, 512)
    # Width of the audio feature the visual branch must reconstruct
    # (SoundNet-8 conv8's 1000 object classes in the paper).
    audio_feature_dim: int = 1000
    # Which output of a pretrained audio tower is the sound feature (towers.AudioTower's
    # features): "default" is the tower's own (SoundNet-8's object logits, YAMNet's embedding).
    audio_feature: str = DEFAULT_AUDIO_FEATURE
    # audio_tower="soundnet8" or "yamnet": "none" (random init) or a .weights.h5 written
    # by tools/fetch_weights.py.
    audio_weights: str = "none"
    freeze_audio_tower: bool = False
    # With both towers frozen, soundloc-train runs them once into a feature cache and
    # trains the localiser on it (--tower_mode overrides): the paper's set-up, many
    # times faster than running frozen towers on every step.
    cache_features: bool = False

    # --- localizer ----------------------------------------------------------
    # Hidden width of the fc heads (fc 1000->1000 sound, fc 512->512 visual).
    sound_hidden_dim: int = 1000
    visual_hidden_dim: int = 512
    # alpha = softmax(relu(cos) / T).  1.0 is the authors' re-implementation;
    # ReLU(cos) lies in [0, 1], so at 1.0 the softmax is nearly uniform.
    attention_temperature: float = 1.0
    # The paper applies ReLU to the cosines before the softmax.  When every
    # cosine of a sample is negative (common at random initialisation) the
    # attention is exactly uniform and no gradient reaches it; False uses
    # softmax(cos / T) instead (docs/FINDINGS.md, "Deviations").
    attention_relu: bool = True
    # A learned 1x1 convolution on the visual map before the attention (EZ-VSL's img_proj),
    # identity-initialised so training starts from the pretrained tower's geometry. The
    # paper correlates the sound with the tower's own map (False); with frozen towers that
    # leaves the map's channels as ImageNet weighs them, and within one category the peak
    # follows the photo (docs/FINDINGS.md).
    visual_projection: bool = False

    # --- losses -------------------------------------------------------------
    unsupervised_loss: str = "triplet"
    # InfoNCE's softmax temperature, also that of the hard-way loss (LVS: 0.07).
    infonce_temperature: float = 0.07
    # The hard-way loss (LVS, Chen et al. 2021; `losses.hard_way_loss`): the cosines where
    # its soft positive and hard-negative masks cross one half, and their softness
    # (LVS's epsilon, epsilon' and tau).
    hard_way_positive_threshold: float = 0.65
    hard_way_negative_threshold: float = 0.4
    hard_way_mask_temperature: float = 0.03
    # Whether InfoNCE counts another pair of the same sounding class (`class_id`, when the
    # records know it) as a negative. True is LVS's and EZ-VSL's batch; False leaves such
    # pairs out of the softmax, so a dog's bark is not pushed away from another dog's photo
    # (semantically similar pairs, Senocak et al., ICASSP 2022).
    infonce_same_class_negatives: bool = True
    supervised_weight: float = 1.0
    # The supervised term's softmax temperature over the cosine map; 0 means the attention's
    # own (attention_temperature). At T = 1 softmax over 400 cells of cosines in [-1, 1]
    # peaks at most e / (e + 399 / e) = 0.018, so the boxes can hardly shape the map; a
    # small value here lets them, whatever temperature the attention keeps.
    supervised_temperature: float = 0.0
    # Fraction of training samples whose annotation the trainer may use.
    label_fraction: float = 0.0

    # --- optimisation -------------------------------------------------------
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    # "cosine" decays the rate to 0 over train_steps.
    lr_schedule: str = "constant"
    momentum: float = 0.9
    batch_size: int = 30
    train_steps: int = 48_000  # ~10 epochs of 144k pairs at batch 30
    # Compile the localiser, loss and update with XLA when training from the
    # feature cache on one device (OneDeviceStrategy), where the fused heads step is
    # memory-bound and gains from fusion. The conv towers are never compiled: XLA's CPU
    # convolutions are slower than oneDNN's.
    xla_heads: bool = True

    # --- built-in synthetic scenes -----------------------------------------
    num_classes: int = 8
    min_objects: int = 1
    max_objects: int = 4
    # Object side as a fraction of the image side.
    min_object_size: float = 0.18
    max_object_size: float = 0.35
    min_snr_db: float = 0.0
    max_snr_db: float = 20.0
    # Probability that a context cue (a class-coloured patch away from the
    # objects) announces the sounding class: the "pigeon superstition" trap.
    confound: float = 0.0
    cue_size: float = 0.14  # side of the cue patch, fraction of the image side
    # Probability that an object looks like its own class (colour, shape,
    # stripes); otherwise it wears a random class's look. Below 1 the object
    # identifies its sound less reliably than a cue does, as a road does a
    # car better than the many looks of cars: where a superstition pays off.
    object_identity: float = 1.0
    train_seed: int = 0
    eval_seed: int = 1_000_003  # never used for training scenes

    # --- evaluation ---------------------------------------------------------
    eval_size: int = 224
    ciou_threshold: float = 0.5
    num_eval_samples: int = 500

    # --- bookkeeping --------------------------------------------------------
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 500
    max_checkpoints: int = 3
    num_summary_images: int = 6

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def num_samples(self) -> int:
        """Samples of one clip at sample_rate."""
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def resolved_audio_feature(self) -> str:
        """audio_feature with "default" replaced by the tower's own feature."""
        if self.audio_feature == DEFAULT_AUDIO_FEATURE:
            return towers.AUDIO[self.audio_tower].default_feature
        return self.audio_feature

    @property
    def effective_fmax(self) -> float:
        """The mel filterbank's top frequency: fmax, or the Nyquist frequency for 0."""
        return self.fmax if self.fmax > 0 else self.sample_rate / 2

    @property
    def num_frames(self) -> int:
        """Log-mel frames of one clip (centred STFT, as librosa)."""
        return 1 + self.num_samples // self.hop_length

    @property
    def image_downsampling(self) -> int:
        """Image side / visual map side (the tower table's `ImageTower.downsampling`)."""
        return towers.IMAGE[self.image_tower].downsampling(self.tiny_image_widths)

    @property
    def map_size(self) -> int:
        """Side of the visual map, and so of the attention and cosine maps."""
        return self.image_size // self.image_downsampling

    @property
    def visual_dim(self) -> int:
        """Channels of the visual map, and so of the sound embedding."""
        return towers.IMAGE[self.image_tower].channels(self.tiny_image_widths)

    def replace(self, **changes: Any) -> "Config":
        """A copy with `changes` applied, validated again.

        Args:
          **changes: `Config` fields and their new values.
        """
        return dataclasses.replace(self, **changes)


def get_config(preset: str = DEFAULT_PRESET, **overrides: Any) -> Config:
    """The named preset with `overrides` applied, validated.

    Args:
      preset: a key of `PRESETS`; `DEFAULT_PRESET` (the command lines' default too) when
        not given.
      **overrides: `Config` fields that replace the preset's values.

    Raises:
      ValueError: an unknown preset or field, or a value `Config` refuses.
    """
    if preset not in presets.PRESETS:
        raise ValueError(f"Unknown preset; expected one of {sorted(presets.PRESETS)}. "
                         f"Received: preset={preset!r}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise ValueError(f"Unknown config field(s). Received: {unknown}")
    return Config(**{**presets.PRESETS[preset], **overrides})


def _require(condition: bool, message: str, **received: Any) -> None:
    """Raises ValueError("<message>. Received: name=value, ...") unless `condition`."""
    if not condition:
        shown = ", ".join(f"{k}={v!r}" for k, v in received.items())
        raise ValueError(f"{message}. Received: {shown}")


# The bound of every integer field: each one ends up in an int32 or int64 tensor, a NumPy
# seed or a step count, and a value past it fails deep in TensorFlow (an OverflowError
# traceback) instead of here, named.
MAX_INTEGER = 2 ** 31 - 1


def _validate_numbers(c: Config) -> None:
    """Every numeric field finite and within MAX_INTEGER, checked before the field's own
    range, so an absurd value is refused by name whichever field it is."""
    for field in dataclasses.fields(c):
        value = getattr(c, field.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, int):
                _require(-MAX_INTEGER <= v <= MAX_INTEGER,
                         f"{field.name} must lie in [-{MAX_INTEGER}, {MAX_INTEGER}]",
                         **{field.name: value})
            else:
                _require(math.isfinite(v), f"{field.name} must be a finite number",
                         **{field.name: value})


def _validate(c: Config) -> None:
    """Every check of a `Config`, in order; the first that fails raises ValueError."""
    for check in (_validate_numbers, _validate_choices, _validate_image, _validate_audio,
                  _validate_localizer, _validate_losses, _validate_optimization,
                  _validate_scenes, _validate_bookkeeping, _validate_towers):
        check(c)


def _validate_choices(c: Config) -> None:
    """The fields that name one of a fixed set of choices."""
    for name, choices in (("image_tower", IMAGE_TOWERS),
                          ("image_tower_precision", TOWER_PRECISIONS),
                          ("audio_tower", AUDIO_TOWERS),
                          ("unsupervised_loss", UNSUPERVISED_LOSSES),
                          ("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES)):
        _require(getattr(c, name) in choices, f"{name} must be one of {choices}",
                 **{name: getattr(c, name)})


# The largest image side: VGG16's activations at 1024x1024 already take gigabytes per batch.
MAX_IMAGE_SIZE = 1024


def _validate_image(c: Config) -> None:
    """The conv widths (both towers') and the image side against the tower's downsampling."""
    _require(len(c.tiny_image_widths) >= 1 and all(w > 0 for w in c.tiny_image_widths),
             "tiny_image_widths must be positive", tiny_image_widths=c.tiny_image_widths)
    _require(len(c.audio_widths) >= 1 and all(w > 0 for w in c.audio_widths),
             "audio_widths must be positive", audio_widths=c.audio_widths)
    _require(c.image_size >= c.image_downsampling and c.image_size % c.image_downsampling == 0,
             f"image_size must be a positive multiple of {c.image_downsampling} for this tower",
             image_size=c.image_size)
    _require(c.image_size <= MAX_IMAGE_SIZE, f"image_size must be at most {MAX_IMAGE_SIZE}",
             image_size=c.image_size)


# The bounds of the audio settings: the sample rates and clip lengths a run may use, and
# the shortest FFT window.
SAMPLE_RATE_RANGE = (8000, 96000)
MAX_CLIP_SECONDS = 60
MIN_N_FFT = 16


def _validate_audio(c: Config) -> None:
    """The waveform and the log-mel front end."""
    low, high = SAMPLE_RATE_RANGE
    _require(low <= c.sample_rate <= high, f"sample_rate must lie in [{low}, {high}] Hz",
             sample_rate=c.sample_rate)
    _require(0 < c.clip_seconds <= MAX_CLIP_SECONDS,
             f"clip_seconds must lie in (0, {MAX_CLIP_SECONDS}]", clip_seconds=c.clip_seconds)
    _require(c.n_fft >= MIN_N_FFT and c.n_fft & (c.n_fft - 1) == 0,
             f"n_fft must be a power of two >= {MIN_N_FFT}", n_fft=c.n_fft)
    _require(0 < c.hop_length <= c.n_fft, "hop_length must lie in (0, n_fft]",
             hop_length=c.hop_length, n_fft=c.n_fft)
    _require(c.num_samples >= c.n_fft, "a clip must hold at least one FFT window",
             clip_seconds=c.clip_seconds, n_fft=c.n_fft)
    _require(c.n_mels > 0, "n_mels must be positive", n_mels=c.n_mels)
    _require(0 <= c.fmin < c.effective_fmax <= c.sample_rate / 2,
             "need 0 <= fmin < fmax <= sample_rate / 2", fmin=c.fmin, fmax=c.fmax)


def _validate_localizer(c: Config) -> None:
    """The heads' widths and the attention's temperature."""
    for name in ("audio_feature_dim", "sound_hidden_dim", "visual_hidden_dim"):
        _require(getattr(c, name) > 0, f"{name} must be positive", **{name: getattr(c, name)})
    _require(c.attention_temperature > 0 and math.isfinite(c.attention_temperature),
             "attention_temperature must be a positive number",
             attention_temperature=c.attention_temperature)


def _validate_losses(c: Config) -> None:
    """The unsupervised and supervised terms, and that there is something to learn."""
    _require(c.infonce_temperature > 0, "infonce_temperature must be positive",
             infonce_temperature=c.infonce_temperature)
    _require(c.infonce_same_class_negatives or c.unsupervised_loss == "infonce",
             "infonce_same_class_negatives=False changes InfoNCE's batch; it needs "
             "unsupervised_loss='infonce'", unsupervised_loss=c.unsupervised_loss)
    _require(-1 < c.hard_way_negative_threshold < c.hard_way_positive_threshold < 1,
             "the hard-way thresholds need -1 < negative < positive < 1",
             hard_way_negative_threshold=c.hard_way_negative_threshold,
             hard_way_positive_threshold=c.hard_way_positive_threshold)
    _require(c.hard_way_mask_temperature > 0, "hard_way_mask_temperature must be positive",
             hard_way_mask_temperature=c.hard_way_mask_temperature)
    _require(c.supervised_temperature >= 0 and math.isfinite(c.supervised_temperature),
             "supervised_temperature must be 0 (the attention's) or a positive number",
             supervised_temperature=c.supervised_temperature)
    _require(c.supervised_weight >= 0, "supervised_weight must be >= 0",
             supervised_weight=c.supervised_weight)
    _require(0.0 <= c.label_fraction <= 1.0, "label_fraction must lie in [0, 1]",
             label_fraction=c.label_fraction)
    _require(c.unsupervised_loss != "none" or (c.label_fraction > 0 and c.supervised_weight > 0),
             "with unsupervised_loss='none' there is nothing to learn unless "
             "label_fraction > 0 and supervised_weight > 0",
             unsupervised_loss=c.unsupervised_loss, label_fraction=c.label_fraction,
             supervised_weight=c.supervised_weight)


def _validate_optimization(c: Config) -> None:
    """The optimiser, the batch and the number of steps."""
    _require(c.learning_rate > 0 and math.isfinite(c.learning_rate),
             "learning_rate must be a positive number", learning_rate=c.learning_rate)
    _require(0 <= c.momentum < 1, "momentum must lie in [0, 1)", momentum=c.momentum)
    _require(c.batch_size >= 2, "batch_size must be >= 2 (negatives come from the batch)",
             batch_size=c.batch_size)
    _require(c.train_steps >= 1, "train_steps must be >= 1", train_steps=c.train_steps)


# The most objects one synthetic scene holds, however many classes there are.
MAX_SCENE_OBJECTS = 8


def _validate_scenes(c: Config) -> None:
    """The built-in synthetic scenes and their seeds."""
    _require(c.num_classes >= 2, "num_classes must be >= 2", num_classes=c.num_classes)
    _require(1 <= c.min_objects <= c.max_objects <= min(c.num_classes, MAX_SCENE_OBJECTS),
             f"need 1 <= min_objects <= max_objects <= min(num_classes, {MAX_SCENE_OBJECTS})",
             min_objects=c.min_objects, max_objects=c.max_objects, num_classes=c.num_classes)
    _require(0.05 <= c.min_object_size <= c.max_object_size <= 0.9,
             "need 0.05 <= min_object_size <= max_object_size <= 0.9",
             min_object_size=c.min_object_size, max_object_size=c.max_object_size)
    _require(c.min_snr_db <= c.max_snr_db, "min_snr_db must be <= max_snr_db",
             min_snr_db=c.min_snr_db, max_snr_db=c.max_snr_db)
    _require(0.0 <= c.confound <= 1.0, "confound must lie in [0, 1]", confound=c.confound)
    _require(0.05 <= c.cue_size <= 0.5, "cue_size must lie in [0.05, 0.5]", cue_size=c.cue_size)
    _require(0.0 <= c.object_identity <= 1.0, "object_identity must lie in [0, 1]",
             object_identity=c.object_identity)
    _require(c.train_seed != c.eval_seed, "eval_seed must differ from train_seed",
             train_seed=c.train_seed, eval_seed=c.eval_seed)


def _validate_bookkeeping(c: Config) -> None:
    """Evaluation, logging and checkpoints."""
    _require(c.eval_size >= 8, "eval_size must be >= 8", eval_size=c.eval_size)
    _require(0.0 < c.ciou_threshold < 1.0, "ciou_threshold must lie in (0, 1)",
             ciou_threshold=c.ciou_threshold)
    for name in ("num_eval_samples", "log_every", "eval_every", "checkpoint_every",
                 "max_checkpoints"):
        _require(getattr(c, name) >= 1, f"{name} must be >= 1", **{name: getattr(c, name)})
    _require(c.num_summary_images >= 0, "num_summary_images must be >= 0",
             num_summary_images=c.num_summary_images)


def _validate_towers(c: Config) -> None:
    """The towers' weights, features and input against the tower table, and the cache."""
    pretrained_audio = tuple(name for name, t in towers.AUDIO.items() if t.pretrained)
    _require(c.audio_weights == "none" or c.audio_tower in pretrained_audio,
             f"audio_weights apply only to audio_tower in {pretrained_audio}",
             audio_weights=c.audio_weights, audio_tower=c.audio_tower)
    _validate_audio_tower_input(c, towers.AUDIO[c.audio_tower])
    _require(not c.cache_features or (c.freeze_image_tower and c.freeze_audio_tower),
             "cache_features needs both towers frozen",
             cache_features=c.cache_features, freeze_image_tower=c.freeze_image_tower,
             freeze_audio_tower=c.freeze_audio_tower)
    pretrained_image = " or ".join(repr(name) for name, t in towers.IMAGE.items()
                                   if t.pretrained)
    _require(c.image_weights == "none" or towers.IMAGE[c.image_tower].pretrained,
             f"pretrained image_weights apply only to image_tower={pretrained_image}",
             image_weights=c.image_weights, image_tower=c.image_tower)


def _validate_audio_tower_input(c: Config, tower: towers.AudioTower) -> None:
    """The feature the audio tower gives, its width, and the rate and length it takes."""
    features = (DEFAULT_AUDIO_FEATURE, *tower.features)
    _require(c.audio_feature in features,
             f"audio_tower={c.audio_tower!r} gives audio_feature in {features}",
             audio_feature=c.audio_feature)
    rate = tower.sample_rate
    if rate is not None:
        _require(c.sample_rate == rate, f"audio_tower={c.audio_tower!r} needs sample_rate={rate}",
                 sample_rate=c.sample_rate)
    if tower.min_samples is not None:
        shortest = tower.min_samples
        _require(c.num_samples >= shortest,
                 f"audio_tower={c.audio_tower!r} needs clips of at least {shortest} "
                 f"samples ({shortest / c.sample_rate:.2f} s)", clip_seconds=c.clip_seconds)
    width = tower.features[c.resolved_audio_feature]
    if width is not None:
        _require(c.audio_feature_dim == width,
                 f"audio_tower={c.audio_tower!r} gives {width}-d features with "
                 f"audio_feature={c.resolved_audio_feature!r}",
                 audio_feature_dim=c.audio_feature_dim, audio_feature=c.audio_feature)
