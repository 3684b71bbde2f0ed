"""The paper preset on composites of real cut-outs, recordings and backgrounds.

  python -m tools.experiment --name=real_material --output_dir=results/real_material [--quick]

Needs ../shared/realsets/stamps and `soundloc-fetch-weights --what=all`. Cost on 2 CPU cores:
about 30 min for --seeds=0 (composites built, one feature cache per tower set, then 4 runs of
1,000 cached steps, 11 min of them; docs/RESULTS.md), each further seed about 11 min more.
Quick only shows that the pipeline runs.
"""

from typing import Any

from soundloc_tf.config import SOUNDNET8_WEIGHTS

PRESET = "paper"
DESCRIPTION = ("Trained and evaluated on composites of real photo cut-outs, real recordings of "
               "the same classes and real backgrounds (the paper preset unless the preset "
               "below says otherwise).")
# Both towers frozen and run once per tower set into a feature cache; every run then trains
# only the localiser.
SCALES: dict[str, dict[str, Any]] = {
    "quick": {"train_steps": 20, "batch_size": 8, "checkpoint_every": 10, "log_every": 5},
    "full": {"train_steps": 1000, "checkpoint_every": 250, "log_every": 100},
}
SEEDS = {"quick": [0], "full": [0, 1, 2]}
# Composite scenes per scale (train, test), audio stored at 16 kHz and looped to the preset's
# clip length (the reader resamples for SoundNet-8); the training split has this share marked
# labelled (the semi-supervised runs'; unsupervised runs ignore it).
COMPOSITES = {"quick": (48, 24), "full": (1500, 250)}
COMPOSITE_SAMPLE_RATE = 16000
TRAIN_LABELS = 0.1
COMPOSITE_SEEDS = (0, 1)  # train, test: disjoint scene streams
# Random initialisation against the pretrained start of the time (HED VGG16, SoundNet-8).
TOWER_SETS: dict[str, dict[str, Any]] = {
    "random": {"image_weights": "none", "audio_tower": "soundnet8", "audio_weights": "none"},
    "pretrained": {"image_weights": "hed", "audio_tower": "soundnet8",
                   "audio_weights": SOUNDNET8_WEIGHTS},
}


def rows() -> list[tuple[str, str, float, dict]]:
    """Random vs pretrained frozen towers, each unsupervised and with 10% labels."""
    frozen = {"freeze_image_tower": True, "freeze_audio_tower": True,
              "unsupervised_loss": "infonce"}
    out = []
    for towers, weights in TOWER_SETS.items():
        out += [(f"{towers}_unsupervised_infonce@0", f"{towers} towers, unsupervised (InfoNCE)",
                 0.0, {**weights, **frozen, "label_fraction": 0.0}),
                (f"{towers}_semi_infonce@{TRAIN_LABELS:g}",
                 f"{towers} towers, semi-supervised (InfoNCE + supervised)", TRAIN_LABELS,
                 {**weights, **frozen, "label_fraction": TRAIN_LABELS})]
    return out
