"""The sweeps' tables: each metric as mean ± sd over seeds, the conclusions each sweep
draws, its plots, and its <name>.json and <name>.md.

The sd here is the sample sd over seeds (ddof 1; None for one seed); the real-photo
experiments' tables give the population sd over model seeds instead.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Callable

import numpy as np

from soundloc_tf.experiments import label_sweep, real_material, results_page, superstition
from soundloc_tf.experiments.provenance import now, plain, write_json

if TYPE_CHECKING:
    from soundloc_tf.experiments.sweeps import RunSpec, Setting

DESCRIPTIONS = {"label_sweep": label_sweep.DESCRIPTION, "superstition": superstition.DESCRIPTION,
                "real_material": real_material.DESCRIPTION}
AUDIO_GAP_FLOOR = 0.05  # a pointing gap below this: the map hardly depends on the sound

TABLE_METRICS: dict[str, Callable[[dict], float | None]] = {
    "ciou_at_0_5": lambda m: m["ciou_at_0_5"],
    "mean_ciou": lambda m: m["mean_ciou"],
    "auc": lambda m: m["auc"],
    "pointing_game": lambda m: m["pointing_game"],
    "gap_pointing": lambda m: m.get("audio_dependence_gap", {}).get("pointing_game"),
    "gap_ciou_at_0_5": lambda m: m.get("audio_dependence_gap", {}).get("ciou_at_0_5"),
    "negative_ap_score": lambda m: m.get("negatives", {}).get("pooled", {}).get(
        "score", {}).get("ap"),
    "negative_ap_map_peak": lambda m: m.get("negatives", {}).get("pooled", {}).get(
        "map_peak", {}).get("ap"),
    "peak_on_object": lambda m: m.get("peak_location", {}).get("object", {}).get("rate"),
    "peak_on_cue": lambda m: m.get("peak_location", {}).get("cue", {}).get("rate"),
    "peak_on_distractors": lambda m: m.get("peak_location", {}).get("distractors", {}).get(
        "rate"),
    "peak_elsewhere": lambda m: m.get("peak_location", {}).get("elsewhere", {}).get("rate"),
    "peak_nearer_cue": lambda m: m.get("peak_location", {}).get("nearer_cue_than_object",
                                                                  {}).get("rate"),
}


def stats(values: list[float | None]) -> dict | None:
    """mean, sample sd (None for one value) and the values, skipping missing ones."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {"mean": float(np.mean(present)),
            "sd": float(np.std(present, ddof=1)) if len(present) > 1 else None,
            "n": len(present), "values": present}


def summarize_runs(records: list[dict], specs: list[RunSpec]) -> list[dict]:
    """One row per run key (in the specs' order), metrics as mean ± sd over seeds."""
    rows, order = [], []
    for spec in specs:
        if spec.key not in order:
            order.append(spec.key)
    for key in order:
        mine = [r for r in records if r["key"] == key]
        if not mine:
            continue
        first = mine[0]
        rows.append({
            "key": key, "group": first["group"], "fraction": first["fraction"],
            "note": first.get("note", ""), "seeds": [r["seed"] for r in mine],
            "metrics": {name: stats([get(r["metrics"]) for r in mine])
                        for name, get in TABLE_METRICS.items()},
            "train_wall_s": stats([r["train_wall_s"] for r in mine]),
        })
    return rows


def _row_metric(rows: list[dict], key: str, metric: str) -> dict | None:
    for row in rows:
        if row["key"] == key:
            return row["metrics"].get(metric)
    return None


