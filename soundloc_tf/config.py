"""One configuration object for every tool, with the paper's defaults.

`Config()` is the paper's setup (Senocak et al., CVPR 2018, see
`docs/` and the method notes): VGG16 at 320x320 giving a 20x20 map, a
1000-d audio feature, Adam at 1e-4, batch 30.  Named presets change a few
fields (`tiny` trains in minutes on 2 CPU cores); command-line flags change
any field.  Every other module reads its numbers from here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

IMAGE_TOWERS = ("vgg16", "tiny_vgg")
AUDIO_TOWERS = ("logmel", "soundnet8", "yamnet")
# SoundNet-8's fixed input: 22,050 Hz, and at least one conv8 step (about 9.5 s);
# soundnet.min_samples() computes it from the layer geometry (a test checks they agree).
SOUNDNET8_SAMPLE_RATE = 22050
SOUNDNET8_MIN_SAMPLES = 209374
SOUNDNET8_FEATURE_DIM = 1000
# Where tools/fetch_weights.py writes the converted SoundNet-8 weights; the paper preset's
# audio_weights.
SOUNDNET8_WEIGHTS = "~/.keras/models/soundnet8.weights.h5"
# YAMNet's fixed input: 16 kHz, and at least one 0.96-s patch (yamnet.min_samples());
# its embedding is 1,024-d. tools/fetch_weights.py (--what=yamnet) writes YAMNET_WEIGHTS.
YAMNET_SAMPLE_RATE = 16000
YAMNET_MIN_SAMPLES = 15600
YAMNET_FEATURE_DIM = 1024
YAMNET_WEIGHTS = "~/.keras/models/yamnet.weights.h5"
PRETRAINED_AUDIO_TOWERS = {  # tower -> (sample rate, shortest clip, default feature width)
    "soundnet8": (SOUNDNET8_SAMPLE_RATE, SOUNDNET8_MIN_SAMPLES, SOUNDNET8_FEATURE_DIM),
    "yamnet": (YAMNET_SAMPLE_RATE, YAMNET_MIN_SAMPLES, YAMNET_FEATURE_DIM),
}
# SoundNet-8's conv8 heads: 1,000 ImageNet objects (the paper's feature) and 401 Places
# scenes. YAMNet's classifier: 521 AudioSet classes.
SOUNDNET8_SCENE_DIM = 401
YAMNET_NUM_CLASSES = 521
# audio_feature: which output of the audio tower is the sound feature. "default" is the
# tower's own, the first entry of its table (the log-mel tower has only its learned one,
# whose width audio_feature_dim sets). Widths, which audio_feature_dim must equal:
#   soundnet8  class_logits / class_probs  the object head over time: mean of the logits,
#                                          or of the softmax of every conv8 step (each step
#                                          was trained by KL to a softmax teacher)
#              scene_logits / scene_probs  the same for the Places scene head
#   yamnet     embedding                   the patches' mean 1,024-d embedding
#              class_logits / class_probs  the 521 AudioSet logits averaged over the
#                                          patches, or the mean of each patch's sigmoid
#                                          scores (YAMNet is multi-label; its own demo
#                                          averages the scores, not the logits)
DEFAULT_AUDIO_FEATURE = "default"
AUDIO_FEATURES: dict[str, dict[str, int | None]] = {
    "logmel": {"learned": None},
    "soundnet8": {"class_logits": SOUNDNET8_FEATURE_DIM, "class_probs": SOUNDNET8_FEATURE_DIM,
                  "scene_logits": SOUNDNET8_SCENE_DIM, "scene_probs": SOUNDNET8_SCENE_DIM},
    "yamnet": {"embedding": YAMNET_FEATURE_DIM, "class_logits": YAMNET_NUM_CLASSES,
               "class_probs": YAMNET_NUM_CLASSES},
}
UNSUPERVISED_LOSSES = ("triplet", "infonce", "hard_way", "none")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
TOWER_PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
    """All hyper-parameters of data, model, losses, training and evaluation.

    The field defaults are the paper's method as published (VGG16 at 320, triplet loss,
    softmax(ReLU(cos))), with the in-graph log-mel audio tower, which needs no converted
    weights, in place of SoundNet-8; `get_config` starts from the `paper` preset, which departs from
    them where docs/FINDINGS.md shows why, and the command lines start from `tiny`
    (`--preset=tiny`), which trains in minutes on a CPU.
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
    # Which output of a pretrained audio tower is the sound feature (AUDIO_FEATURES above):
    # "default" is the tower's own (SoundNet-8's object logits, YAMNet's embedding).
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
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def resolved_audio_feature(self) -> str:
        """audio_feature with "default" replaced by the tower's own feature."""
        if self.audio_feature == DEFAULT_AUDIO_FEATURE:
            return next(iter(AUDIO_FEATURES[self.audio_tower]))
        return self.audio_feature

    @property
    def effective_fmax(self) -> float:
        return self.fmax if self.fmax > 0 else self.sample_rate / 2

    @property
    def num_frames(self) -> int:
        """Log-mel frames of one clip (centred STFT, as librosa)."""
        return 1 + self.num_samples // self.hop_length

    @property
    def image_downsampling(self) -> int:
        if self.image_tower == "vgg16":
            return 16  # four pools before block5_conv3
        return 2 ** (len(self.tiny_image_widths) - 1)

    @property
    def map_size(self) -> int:
        return self.image_size // self.image_downsampling

    @property
    def visual_dim(self) -> int:
        """Channels of the visual map, and so of the sound embedding."""
        if self.image_tower == "vgg16":
            return 512
        return self.tiny_image_widths[-1]

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


