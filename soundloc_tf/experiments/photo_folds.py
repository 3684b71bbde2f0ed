"""The real-photo experiment: does the paper model localise sounds in real photographs?

  python -m tools.experiment --name=real_photos --output_dir=results/real_photos [--quick]

Data (../shared/realsets): whole real photographs with boxes and real recordings
(`photos/`), and real cut-outs, recordings and backgrounds (`stamps/`). The
photos are split into leave-photos-out folds (`importers.photo_folds`): a
fold's validation photos and recordings never appear in its training data,
not even as a composite's sound (recordings are matched by their source in
the package they came from). Per fold:

  training    composites from the stamps, 2x2 mosaics and single photos of
              the other folds' photos (random crops), 10% marked labelled
  validation  2x2 mosaics of the fold's own photos (four distinct groups),
              the sound of one tile (a held-out recording), the ground truth
              that tile; each mosaic also with the recording of another
              tile (the mismatched sound)

Every run trains the localiser on a feature cache of frozen towers (one cache
per fold and tower set), once per model seed (`MODEL_SEEDS`), and is scored on
the validation mosaics through the model's own maps; tables pool the folds'
mosaics per seed and give the mean ± sd over seeds. The chosen recipe (`FINAL_RUN` of
soundloc_tf/experiments/real_photos.py) is then exported per fold (the first
seed's model: serving repeats the towers on every query, so it costs as much as
the training) and scored again through the SavedModel's `serving_default`
signature with JPEG and WAV bytes, as a client of TF Serving would query it.

Pointing: the peak of the heat map in the sounding tile (chance 0.25). cIoU:
the heat map min-max normalised at 224x224, fixed threshold 0.5 (soundloc's
rule), against the sounding tile; the table's ceiling row scores the sounding
photo's own drawn boxes as the map: what a map that marks exactly the sounding
thing scores against a whole tile. Mismatched: with another tile's recording,
how often the peak stays in the first tile (a map that follows the sound
points there rarely).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Callable

import numpy as np

from soundloc_tf.experiments import real_photos as experiment
from soundloc_tf.experiments.photo_eval import (TowerOutputs, composed_labels, decoded,
                                                model_maps, resumed_summary, select_runs,
                                                serving_maps, tower_outputs, wav_bytes,
                                                write_summary)
from soundloc_tf.experiments.photo_tables import (by_class, fold_results, hits_by_class,
                                                  markdown, object_box_scores,
                                                  pooled_object_boxes, score, summarise)
from soundloc_tf.experiments.results_page import SCHEMA

# The realsets' recordings' rate; the reader resamples to the audio tower's.
PHOTO_SAMPLE_RATE = 16000
VALIDATION_DURING_TRAINING = 8
MOSAIC_SIZE = 320  # the side of the training and validation mosaics, in pixels
OVERLAY_MOSAICS = 3  # per fold, in overlays_fold<k>.png


@dataclasses.dataclass(frozen=True)
class Run:
    """One row: a tower set, a recipe (config fields over the paper preset), and which
    training scenes count as labelled ("records": the flags the import drew; "composed":
    the composed scenes, whose boxes come from composing them, and no whole photo)."""

    key: str
    towers: str
    description: str
    overrides: dict
    labels: str = "records"


def runs() -> list[Run]:
    """The rows of soundloc_tf/experiments/real_photos.py."""
    return [Run(*row) for row in experiment.rows()]


# ---------------------------------------------------------------------------
# Data.


def fold_records(photos_dir: str, stamps_dir: str, directory: str, fold: int,
                 counts: dict[str, int], clip_seconds: float,
                 log: Callable[[str], None]) -> str:
    """The fold's training records (composites + mosaics + photos), written once."""
    from soundloc_tf.dataloaders import importers, records

    if os.path.exists(os.path.join(directory, records.MANIFEST)):
        return directory
    num_samples = int(round(PHOTO_SAMPLE_RATE * clip_seconds))
    report = importers.ImportReport("real_photos")
    photo_set = importers.load_photo_set(photos_dir, PHOTO_SAMPLE_RATE, report)
    held_out = importers.photo_folds(photo_set, experiment.FOLDS)[fold]
    stamps = importers.load_stamps(stamps_dir, PHOTO_SAMPLE_RATE, report,
                                   exclude_sources=held_out["sources"])
    seed = experiment.SEEDS["train"]

    def samples():
        yield from importers.composite_samples(
            stamps_dir, PHOTO_SAMPLE_RATE, num_samples, report, counts["composites"],
            image_size=MOSAIC_SIZE, seed=seed, label_fraction=experiment.TRAIN_LABELS,
            stamps=stamps)
        for fmt in ("mosaics", "photos"):
            yield from importers.photo_samples(
                photos_dir, fmt, PHOTO_SAMPLE_RATE, num_samples, report, counts[fmt],
                image_size=MOSAIC_SIZE, seed=seed, label_fraction=experiment.TRAIN_LABELS,
                folds=experiment.FOLDS, fold=fold, split="train", grid=experiment.GRID,
                photo_set=photo_set)

    log(f"fold {fold}: writing training records (held out: {', '.join(held_out['classes'])})")
    records.write_records(samples(), directory, sample_rate=PHOTO_SAMPLE_RATE,
                          clip_seconds=clip_seconds, source="real_photos",
                          extra=lambda: {"fold": fold, "held_out": held_out,
                                         "import": report.as_dict()})
    return directory


