"""Real photos, validated so that it does not flatter: mosaics within one category.

  python -m tools.experiment --name=within_category --output_dir=results/within_category \
      [--photos=DIR[,DIR...]] [--runs=KEY,...] [--quick]

Mosaics that mix music and animal tiles are solved by the pretrained towers alone (they
already tell music from animals), so they say little about whether the map follows the
sound. Here every validation mosaic holds four photos of one category (four animals of
distinct sound groups; four instruments), none of them, nor the recording played, ever in
training. Per fold (`instance_folds`, leave-photos-and-recordings-out):

  training    composites of ../shared/realsets/stamps, 2x2 mosaics and single photos of
              the photos and recordings the fold does not hold out; one sound group per
              fold is left out of training entirely (photos, cut-outs and recordings):
              the leave-class-out row
  validation  2x2 mosaics of the fold's held-out photos, one category each, with a
              held-out recording of one tile (pointing: the peak in that tile, chance
              0.25), and the same mosaic with another tile's recording (mismatched: how
              often the peak stays on the first tile); the gap is their difference, the
              map's dependence on the sound

Every number is reported per category, pooled over folds per seed, as the mean and the
population sd over model seeds (`MODEL_SEEDS`), with the per-class pointing and its
minimum. Mosaics whose sounding class was left out of training are scored in their own row.
Cost on 2 cores at full scale: a feature cache of 700 scenes per fold (6-9 min), the
validation towers per fold (1-2 min), 1,000 cached steps per run (1-3 min).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Any, Callable, Iterable

import numpy as np

from soundloc_tf.config import YAMNET_NUM_CLASSES

PRESET = "paper_yamnet"
FOLDS = 3
GRID = 2
# The photo sets' recordings' rate; the reader resamples to the audio tower's.
SAMPLE_RATE = 16000
# The training image side of the paper's VGG16 (records are written at it).
IMAGE_SIZE = 320
# Training scenes per fold and source, and validation mosaics per fold and category.
COUNTS: dict[str, dict[str, int]] = {
    "quick": {"composites": 12, "mosaics": 12, "photos": 4, "validation": 8},
    "full": {"composites": 300, "mosaics": 300, "photos": 100, "validation": 60},
}
SCALES: dict[str, dict[str, Any]] = {
    "quick": {"image_size": 64, "clip_seconds": 10.0, "train_steps": 10, "batch_size": 8,
              "log_every": 5, "checkpoint_every": 10, "eval_every": 10,
              "num_summary_images": 0},
    "full": {"train_steps": 1000, "log_every": 100,
             "checkpoint_every": 500, "eval_every": 1000, "num_summary_images": 0},
}
# Data seeds: the training scenes and the validation mosaics; model seeds: initialisation
# and data order of each run.
DATA_SEEDS = {"train": 0, "validation": 1}
MODEL_SEEDS = {"quick": (0,), "full": (0, 1, 2)}
# Recordings never used: `realsets/stamps/sounds/duck__0.wav` may be a speed-shifted copy of
# reserved evaluation material (../shared/realsets/CLEARED.md).
EXCLUDED_SOURCES = ("usr/share/tuxpaint/stamps/animals/birds/duck.ogg",)
# Which category each class of ../shared/realsets belongs to; a photo set's manifest may
# name its own classes' categories (`categories`: class -> category).
CATEGORIES: dict[str, str] = {
    **{name: "animals" for name in (
        "bear", "bison", "blackbird", "cat", "cow", "crow", "cuckoo", "dog", "duck", "fox",
        "frog", "goat", "goose", "gorilla", "hen", "horse", "lark", "lion", "monkey", "owl",
        "pig", "rooster", "sheep", "tiger", "turkey", "whale")},
    **{name: "music" for name in (
        "cello", "cymbal", "didgeridoo", "drum_kit", "floor_tom", "folk_band", "hand_drum",
        "mariachi", "orchestra", "rock_band", "taiko", "violin")},
    **{name: "vehicles" for name in (
        "airplane", "bus", "car", "helicopter", "motorcycle", "train", "truck")},
    "people": "people",
    **{name: "other" for name in ("hand_saw", "toilet")},
}
FINAL_RUN = "recommended"
# The Trainer's own validation (TensorBoard): the first held-out mosaics of a fold.
VALIDATION_DURING_TRAINING = 8
# How a run's training mosaics and composites are drawn: "mixed", of any categories (a
# music tile beside an animal tile: the towers alone tell them apart); "within", every
# mosaic's tiles and every composite's cut-outs of one category, as the validation is.
SCENES = ("mixed", "within")
_CHOSEN = {"unsupervised_loss": "infonce", "attention_relu": False, "label_fraction": 1.0}


@dataclasses.dataclass(frozen=True)
class Run:
    """One row: config fields over the preset, which training scenes are labelled
    ("composed": composites and mosaics, whose boxes come from composing them; "all": the
    whole photos too, with the boxes drawn on them by eye), and how the training scenes are
    drawn (`SCENES`)."""

    key: str
    description: str
    overrides: dict
    labels: str = "composed"
    scenes: str = "mixed"


def runs() -> list[Run]:
    """The rows: the recommended recipe first, then the one it replaced
    (same_class_negatives), then one change each from that one."""
    return [
        Run("recommended", "paper_yamnet: InfoNCE without same-class negatives, "
            "softmax(cos/1.0), composed boxes",
            {**_CHOSEN, "attention_temperature": 1.0, "infonce_same_class_negatives": False}),
        Run("same_class_negatives", "the same, InfoNCE counting another pair of the sounding "
            "class as a negative (LVS's batch; the recommended recipe until 2026-12-07)",
            {**_CHOSEN, "attention_temperature": 1.0}),
        Run("visual_projection", "the recommended recipe with a learned, identity-initialised "
            "1x1 convolution on the visual map before the attention (EZ-VSL's img_proj)",
            {**_CHOSEN, "attention_temperature": 1.0, "infonce_same_class_negatives": False,
             "visual_projection": True}),
        Run("temperature_0.1", "the same with softmax(cos/0.1)",
            {**_CHOSEN, "attention_temperature": 0.1}),
        Run("supervised_0.1", "the same, its supervised term on softmax(cos/0.1)",
            {**_CHOSEN, "attention_temperature": 1.0, "supervised_temperature": 0.1}),
        Run("photo_boxes", "the supervised term on softmax(cos/0.1), whole photos' drawn boxes "
            "labelled too", {**_CHOSEN, "attention_temperature": 1.0,
                             "supervised_temperature": 0.1}, labels="all"),
        Run("class_probs", "the recommended recipe on YAMNet's 521 AudioSet class scores "
            "(the paper's class-level sound feature) instead of its embedding",
            {**_CHOSEN, "attention_temperature": 1.0, "audio_feature": "class_probs",
             "audio_feature_dim": YAMNET_NUM_CLASSES}),
        Run("unsupervised", "InfoNCE, softmax(cos/1.0), no labels",
            {**_CHOSEN, "attention_temperature": 1.0, "label_fraction": 0.0}),
        Run("within_scenes", "the recommended recipe on training scenes of one category each "
            "(mosaics' tiles, composites' cut-outs)",
            {**_CHOSEN, "attention_temperature": 1.0}, scenes="within"),
        Run("within_supervised_0.1", "the same, its supervised term on softmax(cos/0.1)",
            {**_CHOSEN, "attention_temperature": 1.0, "supervised_temperature": 0.1},
            scenes="within"),
    ]


# ---------------------------------------------------------------------------
# Material and folds.


def load_material(photos_dirs: Iterable[str], log: Callable[[str], None] = print):
    """The photo sets merged into one `importers.PhotoSet` and their classes' categories.

    Files are prefixed by their set's folder name, so two sets may reuse a file name; a
    recording shipped in two sets keeps one source, so holding it out holds out both; a photo
    whose bytes an earlier set already holds is dropped, since a fold that holds out one copy
    would train on the other.
    """
    from soundloc_tf.dataloaders import importers

    photos, sounds, groups, categories = [], [], {}, dict(CATEGORIES)
    seen: set[str] = set()
    for root in photos_dirs:
        report = importers.ImportReport("within_category")
        part = importers.load_photo_set(root, SAMPLE_RATE, report, io.StringIO())
        tag = os.path.basename(os.path.normpath(root))
        with open(os.path.join(root, "manifest.json")) as f:
            categories.update({str(k): str(v) for k, v in
                               (json.load(f).get("categories") or {}).items()})
        copies = 0
        for photo in part.photos:
            with open(os.path.join(root, photo["file"]), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            copies += digest in seen
            if digest not in seen:
                photos.append({**photo, "file": f"{tag}/{photo['file']}"})
            seen.add(digest)
        sounds += [{**s, "file": f"{tag}/{s['file']}"} for s in part.sounds
                   if s["source"] not in EXCLUDED_SOURCES]
        groups.update(part.groups)
        log(f"{root}: {len(part.photos)} photos ({copies} already in an earlier set, "
            f"dropped), {len(part.sounds)} recordings, {len(part.groups)} classes")
    unknown = sorted({p["class"] for p in photos} - set(categories))
    if unknown:
        raise ValueError(f"classes without a category (add them to within_category.CATEGORIES "
                         f"or to the set's manifest `categories`). Received: {unknown}")
    return importers.PhotoSet(",".join(photos_dirs), groups, photos, sounds), categories


def instance_folds(photo_set, categories: dict[str, str], num_folds: int
                   ) -> list[dict[str, list[str]]]:
    """Leave-photos-and-recordings-out folds, each holding out as many groups of each
    category as it can.

    Every photo is held out in exactly one fold, a class's photos in different folds; a
    class's recordings go to the folds that hold out its photos (round robin), so a held-out
    photo can sound with a recording never heard in training. The fold's left-out group
    (`left_out`), one of its held-out animal groups in turn, is removed from training
    entirely: how the model finds a class it was never shown.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2. Received: num_folds={num_folds}")
    held_photos: list[list[dict]] = [[] for _ in range(num_folds)]
    held_sounds: list[list[dict]] = [[] for _ in range(num_folds)]
    by_class: dict[str, list[dict]] = collections.defaultdict(list)
    for photo in sorted(photo_set.photos, key=lambda p: p["file"]):
        by_class[photo["class"]].append(photo)

    def groups_in(k: int, category: str) -> set[str]:
        return {photo_set.groups[p["class"]] for p in held_photos[k]
                if categories[p["class"]] == category}

    # Classes with the most photos first, so the single-photo classes even out the folds.
    for name in sorted(by_class, key=lambda c: (-len(by_class[c]), categories[c], c)):
        category, group, used = categories[name], photo_set.groups[name], []
        for photo in by_class[name]:
            free = [k for k in range(num_folds) if k not in used] or list(range(num_folds))
            k = min(free, key=lambda k: (group in groups_in(k, category),
                                         len(groups_in(k, category)), len(held_photos[k]), k))
            held_photos[k].append(photo)
            used.append(k)
        recordings = sorted((s for s in photo_set.sounds if s["class"] == name),
                            key=lambda s: s["file"])
        for i, sound in enumerate(recordings):
            held_sounds[used[i % len(used)]].append(sound)
    folds = []
    for k in range(num_folds):
        animal_groups = sorted(groups_in(k, "animals"))
        left_out = animal_groups[k % len(animal_groups)] if animal_groups else ""
        folds.append({
            "photos": sorted(p["file"] for p in held_photos[k]),
            "sounds": sorted(s["file"] for s in held_sounds[k]),
            "sources": sorted({s["source"] for s in held_sounds[k]}),
            "classes": sorted({p["class"] for p in held_photos[k]}),
            "left_out": left_out,
            "left_out_classes": sorted(c for c, g in photo_set.groups.items() if g == left_out)})
    return folds