# The paper's towers: ImageNet VGG16 at 320x320 and SoundNet-8 with its converted
# weights (`soundloc-fetch-weights --what=all`), both frozen as in the authors'
# re-implementation, trained from the feature cache. InfoNCE and the softmax over raw
# cosines (no ReLU) were chosen on real photographs (docs/FINDINGS.md, "Deviations").
_PAPER: dict[str, Any] = {
    "image_weights": "imagenet",
    "audio_tower": "soundnet8",
    "audio_weights": SOUNDNET8_WEIGHTS,
    "freeze_image_tower": True,
    "freeze_audio_tower": True,
    "cache_features": True,
    "unsupervised_loss": "infonce",
    "attention_temperature": 1.0,
    "attention_relu": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": _PAPER,
    # The paper preset with YAMNet (AudioSet, 16 kHz, 1,024-d embedding) in SoundNet-8's
    # place: a log-mel conv tower, as later work uses, that groups real recordings by
    # what sounds (docs/FINDINGS.md). `soundloc-fetch-weights --what=yamnet`.
    "paper_yamnet": {**_PAPER, "audio_tower": "yamnet", "audio_weights": YAMNET_WEIGHTS,
                     "sample_rate": YAMNET_SAMPLE_RATE,
                     "audio_feature_dim": YAMNET_FEATURE_DIM},
    # A narrow VGG-style tower at 96x96 (12x12 map) and 1 s of 8 kHz audio:
    # semi-supervised training with 10% labels in a few minutes on 2 cores.
    "tiny": {
        "image_size": 96,
        "image_tower": "tiny_vgg",
        "tiny_image_widths": (8, 16, 32, 64),
        "image_weights": "none",
        "freeze_image_tower": False,
        "sample_rate": 8000,
        "clip_seconds": 1.0,
        "n_fft": 256,
        "hop_length": 128,
        "n_mels": 32,
        "audio_widths": (16, 32, 64),
        "audio_feature_dim": 128,
        "sound_hidden_dim": 128,
        "visual_hidden_dim": 64,
        "attention_temperature": 0.2,
        "attention_relu": False,
        "unsupervised_loss": "infonce",
        "label_fraction": 0.1,
        "learning_rate": 1e-3,
        "lr_schedule": "cosine",
        "batch_size": 32,
        "train_steps": 800,
        "num_classes": 6,
        "min_object_size": 0.25,
        "max_object_size": 0.4,
        "eval_every": 400,
        "checkpoint_every": 200,
        "log_every": 25,
    },
}


def get_config(preset: str = "paper", **overrides: Any) -> Config:
    """Returns the named preset with `overrides` applied (and validated)."""
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown preset; expected one of {sorted(PRESETS)}. Received: preset={preset!r}"
        )
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise ValueError(f"Unknown config field(s). Received: {unknown}")
    return Config(**{**PRESETS[preset], **overrides})