@dataclasses.dataclass
class Validation:
    """A fold's validation mosaics: JPEG bytes, the two sounds as WAV bytes, the boxes."""

    images: list[bytes]
    matched: list[bytes]
    mismatched: list[bytes]
    boxes: np.ndarray  # [N, MAX_ANNOTATORS, MAX_BOXES, 4]: the sounding tile
    classes: list[list[str]]
    sounding: list[int]
    partners: list[int]  # the tile whose recording is the mismatched sound
    # [N, MAX_ANNOTATORS, MAX_BOXES, 4]: the sounding photo's own drawn boxes, in the mosaic
    object_boxes: np.ndarray


def validation_mosaics(photos_dir: str, fold: int, count: int, clip_seconds: float,
                       image_size: int) -> Validation:
    """`count` mosaics of the fold's own photos and recordings, not augmented."""
    from soundloc_tf.dataloaders import data, importers, records

    report = importers.ImportReport("real_photos")
    photo_set = importers.load_photo_set(photos_dir, PHOTO_SAMPLE_RATE, report)
    held = importers.split_photo_set(
        photo_set, importers.photo_folds(photo_set, experiment.FOLDS)[fold], "validation")
    num_samples = int(round(PHOTO_SAMPLE_RATE * clip_seconds))
    sounds_of: dict[str, list[dict]] = {}
    for sound in held.sounds:
        sounds_of.setdefault(sound["class"], []).append(sound)
    shape = [count, data.MAX_ANNOTATORS, data.MAX_BOXES, 4]
    out = Validation([], [], [], np.zeros(shape, np.float32), [], [], [],
                     np.zeros(shape, np.float32))
    boxes_of = {photo["file"]: photo["boxes"] for photo in held.photos}
    for i in range(count):
        rng = np.random.default_rng([experiment.SEEDS["validation"], fold, i])
        mosaic = importers.compose_mosaic(held, rng, image_size, num_samples, experiment.GRID,
                                          augment=False)
        tiles = experiment.GRID * experiment.GRID
        partner = int((mosaic["sounding"] + rng.integers(1, tiles)) % tiles)
        options = sounds_of[mosaic["classes"][partner]]
        other = importers.loop_to(options[rng.integers(len(options))]["waveform"], num_samples)
        out.images.append(records.encode_image(mosaic["image"], "jpeg"))
        out.matched.append(wav_bytes(mosaic["waveform"], PHOTO_SAMPLE_RATE))
        out.mismatched.append(wav_bytes(other, PHOTO_SAMPLE_RATE))
        out.boxes[i, 0, 0] = mosaic["box"]
        # Unaugmented, a tile is its whole photo squeezed: boxes scale with the tile.
        x1, y1, x2, y2 = mosaic["box"]
        for j, b in enumerate(boxes_of[mosaic["photos"][mosaic["sounding"]]][:data.MAX_BOXES]):
            out.object_boxes[i, 0, j] = [x1 + b[0] * (x2 - x1), y1 + b[1] * (y2 - y1),
                                         x1 + b[2] * (x2 - x1), y1 + b[3] * (y2 - y1)]
        out.classes.append(mosaic["classes"])
        out.sounding.append(mosaic["sounding"])
        out.partners.append(partner)
    return out