def training_set(photo_set, stamps, fold: dict):
    """The fold's training photos and recordings, and stamps: nothing it holds out, no
    recording of a held-out source, nothing of its left-out group, no photo whose class has
    no training recording."""
    gone = set(fold["left_out_classes"])
    held = set(fold["photos"]) | set(fold["sounds"])
    sources = set(fold["sources"])
    sounds = [s for s in photo_set.sounds if s["file"] not in held
              and s["source"] not in sources and s["class"] not in gone]
    # A photo trains only with a recording of its class (a mosaic's tile may sound).
    heard = {s["class"] for s in sounds}
    photos = dataclasses.replace(
        photo_set, photos=[p for p in photo_set.photos if p["file"] not in held
                           and p["class"] not in gone and p["class"] in heard],
        sounds=sounds)
    gone |= {c for c, g in stamps.groups.items() if g == fold["left_out"]}
    classes = [c for c in stamps.classes if c not in gone and stamps.sounds.get(c)]
    return photos, dataclasses.replace(stamps, classes=classes)


def fold_records(photo_set, stamps_dir: str, fold: dict, index: int, directory: str,
                 counts: dict[str, int], clip_seconds: float, scenes: str,
                 categories: dict[str, str], log: Callable[[str], None]) -> str:
    """The fold's training records (composites, mosaics, photos), written once per way of
    drawing them (`SCENES`).

    Every scene is written labelled; a run whose `labels` is "composed" unlabels the
    whole photos as it reads them (`photo_eval.composed_labels`), so the recommended
    recipe trains on no hand-drawn box.
    """
    from soundloc_tf.dataloaders import importers, records

    if os.path.exists(os.path.join(directory, records.MANIFEST)):
        return directory
    num_samples = int(round(SAMPLE_RATE * clip_seconds))
    report = importers.ImportReport("within_category")
    stamps = importers.load_stamps(stamps_dir, SAMPLE_RATE, report, io.StringIO(),
                                   exclude_sources=[*fold["sources"], *EXCLUDED_SOURCES])
    photos, stamps = training_set(photo_set, stamps, fold)
    class_ids = {c: i for i, c in enumerate(sorted(set(photo_set.groups) | set(stamps.classes)))}
    seed = DATA_SEEDS["train"]
    within = categories if scenes == "within" else None

    def samples():
        for i in range(counts["composites"]):
            scene = importers.compose_scene(stamps, np.random.default_rng([seed, i]),
                                            IMAGE_SIZE, num_samples, categories=within)
            yield {"image": records.encode_image(scene["image"], "jpeg"),
                   "waveform": scene["waveform"], "sample_rate": SAMPLE_RATE,
                   "boxes": [[scene["box"]]], "labeled": True,
                   "class_id": class_ids[scene["class"]], "id": f"composite/{seed}/{i}"}
        for i in range(counts["mosaics"]):
            scene = importers.compose_mosaic(photos, np.random.default_rng([seed, 1, i]),
                                             IMAGE_SIZE, num_samples, GRID, augment=True,
                                             categories=within)
            yield {"image": records.encode_image(scene["image"], "jpeg"),
                   "waveform": scene["waveform"], "sample_rate": SAMPLE_RATE,
                   "boxes": [[scene["box"]]], "labeled": True,
                   "class_id": class_ids[scene["classes"][scene["sounding"]]],
                   "id": f"mosaics/{seed}/{i}"}
        for i in range(counts["photos"]):
            scene = importers.compose_photo(photos, np.random.default_rng([seed, 2, i]),
                                            IMAGE_SIZE, num_samples, i, augment=True)
            yield {"image": records.encode_image(scene["image"], "jpeg"),
                   "waveform": scene["waveform"], "sample_rate": SAMPLE_RATE,
                   "boxes": [scene["boxes"]], "labeled": True,
                   "class_id": class_ids[scene["class"]], "id": f"photos/{seed}/{i}"}

    log(f"fold {index}: writing {scenes} training records (held out: "
        f"{', '.join(fold['classes'])}; left out: {fold['left_out'] or 'none'})")
    records.write_records(samples(), directory, sample_rate=SAMPLE_RATE,
                          clip_seconds=clip_seconds, source="within_category",
                          extra={"fold": index, "held_out": fold, "scenes": scenes,
                                 "stamps_classes": stamps.classes,
                                 "photo_classes": sorted({p["class"] for p in photos.photos}
                                                         & {s["class"] for s in photos.sounds})})
    return directory


