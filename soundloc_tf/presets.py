"""The named presets: each the fields where it departs from `Config()`'s defaults.

`soundloc_tf.config.get_config(preset, **overrides)` applies one to `Config` and validates
it; `DEFAULT_PRESET` is where both `get_config()` and the command lines start (the rule is
stated in `soundloc_tf.config`'s docstring). A preset's values are part of every run
trained from it: a run directory's config.json holds every field, so editing a preset
changes new runs only, but results in docs/ name presets by their values here.
"""

from __future__ import annotations

from typing import Any

from soundloc_tf import towers

# The paper's towers: ImageNet VGG16 at 320x320 and SoundNet-8 with its converted
# weights (`soundloc-fetch-weights --what=all`), both frozen as in the authors'
# re-implementation, trained from the feature cache. InfoNCE and the softmax over raw
# cosines (no ReLU) were chosen on real photographs (docs/FINDINGS.md, "Deviations").
PAPER: dict[str, Any] = {
    "image_weights": "imagenet",
    "audio_tower": "soundnet8",
    "audio_weights": towers.SOUNDNET8_WEIGHTS,
    "freeze_image_tower": True,
    "freeze_audio_tower": True,
    "cache_features": True,
    "unsupervised_loss": "infonce",
    "attention_temperature": 1.0,
    "attention_relu": False,
}

# The paper preset with YAMNet (AudioSet, 16 kHz, 1,024-d embedding) in SoundNet-8's
# place: a log-mel conv tower, as later work uses, that groups real recordings by what
# sounds (docs/FINDINGS.md). `soundloc-fetch-weights --what=yamnet`.
PAPER_YAMNET: dict[str, Any] = {
    **PAPER,
    "audio_tower": "yamnet",
    "audio_weights": towers.YAMNET_WEIGHTS,
    "sample_rate": towers.YAMNET_SAMPLE_RATE,
    "audio_feature_dim": towers.YAMNET_EMBEDDING_DIM,
}

# A narrow VGG-style tower at 96x96 (12x12 map) and 1 s of 8 kHz audio: semi-supervised
# training with 10% labels in a few minutes on 2 cores.
TINY: dict[str, Any] = {
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
}

PRESETS: dict[str, dict[str, Any]] = {"paper": PAPER, "paper_yamnet": PAPER_YAMNET,
                                      "tiny": TINY}

# Where a configuration starts when no preset is named, in the library and on the command
# lines alike: the preset that trains in minutes on a CPU (the README's first command).
DEFAULT_PRESET = "tiny"