# ---------------------------------------------------------------------------
# Scoring.


def cache_name(towers: str, seed: int) -> str:
    """The feature cache of a tower set: random towers are drawn from the model seed, so
    each seed has its own; loaded weights are the same at every seed."""
    loaded = all(w != "none" for w in experiment.TOWER_SETS[towers].values())
    return towers if loaded else f"{towers}_seed{seed}"


def write_overlays(path: str, images: np.ndarray, maps: np.ndarray, other_maps: np.ndarray,
                   validation: Validation, fold: int) -> str:
    """Held-out mosaics with the served heat map for their sound and for another tile's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from soundloc_tf import visualize

    rows = len(images)
    figure, axes = plt.subplots(rows, 2, figsize=(6, 3 * rows), squeeze=False)
    for i in range(rows):
        tiles = validation.classes[i]
        for j, (heat, tile) in enumerate(((maps, validation.sounding[i]),
                                          (other_maps, validation.partners[i]))):
            row, col = divmod(tile, experiment.GRID)
            box = [[c / experiment.GRID for c in (col, row, col + 1, row + 1)]]
            shown = visualize.draw_boxes(visualize.overlay(images[i:i + 1], heat[i:i + 1]),
                                         np.array([box], np.float32))
            axes[i, j].imshow(np.clip(shown[0].numpy(), 0, 1))
            axes[i, j].set_title(f"{'sound' if j == 0 else 'mismatched sound'}: "
                                 f"{tiles[tile]}", fontsize=9)
            axes[i, j].axis("off")
    figure.suptitle(f"Held-out photos and recordings (fold {fold}); white: the sounding tile",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------
# The experiment.


def check_inputs(photos_dir: str, stamps_dir: str, towers: set[str]) -> None:
    """Fails in seconds: the real material and the asked-for towers' weights are there."""
    from soundloc_tf.modeling import models

    for name, path in (("photos", photos_dir), ("stamps", stamps_dir)):
        if not os.path.isdir(path):
            raise ValueError(f"real_photos needs the real material (../shared/realsets); pass "
                             f"--{name}. Received: {name}={path!r}")
    needed = sorted({os.path.expanduser(experiment.TOWER_SETS[t]["audio_weights"])
                     for t in towers} - {"none"})
    if "hed" in towers:
        needed.append(models.hed_weights_path())
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing:
        raise ValueError("the pretrained towers' weights are missing; run `"
                         f"soundloc-fetch-weights --what=all` first. Received: {missing}")


def training_pairs(photos_dir: str, stamps_dir: str) -> dict[str, list[str]]:
    """Per validation class, the classes of its sound group that its fold trains with a
    recording of their own (`importers.training_pairs`), all folds together."""
    from soundloc_tf.dataloaders import importers

    report = importers.ImportReport("real_photos")
    quiet = io.StringIO()
    photo_set = importers.load_photo_set(photos_dir, PHOTO_SAMPLE_RATE, report, quiet)
    out: dict[str, list[str]] = {}
    for fold in importers.photo_folds(photo_set, experiment.FOLDS):
        stamps = importers.load_stamps(stamps_dir, PHOTO_SAMPLE_RATE, report, quiet,
                                       exclude_sources=fold["sources"])
        out.update(importers.training_pairs(photo_set, fold, stamps))
    return dict(sorted(out.items()))


def train_run(run: Run, config, fold: int, train_dir: str, output_dir: str, strategy,
              validation_fn: Callable, log: Callable[[str], None]):
    """Trains one run of one fold on the fold's feature cache; returns the trained model
    and its run directory."""
    import keras

    from soundloc_tf.tasks import localization

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.train_seed)
    run_dir = os.path.join(output_dir, "runs", f"fold{fold}",
                           f"{run.key}_seed{config.train_seed}")
    cache_dir = os.path.join(output_dir, "feature_cache", f"fold{fold}",
                             cache_name(run.towers, config.train_seed))
    task = localization.LocalizationTask(
        config, localization.DataConfig(records=train_dir, tower_mode="cached",
                                        feature_cache=cache_dir),
        relabel=composed_labels if run.labels == "composed" else None,
        log=lambda m: log(f"[fold {fold} {run.key}] {m}"))
    trainer = task.build_trainer(run_dir, strategy, validation=validation_fn(config))
    trainer.train()
    return trainer.model, run_dir


