"""Scores a trained run: the scenes, the metrics, the overlay grid, plots and the table.

`soundloc-evaluate` parses flags into `EvaluationSettings` and calls `evaluate_run`; the
run is restored without reading the towers' pretrained weights files (the checkpoint
holds every weight), so a run evaluates on a machine that never fetched them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from soundloc_tf import protocols
from soundloc_tf.config import Config
from soundloc_tf.dataloaders import data, importers, records
from soundloc_tf.eval import plots
from soundloc_tf.eval.evaluation import evaluate_detailed, group_ids, predict_maps
from soundloc_tf.train.run_dir import restore_model
from soundloc_tf.visualize import draw_boxes, overlay


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """How a run is scored (soundloc-evaluate's flags, which document each).

    Attributes:
      rule: the binarising rule of the headline numbers ("fixed", "median", "top50").
      protocol: the scoring protocol of the headline numbers (docs/PROTOCOLS.md).
      annotation: the box format the peers' loaders assume; None: "vggss" for records
        imported from VGG-SS, else "flickr".
      records: score these records instead of held-out synthetic scenes.
      test_list: with `records`, score only this named test list.
      test_list_ids: the list's own ids file; None: every record's id.
      num_samples: scenes or records to score; None: the config's count of synthetic
        scenes, or every record.
      num_overlays: scenes in the overlay grid PNG (0: none).
      output_dir: where metrics.json and the images go; None: <workdir>/eval.
      negatives: also score silence, white noise and off-screen sounds.
      plots: also write the success curve, best/worst cases and per-class bars.
      random_seed: the random-box baseline's seed.
      noise_seed: the white-noise negatives' seed.
      num_cases: best and worst cases each in the plots' grid.
    """

    rule: str = "fixed"
    protocol: str = "fixed"
    annotation: str | None = None
    records: str | None = None
    test_list: str | None = None
    test_list_ids: str | None = None
    num_samples: int | None = None
    num_overlays: int = 16
    output_dir: str | None = None
    negatives: bool = False
    plots: bool = False
    random_seed: int = 0
    noise_seed: int = 0
    num_cases: int = 8


@dataclasses.dataclass
class Scenes:
    """What a run is scored on: the pairs, their class groups and names, and a label."""

    dataset: tf.data.Dataset
    source: str
    class_groups: list[int] | None = None
    class_names: dict[str, str] | None = None


def evaluation_scenes(config: Config, records_path: str | None = None,
                      num_samples: int | None = None) -> Scenes:
    """Every record at `records_path` (with their manifest's class groups and names), or
    `num_samples` held-out synthetic scenes.

    Args:
      config: the run's config (image size, audio window, eval seed).
      records_path: a record directory or shard pattern; None: synthetic scenes.
      num_samples: synthetic scenes to make; None: `config.num_eval_samples`.
    """
    if records_path is None:
        count = num_samples or config.num_eval_samples
        return Scenes(data.synthetic_dataset(config, config.eval_seed, count=count,
                                             with_extras=True),
                      f"held-out synthetic scenes (seed {config.eval_seed})")
    extra = records.resolve(records_path).manifest.get("extra", {})
    classes = extra.get("classes") or []
    return Scenes(records.read_records(config, records_path, training=False),
                  f"TFRecords {records_path}", group_ids(classes, extra.get("groups")),
                  {str(i): name for i, name in enumerate(classes)} or None)


_ROW = "{:30s} {:>9s} {:>10s} {:>7s} {:>9s}"


def _row(name: str, r: dict) -> str:
    return _ROW.format(name, f"{r['ciou_at_0_5']:.3f}", f"{r['mean_ciou']:.3f}",
                       f"{r['auc']:.3f}", f"{r['pointing_game']:.3f}")


def results_table(result: dict) -> str:
    """The printed table: the model, its mismatched-sound run, the baselines, every rule and
    protocol, and the negatives' separation."""
    rows = [(f"model ({result['map']} map)", result)]
    if "mismatched_sound" in result:
        rows.append(("  with mismatched sound", result["mismatched_sound"]))
    rows += [("  raw cosine map", result["cosine_map"]),
             ("baseline: whole image", result["baselines"]["whole_image"]),
             ("baseline: centre box", result["baselines"]["center_box"]),
             (f"baseline: random box (seed {result['random_baseline']['seed']})",
              result["random_baseline"])]
    lines = [_ROW.format("", "cIoU@0.5", "mean cIoU", "AUC", "pointing")]
    lines += [_row(name, r) for name, r in rows]
    if "audio_dependence_gap" in result:
        gap = result["audio_dependence_gap"]
        lines.append(_ROW.format("audio-dependence gap", *(f"{gap[k]:+.3f}" for k in (
            "ciou_at_0_5", "mean_ciou", "auc", "pointing_game"))) +
            f"   (peak moved in {gap['peak_moved']:.1%} of images)")
    for rule, r in result.get("by_rule", {}).items():
        lines.append(_row(f"rule {rule}", r))
    for name, r in result.get("by_protocol", {}).items():
        lines.append(_row(f"protocol {name}", r))
    if "peak_location" in result:
        where = result["peak_location"]
        lines.append("map peak on: " + ", ".join(
            f"{k} {v['rate']:.3f}" for k, v in where.items() if v["rate"] is not None))
    if "negatives" in result:
        lines.append(f"\n{'negative audio':30s} {'confidence':>10s} {'AP':>7s} {'max-F1':>7s} "
                     f"{'loc. AP':>8s} {'loc. F1':>8s}")
        report = result["negatives"]
        for kind, by_confidence in [*report["kinds"].items(), ("all kinds pooled",
                                                                report["pooled"])]:
            for confidence, s in by_confidence.items():
                lines.append(f"{kind:30s} {confidence:>10s} {s['ap']:7.3f} {s['max_f1']:7.3f} "
                             f"{s['localized_ap']:8.3f} {s['localized_max_f1']:8.3f}")
    peers = result.get("negatives_by_protocol", {})
    if "slavc" in peers:
        lines.append(f"\n{'protocol slavc (cIoU >= 0.5)':30s} {'precision':>10s} {'AP':>7s} "
                     f"{'max-F1':>7s} {'AUC':>7s}")
        for kind, stats in peers["slavc"].items():
            s = stats["all@50"]
            lines.append(f"{'positives + ' + kind:30s} {s['precision']:10.3f} {s['ap']:7.3f} "
                         f"{s['max_f1']:7.3f} {s['auc']:7.3f}")
    if "vssl_eval" in peers:
        lines.append(f"\n{'protocol vssl_eval':30s} {'pIA':>10s} {'AOC':>7s}")
        for kind, s in peers["vssl_eval"].items():
            lines.append(f"{kind:30s} {s['pia']:10.3f} {s['aoc']:7.3f}")
    return "\n".join(lines)


def _read_list_ids(path: str) -> list[str]:
    """A test list's ids: the "file" names of a vggss.json, else one id per line / first column."""
    if path.endswith(".json"):
        return [str(entry["file"]) for entry in importers.parse_vggss(path)]
    return importers.read_id_list(path)


def _select_test_list(scenes, name: str, ids_path: str | None):
    """The records of the named list (kept in order) and the list's count report."""
    ids = [i.decode() for i in scenes.map(lambda e: e["id"]).as_numpy_iterator()]
    keep, report = protocols.select_test_list(
        name, ids, _read_list_ids(ids_path) if ids_path else None)
    if not keep.any():
        raise ValueError(f"no record belongs to the test list {name}. Received: {len(ids)} "
                         f"records, list {ids_path or '(record ids)'}")
    wanted = tf.constant(sorted({i for i, k in zip(ids, keep) if k}))
    return scenes.filter(lambda e: tf.reduce_any(tf.equal(e["id"], wanted))), report


def write_overlay_grid(model: keras.Model, dataset: tf.data.Dataset, count: int,
                       path: str) -> None:
    """The first `count` scenes with the attention map and the boxes, as one PNG grid."""
    from PIL import Image

    batch = next(iter(dataset.batch(count)))
    maps = predict_maps(model, [batch])
    tiles = draw_boxes(overlay(batch["image"], maps["attention"]), batch["boxes"][:, 0]).numpy()
    columns = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    pad = np.ones([rows * columns - len(tiles), *tiles.shape[1:]], tiles.dtype)
    grid = np.concatenate([tiles, pad]).reshape(rows, columns, *tiles.shape[1:])
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * tiles.shape[1],
                                                 columns * tiles.shape[2], 3)
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)