def superstition_conclusions(rows: list[dict], confound: float) -> dict:
    """Where the peaks fall; whether the cue misled the unsupervised model; what corrects it.

    "Misled": the unsupervised model's peak is nearer the cue than the object
    in most evaluation scenes, and in superstition.CORRECTION_TOLERANCE more of them than
    the control's (trained without cue, evaluated on the same cue scenes).
    "Corrected": the smallest label fraction whose model is back within
    superstition.CORRECTION_TOLERANCE of the control and has its peak on the object in at
    least superstition.CORRECTED_MIN_POINTING of the scenes.
    """
    def metric(key: str, name: str) -> float | None:
        value = _row_metric(rows, key, name)
        return value["mean"] if value else None

    control, unsupervised = "control_no_cue@0", "unsupervised@0"
    control_nearer, unsupervised_nearer = (metric(control, "peak_nearer_cue"),
                                           metric(unsupervised, "peak_nearer_cue"))
    verdict, corrected_at, lines = "incomplete", None, []
    if control_nearer is not None and unsupervised_nearer is not None:
        lines.append(
            f"With a cue announcing the sound in {confound:.0%} of scenes, the unsupervised "
            f"model's map peak is nearer the cue than the sounding object in "
            f"{unsupervised_nearer:.1%} of evaluation scenes (inside the cue's box "
            f"{metric(unsupervised, 'peak_on_cue'):.1%}, the object's "
            f"{metric(unsupervised, 'peak_on_object'):.1%}); the control, trained without cue "
            f"and evaluated on the same scenes: nearer the cue {control_nearer:.1%} (cue "
            f"{metric(control, 'peak_on_cue'):.1%}, object "
            f"{metric(control, 'peak_on_object'):.1%}).")
        target = control_nearer + superstition.CORRECTION_TOLERANCE
        if unsupervised_nearer > max(0.5, target):
            verdict = "misled"
            semi = sorted((row["fraction"], row["metrics"]["peak_nearer_cue"]["mean"],
                           row["metrics"]["peak_on_object"]["mean"]) for row in rows
                          if row["key"].startswith("semi_") and row["metrics"].get(
                              "peak_nearer_cue") and row["metrics"].get("peak_on_object"))
            corrected_at = next((f for f, nearer, on_object in semi if nearer <= target
                                 and on_object >= superstition.CORRECTED_MIN_POINTING), None)
            lines.append(
                "Misled by the cue (a superstition); corrected (peak nearer the cue in at most "
                f"{superstition.CORRECTION_TOLERANCE} more scenes than the control, and on the "
                "object in at "
                f"least {superstition.CORRECTED_MIN_POINTING:.0%}) "
                + (f"from {_labels(corrected_at)} labels on." if corrected_at is not None
                   else "by none of the label fractions run."))
        else:
            verdict = "not misled"
            lines.append("Not misled: the unsupervised model's peak is not mostly on the cue, or "
                         f"not {superstition.CORRECTION_TOLERANCE} more often than the control's.")
    return {"verdict": verdict, "corrected_at_fraction": corrected_at,
            "tolerance": superstition.CORRECTION_TOLERANCE,
            "corrected_min_pointing": superstition.CORRECTED_MIN_POINTING,
            "lines": lines}