def _resumed(summary_path: str, command: str) -> tuple[dict, dict, str]:
    """A summary already at `summary_path` (`photo_eval.resumed_summary`) and its results.

    Each fold records its machine (the same recipe differs between machines); results from
    before that take the machine the summary names.

    Args:
      summary_path: the experiment's real_photos.json (absent: a new experiment).
      command: this command line.

    Returns:
      (the summary, empty when new; its runs' results; the commands to record).
    """
    previous, command = resumed_summary(summary_path, command)
    results = previous.get("runs", {})
    earlier = previous.get("environment", {}).get("machine", "unknown")
    for run_results in results.values():
        for fold_result in fold_results(run_results):
            fold_result.setdefault("machine", earlier)
    return previous, results, command


class _FoldMaterial:
    """What each fold's runs share, made once: the validation mosaics (which the ceiling
    shares too), the training records, the mosaics decoded at an audio tower's rate and the
    towers' outputs on them.

    Args:
      photos_dir, stamps_dir: the real material.
      output_dir: where the training records go (data/fold<k>).
      counts: the scale's counts (experiment.COUNTS).
      base_config: the experiment's config (its clip length), read only when the mosaics
        are made (a resumed summary is rewritten without one).
      log: where progress lines go.
    """

    def __init__(self, photos_dir: str, stamps_dir: str, output_dir: str,
                 counts: dict[str, int], base_config, log: Callable[[str], None]):
        self.photos_dir, self.stamps_dir, self.output_dir = photos_dir, stamps_dir, output_dir
        self.counts, self.base_config, self.log = counts, base_config, log
        self._validations: dict[int, Validation] = {}
        self._train_dirs: dict[int, str] = {}
        self._arrays: dict[tuple[int, int], tuple] = {}  # (fold, sample rate): decoded
        self._outputs: dict[tuple[int, str], TowerOutputs] = {}  # (fold, feature cache)

    def validation(self, fold: int) -> Validation:
        """The fold's validation mosaics.

        Args:
          fold: the fold.
        """
        if fold not in self._validations:
            self._validations[fold] = validation_mosaics(
                self.photos_dir, fold, self.counts["validation"],
                self.base_config.clip_seconds, MOSAIC_SIZE)
        return self._validations[fold]

    def fold_data(self, fold: int, config) -> tuple:
        """(training records, validation mosaics, their images, matched and mismatched
        sounds decoded at the audio tower's rate).

        Args:
          fold: the fold.
          config: the run's config (its sample rate).
        """
        if fold not in self._train_dirs:
            self._train_dirs[fold] = fold_records(
                self.photos_dir, self.stamps_dir,
                os.path.join(self.output_dir, "data", f"fold{fold}"), fold, self.counts,
                self.base_config.clip_seconds, self.log)
        validation = self.validation(fold)
        if (fold, config.sample_rate) not in self._arrays:
            self._arrays[fold, config.sample_rate] = decoded(
                validation.images, validation.matched, validation.mismatched, config)
        return (self._train_dirs[fold], validation, *self._arrays[fold, config.sample_rate])

    def tower_outputs(self, fold: int, cache: str, model, images: np.ndarray,
                      matched: np.ndarray, mismatched: np.ndarray) -> TowerOutputs:
        """The towers' outputs on the fold's validation arrays, once per feature cache (the
        towers a cache holds are the same in every run that shares it).

        Args:
          fold: the fold.
          cache: the feature cache's name (`cache_name`).
          model: a trained model with those towers.
          images, matched, mismatched: the fold's decoded validation arrays.
        """
        if (fold, cache) not in self._outputs:
            self._outputs[fold, cache] = tower_outputs(model, images, matched, mismatched)
        return self._outputs[fold, cache]