def _require(condition: bool, message: str, **received: Any) -> None:
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
    _validate_numbers(c)
    _require(c.image_tower in IMAGE_TOWERS, f"image_tower must be one of {IMAGE_TOWERS}",
             image_tower=c.image_tower)
    _require(c.image_tower_precision in TOWER_PRECISIONS,
             f"image_tower_precision must be one of {TOWER_PRECISIONS}",
             image_tower_precision=c.image_tower_precision)
    _require(c.audio_tower in AUDIO_TOWERS, f"audio_tower must be one of {AUDIO_TOWERS}",
             audio_tower=c.audio_tower)
    _require(c.unsupervised_loss in UNSUPERVISED_LOSSES,
             f"unsupervised_loss must be one of {UNSUPERVISED_LOSSES}",
             unsupervised_loss=c.unsupervised_loss)
    _require(c.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}",
             optimizer=c.optimizer)
    _require(c.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}",
             lr_schedule=c.lr_schedule)
    _require(len(c.tiny_image_widths) >= 1 and all(w > 0 for w in c.tiny_image_widths),
             "tiny_image_widths must be positive", tiny_image_widths=c.tiny_image_widths)
    _require(len(c.audio_widths) >= 1 and all(w > 0 for w in c.audio_widths),
             "audio_widths must be positive", audio_widths=c.audio_widths)
    _require(c.image_size >= c.image_downsampling and c.image_size % c.image_downsampling == 0,
             f"image_size must be a positive multiple of {c.image_downsampling} for this tower",
             image_size=c.image_size)
    _require(c.image_size <= 1024, "image_size must be at most 1024", image_size=c.image_size)
    _require(8000 <= c.sample_rate <= 96000, "sample_rate must lie in [8000, 96000] Hz",
             sample_rate=c.sample_rate)
    _require(0 < c.clip_seconds <= 60, "clip_seconds must lie in (0, 60]",
             clip_seconds=c.clip_seconds)
    _require(c.n_fft >= 16 and c.n_fft & (c.n_fft - 1) == 0, "n_fft must be a power of two >= 16",
             n_fft=c.n_fft)
    _require(0 < c.hop_length <= c.n_fft, "hop_length must lie in (0, n_fft]",
             hop_length=c.hop_length, n_fft=c.n_fft)
    _require(c.num_samples >= c.n_fft, "a clip must hold at least one FFT window",
             clip_seconds=c.clip_seconds, n_fft=c.n_fft)
    _require(c.n_mels > 0, "n_mels must be positive", n_mels=c.n_mels)
    _require(0 <= c.fmin < c.effective_fmax <= c.sample_rate / 2,
             "need 0 <= fmin < fmax <= sample_rate / 2", fmin=c.fmin, fmax=c.fmax)
    for name in ("audio_feature_dim", "sound_hidden_dim", "visual_hidden_dim"):
        _require(getattr(c, name) > 0, f"{name} must be positive", **{name: getattr(c, name)})
    _require(c.attention_temperature > 0 and math.isfinite(c.attention_temperature),
             "attention_temperature must be a positive number",
             attention_temperature=c.attention_temperature)
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
    _require(c.learning_rate > 0 and math.isfinite(c.learning_rate),
             "learning_rate must be a positive number", learning_rate=c.learning_rate)
    _require(0 <= c.momentum < 1, "momentum must lie in [0, 1)", momentum=c.momentum)
    _require(c.batch_size >= 2, "batch_size must be >= 2 (negatives come from the batch)",
             batch_size=c.batch_size)
    _require(c.train_steps >= 1, "train_steps must be >= 1", train_steps=c.train_steps)
    _require(c.num_classes >= 2, "num_classes must be >= 2", num_classes=c.num_classes)
    _require(1 <= c.min_objects <= c.max_objects <= min(c.num_classes, 8),
             "need 1 <= min_objects <= max_objects <= min(num_classes, 8)",
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
    _require(c.eval_size >= 8, "eval_size must be >= 8", eval_size=c.eval_size)
    _require(0.0 < c.ciou_threshold < 1.0, "ciou_threshold must lie in (0, 1)",
             ciou_threshold=c.ciou_threshold)
    for name in ("num_eval_samples", "log_every", "eval_every", "checkpoint_every",
                 "max_checkpoints"):
        _require(getattr(c, name) >= 1, f"{name} must be >= 1", **{name: getattr(c, name)})
    _require(c.num_summary_images >= 0, "num_summary_images must be >= 0",
             num_summary_images=c.num_summary_images)
    _require(c.audio_weights == "none" or c.audio_tower in PRETRAINED_AUDIO_TOWERS,
             f"audio_weights apply only to audio_tower in {tuple(PRETRAINED_AUDIO_TOWERS)}",
             audio_weights=c.audio_weights, audio_tower=c.audio_tower)
    features = (DEFAULT_AUDIO_FEATURE, *AUDIO_FEATURES[c.audio_tower])
    _require(c.audio_feature in features,
             f"audio_tower={c.audio_tower!r} gives audio_feature in {features}",
             audio_feature=c.audio_feature)
    if c.audio_tower in PRETRAINED_AUDIO_TOWERS:
        rate, shortest, _ = PRETRAINED_AUDIO_TOWERS[c.audio_tower]
        width = AUDIO_FEATURES[c.audio_tower][c.resolved_audio_feature]
        _require(c.sample_rate == rate,
                 f"audio_tower={c.audio_tower!r} needs sample_rate={rate}",
                 sample_rate=c.sample_rate)
        _require(c.num_samples >= shortest,
                 f"audio_tower={c.audio_tower!r} needs clips of at least {shortest} "
                 f"samples ({shortest / rate:.2f} s)", clip_seconds=c.clip_seconds)
        _require(c.audio_feature_dim == width,
                 f"audio_tower={c.audio_tower!r} gives {width}-d features with "
                 f"audio_feature={c.resolved_audio_feature!r}",
                 audio_feature_dim=c.audio_feature_dim, audio_feature=c.audio_feature)
    _require(not c.cache_features or (c.freeze_image_tower and c.freeze_audio_tower),
             "cache_features needs both towers frozen",
             cache_features=c.cache_features, freeze_image_tower=c.freeze_image_tower,
             freeze_audio_tower=c.freeze_audio_tower)
    _require(c.image_weights == "none" or c.image_tower == "vgg16",
             "pretrained image_weights apply only to image_tower='vgg16'",
             image_weights=c.image_weights, image_tower=c.image_tower)