def evaluate_run(workdir: str, settings: EvaluationSettings = EvaluationSettings(),
                 progress: Callable[[int, int | None], None] | None = None
                 ) -> tuple[dict[str, Any], list[str]]:
    """Scores the newest readable checkpoint of `workdir`; writes metrics.json and images.

    Args:
      workdir: a run directory written by training.
      settings: what to score and how.
      progress: called with the pairs scored so far and the total (None: unknown, every
        record).

    Returns:
      (result, paths): metrics.json's content, and the files written (metrics.json first).

    Raises:
      ValueError: no run or checkpoint in `workdir`, a test list without records, or no
        record on the test list.
    """
    if settings.test_list and not settings.records:
        raise ValueError("--test_list selects records by id, so it needs --records. Received: "
                         f"--test_list={settings.test_list}")
    config, model, step = restore_model(workdir)
    output_dir = settings.output_dir or os.path.join(workdir, "eval")
    os.makedirs(output_dir, exist_ok=True)
    scenes = evaluation_scenes(config, settings.records, settings.num_samples)
    annotation, test_list = settings.annotation, None
    if settings.records:
        if annotation is None and records.resolve(settings.records).manifest.get(
                "source") == "vggss":
            annotation = "vggss"
        if settings.test_list:
            scenes.dataset, test_list = _select_test_list(scenes.dataset, settings.test_list,
                                                          settings.test_list_ids)
        if settings.num_samples:
            scenes.dataset = scenes.dataset.take(settings.num_samples)
    annotation = annotation or "flickr"
    total = settings.num_samples or (None if settings.records else config.num_eval_samples)
    result, details = evaluate_detailed(
        model, config, scenes.dataset, settings.rule,
        progress and (lambda done: progress(done, total)), all_rules=True,
        with_negatives=settings.negatives, random_seed=settings.random_seed,
        noise_seed=settings.noise_seed, class_groups=scenes.class_groups,
        protocol=settings.protocol, annotation=annotation)
    result.update(step=step, workdir=os.path.abspath(workdir), source=scenes.source,
                  eval_seed=None if settings.records else config.eval_seed,
                  records=settings.records, test_list=test_list, annotation=annotation)
    paths = [os.path.join(output_dir, "metrics.json")]
    with open(paths[0] + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(paths[0] + ".tmp", paths[0])
    if settings.num_overlays:
        paths.append(os.path.join(output_dir, "overlays.png"))
        write_overlay_grid(model, scenes.dataset, settings.num_overlays, paths[-1])
    if settings.plots:
        written = plots.write_evaluation_plots(
            result, details, scenes.dataset, output_dir, settings.num_cases,
            tensorboard_dir=os.path.join(output_dir, "tensorboard"), step=step,
            class_names=scenes.class_names)
        paths += list(written.values())
    return result, paths


def report_lines(result: dict[str, Any], settings: EvaluationSettings) -> list[str]:
    """What soundloc-evaluate prints: the source, rule and frame, the test list's counts,
    the pairs left out, and `results_table`.

    Args:
      result: `evaluate_run`'s result.
      settings: the settings it ran with.
    """
    rule = (settings.rule if settings.rule != "fixed"
            else f"fixed threshold {result['threshold']}")
    if settings.protocol != "fixed":
        rule = f"protocol {settings.protocol} ({result['protocol']['source']})"
    lines = [f"{result['source']}: {result['n']} pairs, step {result['step']}, protocol "
             f"{settings.protocol}, binarising rule: {rule}, frame {result['eval_size']}x"
             f"{result['eval_size']}, annotation {result['annotation']}"]
    test_list = result.get("test_list")
    if test_list:
        lines.append(f"Test list {test_list['name']}: {test_list['found']} of "
                     f"{test_list['expected']} ids found"
                     + (f" (missing e.g. {', '.join(test_list['missing'][:5])})"
                        if test_list["missing"] else ""))
    if result["skipped_without_boxes"]:
        lines.append(f"Skipped {result['skipped_without_boxes']} pairs without an annotated "
                     "box (nothing to score them against)")
    return lines + [results_table(result)]