def _trainer_validation(fold: int, images: np.ndarray, matched: np.ndarray,
                        validation: Validation) -> Callable:
    """The Trainer's own validation (TensorBoard): the first held-out mosaics.

    Args:
      fold: the fold, in the ids.
      images, matched: the fold's decoded validation images and sounds.
      validation: the fold's mosaics (their boxes).
    """
    import tensorflow as tf

    def validation_fn(config):
        del config  # the mosaics are decoded already, at the run's rate
        k = min(VALIDATION_DURING_TRAINING, len(images))
        return tf.data.Dataset.from_tensor_slices({
            "image": images[:k], "waveform": matched[:k],
            "boxes": validation.boxes[:k], "labeled": np.ones([k], bool),
            "class_id": np.full([k], -1, np.int32),
            "id": [f"validation/fold{fold}/{i}" for i in range(k)]})

    return validation_fn


def _fold_result(run: Run, config, fold: int, material: _FoldMaterial, output_dir: str,
                 strategy, machine: str, serve_it: bool, log: Callable[[str], None],
                 tag: str) -> dict:
    """Trains one run of one fold and scores it on the fold's validation mosaics.

    Args:
      run: the row.
      config: the run's config (its tower set, recipe and model seed).
      fold: the fold.
      material: the folds' shared material.
      output_dir: the experiment's directory.
      strategy: the distribution strategy.
      machine: the machine, recorded in the result.
      serve_it: also export the model and score the SavedModel (`serve`).
      log: where progress lines go.
      tag: the fold, run and seed, before the served check's lines.
    """
    train_dir, validation, images, matched, mismatched = material.fold_data(fold, config)
    model, run_dir = train_run(run, config, fold, train_dir, output_dir, strategy,
                               _trainer_validation(fold, images, matched, validation), log)
    outputs = material.tower_outputs(fold, cache_name(run.towers, config.train_seed), model,
                                     images, matched, mismatched)
    maps = model_maps(model, outputs.visual, outputs.matched)
    result = score(maps, model_maps(model, outputs.visual, outputs.mismatched),
                   validation.boxes, config.eval_size, config.ciou_threshold)
    result["classes"] = sorted({c for cs in validation.classes for c in cs})
    result["machine"] = machine
    result["by_class"] = hits_by_class(maps, validation)
    if serve_it:
        result["served"] = serve(model, config, run_dir, fold, validation, images,
                                 os.path.join(output_dir, f"overlays_fold{fold}.png"),
                                 log=lambda m: log(f"{tag} {m}"))
    return result


def run_real_photos(base_config, output_dir: str, scale: str, photos_dir: str,
                    stamps_dir: str, strategy, environment: dict, command: str,
                    runs_filter: list[str] | None = None,
                    log: Callable[[str], None] = print,
                    seeds: list[int] | None = None) -> dict:
    """Every fold of every run, the export check of experiment.FINAL_RUN, and the summary JSON.

    Args:
      base_config: the preset with the scale's and the command line's fields.
      output_dir: where the records, caches, runs and real_photos.json/.md go; a summary
        already there is resumed (finished folds kept, the commands joined).
      scale: "quick" or "full" (experiment.COUNTS, MODEL_SEEDS).
      photos_dir, stamps_dir: the real material (../shared/realsets/photos and stamps).
      strategy: the distribution strategy every run shares.
      environment: `provenance.environment()`, recorded.
      command: the command line, recorded.
      runs_filter: only these rows' keys; None: every row.
      log: where progress lines go.
      seeds: the model seeds; None: the scale's.
    """
    import tensorflow as tf

    plan = select_runs(runs(), runs_filter, "real_photos")
    check_inputs(photos_dir, stamps_dir, {r.towers for r in plan})
    previous, results, command = _resumed(os.path.join(output_dir, "real_photos.json"),
                                          command)
    started = time.perf_counter() - previous.get("seconds", 0.0)  # a resumed run's time stands
    pairs = previous.get("training_pairs", {})
    material = _FoldMaterial(photos_dir, stamps_dir, output_dir, experiment.COUNTS[scale],
                             base_config, log)
    # Made once, as the fold records are: the training pairs and the ideal map's scores
    # follow from the material and the folds (loading the material for them takes seconds
    # at every start otherwise).
    has_material = os.path.isfile(os.path.join(photos_dir, "manifest.json"))
    if not pairs and has_material:
        pairs = training_pairs(photos_dir, stamps_dir)
    ceiling = previous.get("object_boxes")
    if not ceiling and has_material:
        ceiling = pooled_object_boxes([
            object_box_scores(material.validation(fold), base_config.eval_size,
                              base_config.ciou_threshold)
            for fold in range(experiment.FOLDS)])

    # Run-major: the first rows (the chosen recipe) are complete before the ablations start.
    seeds = list(seeds or experiment.MODEL_SEEDS[scale])
    for run in plan:
        entry = results.setdefault(run.key, {"towers": run.towers,
                                             "description": run.description,
                                             "overrides": run.overrides,
                                             "labels": run.labels, "seeds": {}})
        for seed in seeds:
            for fold in range(experiment.FOLDS):
                done = entry["seeds"].setdefault(str(seed), {})
                tag = f"[fold {fold} {run.key} seed {seed}]"
                if str(fold) in done:
                    log(f"{tag} finished earlier; skipped")
                    continue
                config = base_config.replace(**experiment.TOWER_SETS[run.towers],
                                             **run.overrides, train_seed=seed)
                fold_result = _fold_result(
                    run, config, fold, material, output_dir, strategy,
                    environment.get("machine", "unknown"),
                    run.key == experiment.FINAL_RUN and seed == seeds[0], log, tag)
                done[str(fold)] = fold_result
                entry["config"] = json.loads(json.dumps(dataclasses.asdict(
                    config.replace(train_seed=seeds[0]))))
                log(f"{tag} pointing {fold_result['pointing_game']:.3f}  "
                    f"cIoU@0.5 {fold_result['ciou_at_0_5']:.3f}  mismatched pointing "
                    f"{fold_result['mismatched_pointing_game']:.3f}")
                _write(output_dir, results, scale, seeds, started, environment, command,
                       pairs, ceiling)
                tf.keras.backend.clear_session()
    return _write(output_dir, results, scale, seeds, started, environment, command, pairs,
                  ceiling)