def _labels(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.01 or fraction == 0 else f"{fraction:.1%}"


def label_sweep_conclusions(rows: list[dict]) -> dict:
    """Which runs beat the best baseline, and which maps hardly depend on the sound."""
    deaf = [f"{row['group']} at {_labels(row['fraction'])}" for row in rows
            if row["metrics"].get("gap_pointing")
            and abs(row["metrics"]["gap_pointing"]["mean"]) < AUDIO_GAP_FLOOR]
    lines = []
    if deaf:
        lines.append(f"Maps that hardly depend on the sound (pointing gap below "
                     f"{AUDIO_GAP_FLOOR}): " + "; ".join(deaf) + ". Their localisation comes "
                     "from the image alone.")
    lines.append("The semi-supervised model at 0% labels is the unsupervised InfoNCE run (the "
                 "same configuration), listed once.")
    return {"audio_gap_floor": AUDIO_GAP_FLOOR, "deaf_runs": deaf, "lines": lines}


COLUMNS = {
    "label_sweep": [("ciou_at_0_5", "cIoU@0.5"), ("mean_ciou", "mean cIoU"), ("auc", "AUC"),
                    ("pointing_game", "pointing"), ("gap_pointing", "gap (pointing)"),
                    ("negative_ap_score", "neg. AP (score)"),
                    ("negative_ap_map_peak", "neg. AP (map peak)")],
    "superstition": [("peak_nearer_cue", "peak nearer cue than object"),
                     ("peak_on_object", "peak on object"), ("peak_on_cue", "peak on cue"),
                     ("peak_on_distractors", "peak on distractors"),
                     ("peak_elsewhere", "peak elsewhere"), ("pointing_game", "pointing"),
                     ("ciou_at_0_5", "cIoU@0.5"), ("auc", "AUC")],
    "real_material": [("ciou_at_0_5", "cIoU@0.5"), ("mean_ciou", "mean cIoU"), ("auc", "AUC"),
                      ("pointing_game", "pointing"), ("gap_pointing", "gap (pointing)"),
                      ("negative_ap_score", "neg. AP (score)")],
}
COLUMN_NOTES = (
    "gap = matched minus mismatched-sound pointing game; neg. AP = average precision of "
    "telling positives from silence, white noise and off-screen sounds (pooled) by the model's "
    "score (max cosine) or map peak (max attention), chance level = the positives' share, about "
    "0.25 with one negative of each kind per image; peak on X = fraction of evaluation images "
    "whose attention peak lies in X's box; peak nearer cue = fraction whose peak is closer to the "
    "cue's box than to the sounding object's (a peak just beside what it attends to counts).")


def write_outputs(setting: Setting, specs: list[RunSpec], records: list[dict],
                  command: str, env: dict, started: str) -> tuple[str, str]:
    """<name>.json and <name>.md (and sweep plots) from the records so far."""
    from soundloc_tf.eval import plots

    rows = summarize_runs(records, specs)
    name = setting.name
    plot_paths = []
    if name == "superstition":
        conclusions = superstition_conclusions(rows, setting.eval_changes.get("confound", 0.0))
    elif name == "label_sweep":
        conclusions = label_sweep_conclusions(rows)
    else:
        conclusions = {"lines": []}
    if rows and name in ("label_sweep", "superstition"):
        plot_paths = _sweep_plots(setting, rows, plots)
    first = records[0]["metrics"] if records else {}
    baselines = ({**first["baselines"], "random_box": first["random_baseline"]}
                 if first else {})
    doc = {
        "schema": results_page.SCHEMA, "experiment": name,
        "description": DESCRIPTIONS[name],
        "command": command, "scale": setting.scale, "preset": setting.preset,
        "seeds": setting.seeds,
        "base_config": setting.recorded_config or plain(dataclasses.asdict(setting.base_config)),
        "summarized_from_records": setting.recorded_config is not None,
        "eval_changes": setting.eval_changes,
        "evaluation": setting.evaluation_text,
        "columns": COLUMNS[name], "column_notes": COLUMN_NOTES,
        "summary": rows, "baselines": baselines, "conclusions": conclusions,
        "runs_planned": len(specs), "runs_done": len(records),
        "complete": len(records) == len(specs),
        "wall_s": sum(r["train_wall_s"] + r["eval_wall_s"] for r in records),
        # Built once per tower set, before the runs that share it (not in wall_s).
        "feature_caches": [
            {**cache, "runs": [r["run"] for r in records
                               if (r.get("feature_cache") or {}).get("directory") == directory]}
            for directory, cache in sorted({r["feature_cache"]["directory"]: r["feature_cache"]
                                            for r in records if r.get("feature_cache")}.items())],
        "started": started, "finished": max(r["finished"] for r in records) if records else now(),
        "environment": env, "plots": plot_paths,
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in records],
    }
    json_path = os.path.join(setting.output_dir, f"{name}.json")
    md_path = os.path.join(setting.output_dir, f"{name}.md")
    write_json(json_path, doc)
    with open(md_path + ".tmp", "w") as f:
        f.write(results_page.render_experiment(doc, level=1) + "\n")
    os.replace(md_path + ".tmp", md_path)
    return json_path, md_path


def _sweep_plots(setting: Setting, rows: list[dict], plots) -> list[str]:
    """Metric against label fraction, one line per run family (keys before '@')."""
    def series(families: dict[str, tuple[str, ...]], metric: str) -> dict:
        out = {}
        for label, members in families.items():
            points = [(r["fraction"], r["metrics"][metric]["mean"],
                       r["metrics"][metric]["sd"] or 0.0) for r in rows
                      if r["key"].split("@")[0] in members and r["metrics"].get(metric)]
            if points:
                out[label] = points
        return out

    paths = []
    if setting.name == "label_sweep":
        groups = {"semi-supervised (InfoNCE + sup.)": ("semi_infonce", "unsupervised_infonce"),
                  "supervised only": ("supervised_only",),
                  "unsupervised triplet": ("unsupervised_triplet",)}
        for metric, label in (("ciou_at_0_5", "cIoU@0.5"), ("auc", "AUC")):
            data = series(groups, metric)
            if data:
                paths.append(plots.metric_vs_fraction(
                    data, os.path.join(setting.output_dir, f"{metric}_vs_fraction.png"), label,
                    f"{label} vs labelled fraction (fixed threshold 0.5)"))
    else:
        semi = tuple({r["key"].split("@")[0] for r in rows
                      if r["key"].startswith(("semi_", "unsupervised@"))})
        data = {**series({"peak nearer cue than object": semi}, "peak_nearer_cue"),
                **series({"peak on object": semi}, "peak_on_object")}
        references = {}
        for row in rows:
            if row["key"].startswith("control_no_cue") and row["metrics"].get("peak_nearer_cue"):
                references = {"control: nearer cue": row["metrics"]["peak_nearer_cue"]["mean"],
                              "control: on object": row["metrics"]["peak_on_object"]["mean"]}
        if data:
            paths.append(plots.metric_vs_fraction(
                data, os.path.join(setting.output_dir, "peak_vs_fraction.png"),
                "fraction of evaluation scenes", "where the map peak falls", references))
    return paths
