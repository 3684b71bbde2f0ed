"""The real-photo experiment's scores and tables: pointing and cIoU of the maps on a fold's
mosaics, folds pooled over their mosaics per seed, then the mean and sd over model seeds.

The sd over seeds is the population sd (NumPy's default), as the tables have always given
it; soundloc_tf/experiments/sweep_tables.py gives the sample sd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from soundloc_tf.experiments import real_photos as experiment

if TYPE_CHECKING:
    from soundloc_tf.experiments.photo_folds import Validation

# The protocols that score the normalised attention map (docs/PROTOCOLS.md); SLAVC's and
# vssl_eval's fixed thresholds apply to raw similarities, which the served heat map is not.
MAP_PROTOCOLS = ("fixed", "lvs", "ezvsl")


def score(maps: np.ndarray, mismatched_maps: np.ndarray, boxes: np.ndarray,
          eval_size: int, threshold: float) -> dict[str, Any]:
    """Pointing and cIoU (fixed threshold) of the maps; the mismatched maps' pointing."""
    from soundloc_tf import metrics, protocols

    matched, per_image = metrics.score_heatmaps(maps, boxes, eval_size, "fixed", threshold)
    other, _ = metrics.score_heatmaps(mismatched_maps, boxes, eval_size, "fixed", threshold)
    by_protocol = {}
    for name in MAP_PROTOCOLS:
        peer, _ = protocols.score_heatmaps(maps, boxes, name, threshold=threshold,
                                           size=eval_size)
        by_protocol[name] = {m: peer[m] for m in metrics.SUMMARY_KEYS}
    return {"by_protocol": by_protocol, "pointing_game": matched["pointing_game"],
            "ciou_at_0_5": matched["ciou_at_0_5"], "mean_ciou": matched["mean_ciou"],
            "auc": matched["auc"],
            "mismatched_pointing_game": other["pointing_game"],
            "mismatched_ciou_at_0_5": other["ciou_at_0_5"],
            "gap_pointing": matched["pointing_game"] - other["pointing_game"],
            "baselines": matched["baselines"], "n": int(len(maps)),
            "per_image_ciou": [float(c) for c in per_image]}


def object_box_scores(validation: Validation, eval_size: int, threshold: float
                      ) -> dict[str, Any]:
    """The scores of an ideal object map, the sounding photo's drawn boxes, against the tile.

    The ground truth is the whole tile, so a map that marks exactly the sounding object
    scores the object's share of its photo; the cIoU target is measured against this.
    """
    from soundloc_tf import metrics

    maps = metrics.consensus_map(validation.object_boxes, eval_size).numpy()
    result, _ = metrics.score_heatmaps(maps, validation.boxes, eval_size, "fixed", threshold)
    return {m: result[m] for m in (*metrics.SUMMARY_KEYS, "n")}