def serve(model, config, run_dir: str, fold: int, validation: Validation, images: np.ndarray,
          overlays: str | None, log: Callable[[str], None]) -> dict:
    """Exports the model and scores the SavedModel's serving_default on the fold's mosaics."""
    import tensorflow as tf

    from soundloc_tf.inference import export

    path = export.export_model(model, config, os.path.join(run_dir, "export"),
                               extra_info={"experiment": "real_photos", "fold": fold,
                                           "train_seed": config.train_seed})
    signature = tf.saved_model.load(path).signatures["serving_default"]
    served_maps = serving_maps(signature, validation.images, validation.matched)
    served_other = serving_maps(signature, validation.images, validation.mismatched)
    served = score(served_maps, served_other, validation.boxes, config.eval_size,
                   config.ciou_threshold)
    if overlays:
        write_overlays(overlays, images[:OVERLAY_MOSAICS], served_maps[:OVERLAY_MOSAICS],
                       served_other[:OVERLAY_MOSAICS], validation, fold)
    log(f"served: pointing {served['pointing_game']:.3f}, cIoU@0.5 "
        f"{served['ciou_at_0_5']:.3f}, mismatched pointing "
        f"{served['mismatched_pointing_game']:.3f}")
    return {**served, "export": path, "signature": "serving_default (JPEG + WAV bytes)"}


def _write(output_dir: str, results: dict, scale: str, seeds: list[int],
           started: float, environment: dict, command: str,
           pairs: dict[str, list[str]], object_boxes: dict[str, float] | None) -> dict:
    summary = {"schema": SCHEMA, "experiment": "real_photos", "command": command,
               "description": experiment.DESCRIPTION, "scale": scale, "folds": experiment.FOLDS,
               # Runs resumed with other --seeds differ: the union, each row says its own.
               "model_seeds": sorted({int(s) for run in results.values() for s in run["seeds"]}
                                     | {int(s) for s in seeds}),
               "counts": experiment.COUNTS[scale], "final_run": experiment.FINAL_RUN,
               "seconds": round(time.perf_counter() - started, 1),
               "environment": environment, "training_pairs": pairs,
               "object_boxes": object_boxes, "runs": results}
    summary["pooled"] = {k: row for k, v in results.items() if (row := summarise(v))}
    summary["served"] = {k: row for k, v in results.items() if (row := summarise(v, "served"))}
    summary["by_class"] = {k: by_class(v) for k, v in results.items() if k in summary["pooled"]}
    summary["table"] = markdown(summary)
    write_summary(output_dir, "real_photos", summary, summary["table"])
    return summary