# ---------------------------------------------------------------------------
# Validation mosaics.


@dataclasses.dataclass
class Mosaics:
    """One fold's validation mosaics of one category, as a client would send them."""

    category: str
    images: list[bytes]  # JPEG
    matched: list[bytes]  # WAV of a held-out recording of the sounding tile
    mismatched: list[bytes]  # WAV of a held-out recording of the partner tile
    classes: list[list[str]]  # the tiles' classes, row-major
    sounding: list[int]
    partners: list[int]


def category_mosaics(photo_set, fold: dict, category: str, categories: dict[str, str],
                     count: int, clip_seconds: float, seed: int) -> Mosaics | None:
    """`count` unaugmented mosaics of the fold's held-out photos of one category (tiles of
    distinct groups), or None when the fold holds out fewer groups than tiles."""
    from soundloc_tf.dataloaders import importers, records
    from soundloc_tf.experiments.photo_eval import wav_bytes

    tiles = GRID * GRID
    held = [p for p in photo_set.photos if p["file"] in set(fold["photos"])
            and categories[p["class"]] == category]
    recordings: dict[str, list[dict]] = collections.defaultdict(list)
    for sound in photo_set.sounds:
        if sound["file"] in set(fold["sounds"]):
            recordings[sound["class"]].append(sound)
    by_group: dict[str, list[dict]] = collections.defaultdict(list)
    for photo in held:
        by_group[photo_set.groups[photo["class"]]].append(photo)
    names = sorted(by_group)
    heard = [g for g in names if any(recordings[p["class"]] for p in by_group[g])]
    if len(names) < tiles or len(heard) < 2:
        return None
    num_samples = int(round(SAMPLE_RATE * clip_seconds))
    side = IMAGE_SIZE // GRID
    out = Mosaics(category, [], [], [], [], [], [])
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        # Two tiles that can sound (a held-out recording of their class), then the rest.
        first = list(rng.choice(heard, size=2, replace=False))
        rest = [g for g in names if g not in first]
        chosen_groups = first + list(rng.choice(rest, size=tiles - 2, replace=False))
        order = rng.permutation(tiles)
        photos = [None] * tiles
        for slot, group in zip(order, chosen_groups):
            options = by_group[group]
            if group in first:
                options = [p for p in options if recordings[p["class"]]]
            photos[slot] = options[rng.integers(len(options))]
        canvas = np.zeros([side * GRID, side * GRID, 3], np.uint8)
        for t, photo in enumerate(photos):
            row, col = divmod(t, GRID)
            canvas[row * side:(row + 1) * side, col * side:(col + 1) * side], _ = \
                importers.square_photo(photo["image"], photo["boxes"], side, None)
        sounding, partner = int(order[0]), int(order[1])

        def sound_of(tile: int) -> bytes:
            options = recordings[photos[tile]["class"]]
            wave = importers.loop_to(options[rng.integers(len(options))]["waveform"],
                                     num_samples)
            return wav_bytes(wave, SAMPLE_RATE)

        out.images.append(records.encode_image(canvas, "jpeg"))
        out.matched.append(sound_of(sounding))
        out.mismatched.append(sound_of(partner))
        out.classes.append([p["class"] for p in photos])
        out.sounding.append(sounding)
        out.partners.append(partner)
    return out