def pooled_object_boxes(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The folds' ideal-map scores over their mosaics together."""
    from soundloc_tf import metrics

    return over_mosaics(folds, metrics.SUMMARY_KEYS)


def hits_by_class(maps: np.ndarray, validation: Validation) -> dict[str, list[int]]:
    """Per sounding class: [mosaics whose peak is in the sounding tile, mosaics]."""
    n, height, width = maps.shape
    peak = maps.reshape(n, -1).argmax(axis=1)
    grid = experiment.GRID
    tiles = (peak // width) * grid // height * grid + (peak % width) * grid // width
    out: dict[str, list[int]] = {}
    for i, tile in enumerate(tiles):
        counts = out.setdefault(validation.classes[i][validation.sounding[i]], [0, 0])
        counts[0] += int(tile == validation.sounding[i])
        counts[1] += 1
    return dict(sorted(out.items()))


METRICS = ("pointing_game", "ciou_at_0_5", "mean_ciou", "auc", "mismatched_pointing_game",
           "gap_pointing")


def pooled(folds: dict[str, dict], key: str | None = None) -> dict[str, float]:
    """Each metric over the folds' mosaics together (folds weighted by their mosaics)."""
    parts = [f[key] if key else f for f in folds.values() if not key or key in f]
    centre = [{"center_box_ciou_at_0_5": p["baselines"]["center_box"]["ciou_at_0_5"],
               "n": p["n"]} for p in parts]
    return over_mosaics(parts, METRICS) | over_mosaics(centre, ["center_box_ciou_at_0_5"])


def over_mosaics(parts: list[dict], keys) -> dict[str, float]:
    """Each of `keys` averaged over the parts' mosaics (each part weighted by its `n`), and
    the total `n`."""
    total = sum(p["n"] for p in parts)
    return {k: sum(p[k] * p["n"] for p in parts) / max(total, 1) for k in keys} | {"n": total}


def over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each pooled metric over seeds, its sd as `<metric>_sd`, and `seeds`."""
    out: dict[str, float] = {"seeds": len(per_seed), "n": per_seed[0]["n"]}
    for metric in (*METRICS, "center_box_ciou_at_0_5"):
        values = np.array([p[metric] for p in per_seed])
        out[metric], out[f"{metric}_sd"] = float(values.mean()), float(values.std())
    return out


def summarise(run: dict, key: str | None = None) -> dict[str, float] | None:
    """A run pooled over folds per seed (seeds with every fold), then over seeds."""
    complete = [folds for folds in run["seeds"].values() if len(folds) == experiment.FOLDS
                and (key is None or all(key in f for f in folds.values()))]
    return over_seeds([pooled(folds, key) for folds in complete]) if complete else None


def fold_results(run: dict) -> Iterator[dict]:
    """Every fold's result of a run, over all its seeds."""
    for folds in run["seeds"].values():
        yield from folds.values()


def by_class(run: dict) -> dict[str, list[int]]:
    """Hits and mosaics per sounding class, summed over folds and seeds."""
    out: dict[str, list[int]] = {}
    for fold in fold_results(run):
        for name, (hits, count) in fold.get("by_class", {}).items():
            total = out.setdefault(name, [0, 0])
            total[0] += hits
            total[1] += count
    return dict(sorted(out.items()))


def _cell(row: dict, metric: str, bold: bool = False, signed: bool = False) -> str:
    """`0.430 ± 0.040` over seeds (the sd left out for one seed)."""
    value = f"{row[metric]:+.3f}" if signed else f"{row[metric]:.3f}"
    value = f"**{value}**" if bold else value
    return value + (f" ± {row[metric + '_sd']:.3f}" if row["seeds"] > 1 else "")


def markdown(summary: dict) -> str:
    """The table docs/RESULTS.md quotes: one row per run, folds pooled, mean ± sd over seeds."""
    lines = [
        "| run | towers | recipe | pointing | cIoU@0.5 | mean cIoU | AUC | mismatched "
        "pointing | gap | mosaics x seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in summary["pooled"].items():
        run = summary["runs"][key]
        folds = min(len(f) for f in run["seeds"].values())
        lines.append(
            f"| {key} | {run['towers']} | {run['description']} | "
            f"{_cell(row, 'pointing_game')} | {_cell(row, 'ciou_at_0_5')} | "
            f"{_cell(row, 'mean_ciou')} | {_cell(row, 'auc')} | "
            f"{_cell(row, 'mismatched_pointing_game')} | "
            f"{_cell(row, 'gap_pointing', signed=True)} | {row['n']} x {row['seeds']} "
            f"({folds} of {summary['folds']} folds) |")
    for key, row in summary["served"].items():
        lines.append(
            f"| **{key}, exported, `serving_default`** | | JPEG + WAV bytes | "
            f"{_cell(row, 'pointing_game', True)} | {_cell(row, 'ciou_at_0_5', True)} | "
            f"{_cell(row, 'mean_ciou')} | {_cell(row, 'auc')} | "
            f"{_cell(row, 'mismatched_pointing_game', True)} | "
            f"{_cell(row, 'gap_pointing', signed=True)} | {row['n']} x {row['seeds']} |")
    any_row = next(iter(summary["pooled"].values()), None)
    if any_row:
        lines.append(f"| baseline: chance (a random tile) / centre box | | | 0.250 | "
                     f"{any_row['center_box_ciou_at_0_5']:.3f} | | | | | |")
    ideal = summary.get("object_boxes")
    if ideal:
        lines.append(f"| ceiling: the sounding photo's drawn boxes as the map (an ideal object "
                     f"map) | | | {ideal['pointing_game']:.3f} | {ideal['ciou_at_0_5']:.3f} | "
                     f"{ideal['mean_ciou']:.3f} | {ideal['auc']:.3f} | | | {ideal['n']} |")
    for key, run in summary["runs"].items():
        served = [f["served"] for f in fold_results(run)
                  if "by_protocol" in f.get("served", {})]
        if not served:
            continue
        total = sum(f["n"] for f in served)
        lines += ["", f"{key}, exported, `serving_default`, under each protocol that scores "
                  "the attention map (folds and seeds pooled):", "",
                  "| protocol | pointing | cIoU@0.5 | mean cIoU | AUC |", "|---|---|---|---|---|"]
        for name in MAP_PROTOCOLS:
            cell = {m: sum(f["by_protocol"][name][m] * f["n"] for f in served) / total
                    for m in ("pointing_game", "ciou_at_0_5", "mean_ciou", "auc")}
            lines.append(f"| {name} | {cell['pointing_game']:.3f} | {cell['ciou_at_0_5']:.3f} "
                         f"| {cell['mean_ciou']:.3f} | {cell['auc']:.3f} |")
    machines = {key: sorted({f.get("machine", "unknown") for f in fold_results(run)})
                for key, run in summary["runs"].items()}
    if len({m for ms in machines.values() for m in ms}) > 1:
        lines += ["", "Machines (the same recipe differs between them):", ""]
        lines += [f"* {key}: {'; '.join(ms)}" for key, ms in machines.items()]
    final = summary["by_class"].get(summary["final_run"])
    if final:
        lines += ["", f"{summary['final_run']}: pointing by sounding class (the model's maps, "
                  "folds and seeds pooled):", "",
                  "| " + " | ".join(final) + " |", "|" + "---|" * len(final),
                  "| " + " | ".join(f"{h / max(n, 1):.2f} ({n})" for h, n in final.values())
                  + " |"]
        pairs = summary.get("training_pairs", {})
        if pairs:
            lines += ["", "What each class's fold trains with a recording of its own, in the "
                      "class's sound group (none: the class is found only through what the "
                      "pretrained towers share):", "",
                      "| " + " | ".join(final) + " |", "|" + "---|" * len(final),
                      "| " + " | ".join(", ".join(pairs.get(name, [])) or "none"
                                        for name in final) + " |"]
    return "\n".join(lines) + "\n"
