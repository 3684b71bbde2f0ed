"""Does the model localise sounds in real photographs? Leave-photos-out folds.

  python -m tools.experiment --name=real_photos --output_dir=results/real_photos [--quick]

Needs ../shared/realsets (photos/ and stamps/) and `soundloc-fetch-weights --what=all`.
Cost on 2 cores at full scale, measured per part: a feature cache 12-16 min on AVX2 (1,100
scenes at 1.1-1.5 per s), 8-11 min on AVX-512 (1.7-3.1 per s): one per fold for each loaded
tower set, and per fold and seed for random towers (18 in all); a run of 1,000 cached steps
1-2 min (10 rows x 3 folds x 3 seeds), the validation towers 2-5 min per fold and cache,
serving 3 min per fold: about 6 h in all on AVX2; `--runs` picks rows (each tower set
needs 3 caches). Quick (64x64 images, 10-s clips, 10 steps, one seed) only shows that the
pipeline runs.
"""

from typing import Any

from soundloc_tf.config import PRESETS, SOUNDNET8_WEIGHTS

PRESET = "paper"
DESCRIPTION = (
    "The paper preset, and paper_yamnet (YAMNet in SoundNet-8's place), on real photographs: "
    "leave-photos-out folds of the 15 whole photos of "
    "../shared/realsets/photos (every fold's photos and recordings unseen in its training, "
    "which adds composites of ../shared/realsets/stamps); scored on 2x2 mosaics of the "
    "fold's own photos with one tile's recording (pointing: the peak in that tile, chance "
    "0.25; cIoU against the tile at the fixed threshold 0.5 on the 224x224 heat map), and "
    "with another tile's recording (mismatched). Rows pool the three folds' mosaics; the "
    "bold row queries the exported SavedModel's serving_default with JPEG and WAV bytes.")
FOLDS = 3
GRID = 2
TRAIN_LABELS = 0.1
# Training scenes per fold and source, and validation mosaics per fold.
COUNTS: dict[str, dict[str, int]] = {
    "quick": {"composites": 12, "mosaics": 12, "photos": 4, "validation": 8},
    "full": {"composites": 500, "mosaics": 500, "photos": 100, "validation": 100},
}
SCALES: dict[str, dict[str, Any]] = {
    # Quick clips are 10 s, the shortest that both audio towers take (SoundNet-8: 9.5 s).
    "quick": {"image_size": 64, "clip_seconds": 10.0, "train_steps": 10, "batch_size": 8,
              "log_every": 5, "checkpoint_every": 10, "eval_every": 10,
              "num_summary_images": 0},
    "full": {"train_steps": 1000, "log_every": 100, "checkpoint_every": 500,
             "eval_every": 1000, "num_summary_images": 4},
}
# Seeds of the data: the training scenes and the validation mosaics.
SEEDS = {"train": 0, "validation": 1}
# Each run is trained once per model seed (`train_seed`: initialisation and data order);
# tables give the mean and sd over seeds, as one seed moves a fold's pointing by up to 0.4.
MODEL_SEEDS = {"quick": (0,), "full": (0, 1, 2)}
TOWER_SETS: dict[str, dict[str, Any]] = {
    "random": {"image_weights": "none", "audio_weights": "none"},
    "hed": {"image_weights": "hed", "audio_weights": SOUNDNET8_WEIGHTS},
    "imagenet": {"image_weights": "imagenet", "audio_weights": SOUNDNET8_WEIGHTS},
    # The paper_yamnet preset's towers: YAMNet (AudioSet) in SoundNet-8's place.
    "imagenet_yamnet": {field: PRESETS["paper_yamnet"][field] for field in (
        "image_weights", "audio_tower", "audio_weights", "sample_rate", "audio_feature_dim")},
}
FINAL_RUN = "imagenet_yamnet_composed"  # the recipe the README recommends: exported and served


def rows() -> list[tuple]:
    """(key, tower set, recipe, config fields[, labelled scenes]): first FINAL_RUN, YAMNet
    with the boxes that composing the composites and mosaics gives (no hand-drawn box), and
    YAMNet without labels; then per tower set of the `paper` preset the chosen recipe with
    and without labels; on ImageNet also the composed boxes and the authors'
    re-implementation."""
    chosen = {"unsupervised_loss": "infonce", "attention_temperature": 1.0,
              "attention_relu": False}
    out = [("imagenet_yamnet_composed", "imagenet_yamnet",
            "YAMNet audio tower; InfoNCE, softmax(cos/1.0), the composed scenes' boxes",
            {**chosen, "label_fraction": 1.0}, "composed"),
           ("imagenet_yamnet_unsupervised", "imagenet_yamnet",
            "YAMNet audio tower; InfoNCE, softmax(cos/1.0), no labels",
            {**chosen, "label_fraction": 0.0})]
    for towers in ("imagenet", "hed", "random"):
        out += [(f"{towers}_unsupervised", towers, "InfoNCE, softmax(cos/1.0), no labels",
                 {**chosen, "label_fraction": 0.0}),
                (f"{towers}_semi", towers, "InfoNCE, softmax(cos/1.0), 10% labels",
                 {**chosen, "label_fraction": TRAIN_LABELS})]
        if towers == "imagenet":
            out.append(("imagenet_composed", towers,
                        "InfoNCE, softmax(cos/1.0), the composed scenes' boxes",
                        {**chosen, "label_fraction": 1.0}, "composed"))
            out.append(("imagenet_reimplementation_semi", "imagenet",
                        "triplet, softmax(relu(cos)/1.0): the authors' re-implementation, "
                        "10% labels", {"unsupervised_loss": "triplet",
                                       "attention_temperature": 1.0, "attention_relu": True,
                                       "label_fraction": TRAIN_LABELS}))
    return out