def peak_tiles(maps: np.ndarray) -> np.ndarray:
    """The mosaic tile (row-major) of each map's peak."""
    n, height, width = maps.shape
    peak = maps.reshape(n, -1).argmax(axis=1)
    return (peak // width) * GRID // height * GRID + (peak % width) * GRID // width


def score(maps: np.ndarray, mismatched_maps: np.ndarray, mosaics: Mosaics,
          left_out: set[str]) -> dict[str, Any]:
    """Per mosaic: does the peak land on the sounding tile, with its sound and with the
    partner's; split by whether the sounding class was left out of training."""
    hit = peak_tiles(maps) == np.array(mosaics.sounding)
    stays = peak_tiles(mismatched_maps) == np.array(mosaics.sounding)
    out: dict[str, Any] = {}
    for part, wanted in (("seen", False), ("left_out", True)):
        rows = [i for i, tiles in enumerate(mosaics.classes)
                if (tiles[mosaics.sounding[i]] in left_out) == wanted]
        by_class: dict[str, list[int]] = {}
        for i in rows:
            counts = by_class.setdefault(mosaics.classes[i][mosaics.sounding[i]], [0, 0])
            counts[0] += int(hit[i])
            counts[1] += 1
        out[part] = {"hits": int(hit[rows].sum()) if rows else 0,
                     "mismatched_hits": int(stays[rows].sum()) if rows else 0,
                     "n": len(rows), "by_class": dict(sorted(by_class.items()))}
    return out


# ---------------------------------------------------------------------------
# Pooling and the table.


def pooled(folds: Iterable[dict], category: str, part: str) -> dict[str, Any] | None:
    """One seed's folds together: pointing, mismatched pointing, gap, per-class pointing."""
    cells = [f[category][part] for f in folds if category in f]
    n = sum(c["n"] for c in cells)
    if not n:
        return None
    by_class: dict[str, list[int]] = {}
    for cell in cells:
        for name, (hits, count) in cell["by_class"].items():
            total = by_class.setdefault(name, [0, 0])
            total[0] += hits
            total[1] += count
    pointing = sum(c["hits"] for c in cells) / n
    mismatched = sum(c["mismatched_hits"] for c in cells) / n
    classes = {name: hits / count for name, (hits, count) in sorted(by_class.items())}
    return {"pointing": pointing, "mismatched": mismatched, "gap": pointing - mismatched,
            "by_class": classes, "class_min": min(classes.values()), "n": n}


def over_seeds(per_seed: list[dict]) -> dict[str, Any]:
    """Mean and population sd (numpy's default, ddof=0) over seeds of each pooled metric."""
    out: dict[str, Any] = {"seeds": len(per_seed), "n": per_seed[0]["n"]}
    for metric in ("pointing", "mismatched", "gap", "class_min"):
        values = np.array([p[metric] for p in per_seed])
        out[metric], out[metric + "_sd"] = float(values.mean()), float(values.std())
    names = sorted({c for p in per_seed for c in p["by_class"]})
    out["by_class"] = {c: float(np.mean([p["by_class"][c] for p in per_seed
                                         if c in p["by_class"]])) for c in names}
    return out


def summarise(results: dict, num_folds: int) -> dict[str, Any]:
    """Per run, category and part ("seen", "left_out", "served"): the mean ± sd over the
    seeds whose folds are all done."""
    table: dict[str, Any] = {}
    for key, run in results.items():
        for category in sorted({c for folds in run["seeds"].values() for f in folds.values()
                                for c in f if c not in ("served", "machine")}):
            for part in ("seen", "left_out"):
                per_seed = [p for folds in run["seeds"].values() if len(folds) == num_folds
                            and (p := pooled(folds.values(), category, part))]
                if per_seed:
                    table.setdefault(key, {}).setdefault(category, {})[part] = \
                        over_seeds(per_seed)
            served = [p for folds in run["seeds"].values() if len(folds) == num_folds
                      and all("served" in f for f in folds.values())
                      and (p := pooled([f["served"] for f in folds.values()], category,
                                       "seen"))]
            if served:
                table[key][category]["served"] = over_seeds(served)
    return table


def _cell(row: dict, metric: str, signed: bool = False) -> str:
    value = f"{row[metric]:+.3f}" if signed else f"{row[metric]:.3f}"
    return value + (f" ± {row[metric + '_sd']:.3f}" if row["seeds"] > 1 else "")


PART_NAMES = {"seen": "held-out photos and recordings",
              "left_out": "leave-class-out (no training pair of the class or its group)",
              "served": "exported, `serving_default`, JPEG + WAV bytes"}


def markdown(summary: dict) -> str:
    """The tables: one row per run, category and part; then the per-class pointing."""
    lines = ["Mean ± sd (population, ddof=0) over model seeds; each seed pools its folds' "
             "mosaics. Chance pointing 0.25.", "",
             "| run | category | validation | pointing | mismatched | gap | min class | "
             "mosaics x seeds |", "|---|---|---|---|---|---|---|---|"]
    for key, categories in summary["table"].items():
        for category, parts in categories.items():
            for part, row in parts.items():
                lines.append(f"| {key} | {category} | {PART_NAMES[part]} | "
                             f"{_cell(row, 'pointing')} | {_cell(row, 'mismatched')} | "
                             f"{_cell(row, 'gap', signed=True)} | {_cell(row, 'class_min')} | "
                             f"{row['n']} x {row['seeds']} |")
    for key, categories in summary["table"].items():
        for category, parts in categories.items():
            row = parts.get("seen")
            if not row:
                continue
            names = list(row["by_class"])
            lines += ["", f"{key}, {category}: pointing by sounding class (mean over seeds)",
                      "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
                      "| " + " | ".join(f"{row['by_class'][c]:.2f}" for c in names) + " |"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The experiment.


def scene_folder(run: Run, fold: int) -> str:
    """Where a fold's training records and feature caches for `run.scenes` live (the mixed
    scenes keep the folder they had before there was a choice, so old work resumes)."""
    return f"fold{fold}" if run.scenes == "mixed" else f"fold{fold}_{run.scenes}"


def cache_key(config) -> str:
    """The frozen towers' outputs a run trains on: runs that agree share a feature cache."""
    return "_".join(str(getattr(config, field)) for field in (
        "image_weights", "audio_tower", "audio_feature", "image_size", "clip_seconds"))


def trainer_validation(arrays: tuple, mosaics: Mosaics, fold: int):
    """The first held-out mosaics with their sounds and sounding tiles, for the Trainer's
    TensorBoard."""
    import tensorflow as tf

    from soundloc_tf.dataloaders import data

    images, matched, _ = arrays
    k = min(VALIDATION_DURING_TRAINING, len(images))
    boxes = np.zeros([k, data.MAX_ANNOTATORS, data.MAX_BOXES, 4], np.float32)
    for i in range(k):
        row, col = divmod(mosaics.sounding[i], GRID)
        boxes[i, 0, 0] = [col / GRID, row / GRID, (col + 1) / GRID, (row + 1) / GRID]
    return tf.data.Dataset.from_tensor_slices({
        "image": images[:k], "waveform": matched[:k], "boxes": boxes,
        "labeled": np.ones([k], bool), "class_id": np.full([k], -1, np.int32),
        "id": [f"validation/fold{fold}/{i}" for i in range(k)]})


def _check_material(photos_dirs: list[str], stamps_dir: str) -> None:
    """Fails in seconds when a photo set or the stamps have no manifest.json.

    Args:
      photos_dirs: the photo sets.
      stamps_dir: the cut-outs, recordings and backgrounds.
    """
    for path in [*photos_dirs, stamps_dir]:
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            raise ValueError(f"within_category needs real material with a manifest.json "
                             f"(../shared/realsets). Received: {path!r}")


class _Validation:
    """The folds' validation, made once and shared by every run: the mosaics per fold and
    category, those decoded at a run's towers' rate and the towers' outputs on them (keyed
    by `cache_key`: runs with the same frozen towers share them).

    Args:
      photo_set: the loaded photos and recordings.
      categories: class -> category.
      count: mosaics per fold and category.
      log: where progress lines go.
    """

    def __init__(self, photo_set, categories: dict[str, str], count: int,
                 log: Callable[[str], None]):
        self.photo_set, self.categories, self.count, self.log = (photo_set, categories, count,
                                                                 log)
        self._mosaics: dict[int, list[Mosaics]] = {}
        # (fold, category, cache_key): the mosaics decoded, the towers' outputs.
        self._arrays: dict[tuple[int, str, str], tuple] = {}
        self._towers: dict[tuple[int, str, str], Any] = {}

    def mosaics(self, index: int, fold: dict, clip_seconds: float) -> list[Mosaics]:
        """The fold's mosaics, one `Mosaics` per category that has enough groups.

        Args:
          index: the fold's index.
          fold: the fold (`instance_folds`).
          clip_seconds: the clips' length.
        """
        if index not in self._mosaics:
            self._mosaics[index] = [
                m for c in sorted(set(self.categories.values()))
                if (m := category_mosaics(self.photo_set, fold, c, self.categories, self.count,
                                          clip_seconds, DATA_SEEDS["validation"] + index))]
            self.log(f"fold {index}: validation " + ", ".join(
                f"{m.category} {len(m.images)}" for m in self._mosaics[index]))
        return self._mosaics[index]

    def arrays(self, index: int, mosaics: Mosaics, config) -> tuple:
        """(images, matched, mismatched) of one category's mosaics at the config's rate.

        Args:
          index: the fold's index.
          mosaics: one category's mosaics of that fold.
          config: the run's config.
        """
        from soundloc_tf.experiments import photo_eval

        key = (index, mosaics.category, cache_key(config))
        if key not in self._arrays:
            self._arrays[key] = photo_eval.decoded(mosaics.images, mosaics.matched,
                                                   mosaics.mismatched, config)
        return self._arrays[key]

    def towers(self, index: int, mosaics: Mosaics, config, model):
        """The frozen towers' outputs on one category's mosaics (`photo_eval.tower_outputs`).

        Args:
          index: the fold's index.
          mosaics: one category's mosaics of that fold.
          config: the run's config.
          model: a trained model with the config's towers.
        """
        from soundloc_tf.experiments import photo_eval

        key = (index, mosaics.category, cache_key(config))
        if key not in self._towers:
            self._towers[key] = photo_eval.tower_outputs(
                model, *self.arrays(index, mosaics, config))
        return self._towers[key]


def _train(run: Run, config, index: int, train_dir: str, output_dir: str, strategy,
           validation: _Validation, mosaics: Mosaics, log: Callable[[str], None], tag: str):
    """Trains one run of one fold on the fold's feature cache (made when missing).

    Args:
      run: the row.
      config: the run's config (its recipe and model seed).
      index: the fold's index.
      train_dir: the fold's training records.
      output_dir: the experiment's directory (runs/ and feature_cache/ under it).
      strategy: the distribution strategy.
      validation: the folds' shared validation.
      mosaics: the mosaics the Trainer validates on (`trainer_validation`).
      log: where progress lines go.
      tag: the fold, run and seed, before the Trainer's lines.

    Returns:
      (the trained model, its run directory).
    """
    import keras

    from soundloc_tf.dataloaders import records
    from soundloc_tf.experiments import photo_eval
    from soundloc_tf.train import feature_cache
    from soundloc_tf.train.training import Trainer

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.train_seed)
    run_dir = os.path.join(output_dir, "runs", f"fold{index}",
                           f"{run.key}_seed{config.train_seed}")
    trainer = Trainer(config, run_dir, strategy,
                      validation=trainer_validation(validation.arrays(index, mosaics, config),
                                                    mosaics, index),
                      log=lambda m: log(f"{tag} {m}"))
    cache_dir = os.path.join(output_dir, "feature_cache", scene_folder(run, index),
                             cache_key(config))
    source = records.read_records(config, train_dir, training=False, verify=False)
    manifest = feature_cache.ensure_cache(trainer.model, config, source, cache_dir, log=log)
    dataset_fn = feature_cache.cache_dataset_fn(
        config, cache_dir, in_memory=feature_cache.fits_in_memory(manifest))
    trainer.use_feature_cache(photo_eval.composed_labels(dataset_fn)
                              if run.labels == "composed" else dataset_fn)
    trainer.train()
    return trainer.model, run_dir


def _fold_result(model, config, index: int, fold: dict, validation: _Validation,
                 mosaics: list[Mosaics], machine: str, export_dir: str | None) -> dict:
    """Scores a trained model on the fold's mosaics per category; with `export_dir`, also
    the exported SavedModel's `serving_default` on the same bytes ("served").

    Args:
      model: the trained model.
      config: its config.
      index: the fold's index.
      fold: the fold (its left-out classes are scored apart).
      validation: the folds' shared validation.
      mosaics: the fold's mosaics per category.
      machine: the machine, recorded.
      export_dir: where to export the model to serve it; None: not served.
    """
    import tensorflow as tf

    from soundloc_tf.experiments import photo_eval
    from soundloc_tf.inference import export

    result: dict[str, Any] = {"machine": machine}
    left_out = set(fold["left_out_classes"])
    signature = None
    if export_dir is not None:
        path = export.export_model(model, config, export_dir,
                                   extra_info={"experiment": "within_category", "fold": index,
                                               "train_seed": config.train_seed})
        signature = tf.saved_model.load(path).signatures["serving_default"]
    served: dict[str, Any] = {}
    for category in mosaics:
        out = validation.towers(index, category, config, model)
        result[category.category] = score(
            photo_eval.model_maps(model, out.visual, out.matched),
            photo_eval.model_maps(model, out.visual, out.mismatched), category, left_out)
        if signature is not None:
            served[category.category] = score(
                photo_eval.serving_maps(signature, category.images, category.matched),
                photo_eval.serving_maps(signature, category.images, category.mismatched),
                category, left_out)
    if signature is not None:
        result["served"] = served
    return result


def _write(output_dir: str, header: dict, started: float, environment: dict,
           results: dict) -> dict:
    """Writes within_category.json and .md; returns the summary.

    Args:
      output_dir: the experiment's directory.
      header: the summary's fields before its time (schema ... final_run).
      started: `time.perf_counter()` at the start, less the time a resumed run spent.
      environment: `provenance.environment()`.
      results: the runs' results.
    """
    from soundloc_tf.experiments import photo_eval

    summary = {**header, "seconds": round(time.perf_counter() - started, 1),
               "environment": environment, "runs": results}
    summary["table"] = summarise(results, FOLDS)
    summary["markdown"] = markdown(summary)
    photo_eval.write_summary(output_dir, "within_category", summary, summary["markdown"])
    return summary


def run_within_category(base_config, output_dir: str, scale: str, photos_dirs: list[str],
                        stamps_dir: str, strategy, environment: dict, command: str,
                        runs_filter: list[str] | None = None,
                        seeds: list[int] | None = None,
                        log: Callable[[str], None] = print) -> dict:
    """Every fold of every run (resumable: finished folds are kept), the served check of
    FINAL_RUN at the scale's first model seed, and the summary JSON and markdown.

    Args:
      base_config: the preset with the scale's and the command line's fields.
      output_dir: where the records, caches, runs and within_category.json/.md go; a
        summary already there is resumed (finished folds kept, the commands joined).
      scale: "quick" or "full" (COUNTS, MODEL_SEEDS).
      photos_dirs: the photo sets (each with a manifest.json).
      stamps_dir: the cut-outs, recordings and backgrounds.
      strategy: the distribution strategy every run shares.
      environment: `provenance.environment()`, recorded.
      command: the command line, recorded.
      runs_filter: only these rows' keys; None: every row.
      seeds: the model seeds; None: the scale's.
      log: where progress lines go.
    """
    from soundloc_tf.experiments import photo_eval

    plan = photo_eval.select_runs(runs(), runs_filter, "within_category")
    _check_material(photos_dirs, stamps_dir)
    counts, seeds = COUNTS[scale], list(seeds or MODEL_SEEDS[scale])
    photo_set, categories = load_material(photos_dirs, log)
    folds = instance_folds(photo_set, categories, FOLDS)
    # A resumed experiment names every command that added to it, and all its model seeds.
    previous, command = photo_eval.resumed_summary(
        os.path.join(output_dir, "within_category.json"), command)
    results: dict[str, Any] = previous.get("runs", {})
    started = time.perf_counter() - previous.get("seconds", 0.0)
    seeds_done = sorted({int(s) for run in results.values() for s in run["seeds"]} | set(seeds))
    header = {"schema": "soundloc.experiment/1", "experiment": "within_category",
              "command": command, "description": " ".join(__doc__.split("\n\n")[2].split()),
              "scale": scale, "folds": folds, "counts": counts, "model_seeds": seeds_done,
              "photos": photos_dirs, "final_run": FINAL_RUN}
    validation = _Validation(photo_set, categories, counts["validation"], log)

    for run in plan:
        entry = results.setdefault(run.key, {"description": run.description,
                                             "overrides": run.overrides,
                                             "labels": run.labels, "scenes": run.scenes,
                                             "seeds": {}})
        for seed in seeds:
            for k, fold in enumerate(folds):
                done = entry["seeds"].setdefault(str(seed), {})
                tag = f"[fold {k} {run.key} seed {seed}]"
                if str(k) in done:
                    continue
                config = base_config.replace(**run.overrides, train_seed=seed)
                mosaics = validation.mosaics(k, fold, config.clip_seconds)
                train_dir = fold_records(photo_set, stamps_dir, fold, k,
                                         os.path.join(output_dir, "data", scene_folder(run, k)),
                                         counts, config.clip_seconds, run.scenes, categories,
                                         log)
                for category in mosaics:
                    validation.arrays(k, category, config)
                model, run_dir = _train(run, config, k, train_dir, output_dir, strategy,
                                        validation, mosaics[0], log, tag)
                served = run.key == FINAL_RUN and seed == MODEL_SEEDS[scale][0]
                fold_result = _fold_result(model, config, k, fold, validation, mosaics,
                                           environment.get("machine", "unknown"),
                                           os.path.join(run_dir, "export") if served else None)
                done[str(k)] = fold_result
                log(f"{tag} " + "; ".join(
                    f"{c}: pointing {r['seen']['hits']}/{r['seen']['n']}, mismatched "
                    f"{r['seen']['mismatched_hits']}/{r['seen']['n']}"
                    for c, r in fold_result.items() if c not in ("machine", "served")))
                _write(output_dir, header, started, environment, results)
    return _write(output_dir, header, started, environment, results)
