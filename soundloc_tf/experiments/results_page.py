"""RESULTS.md from the experiments' JSON files: nothing in it is typed by hand.

Per experiment: the command, scale, seeds, the results table (mean ± sd over seeds), the
baselines, the conclusions the experiment computed, and where and how long it ran. The
sweeps write their own markdown with `render_experiment` too, so an experiment's .md and
its RESULTS.md section are the same text.
"""

from __future__ import annotations

import glob
import json
import os

SCHEMA = "soundloc.experiment/1"
EXPERIMENT_TITLES = {
    "label_sweep": "Label-fraction sweep (built-in scenes)",
    "superstition": "The superstition experiment (a context cue that announces the sound)",
    "real_material": "Real material (composites of real photos and recordings)",
    "real_photos": ("Real photographs (held-out photos and recordings, paper and paper_yamnet "
                    "presets)"),
    "within_category": ("Real photographs within one category (four held-out animals per "
                        "mosaic, paper_yamnet preset)"),
}


def load_experiment(path: str) -> dict:
    """An experiment's JSON, from its file or its output directory."""
    if os.path.isdir(path):
        candidates = [p for p in sorted(glob.glob(os.path.join(path, "*.json")))
                      if os.path.basename(p)[:-len(".json")] in EXPERIMENT_TITLES]
        if len(candidates) != 1:
            raise ValueError("expected exactly one <experiment>.json in the directory. "
                             f"Received: {path!r} holding "
                             f"{[os.path.basename(p) for p in candidates]}")
        path = candidates[0]
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"could not read the experiment file. Received: {path!r} "
                         f"({type(error).__name__}: {error})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"not an experiment file of tools/experiment.py (schema {SCHEMA}). "
                         f"Received: {path!r}")
    return doc


def _cell(stats: dict | None) -> str:
    """mean, or mean ± sd over seeds."""
    if not stats or stats.get("mean") is None:
        return "–"
    text = f"{stats['mean']:.3f}"
    if stats.get("n", 1) > 1 and stats.get("sd") is not None:
        text += f" ± {stats['sd']:.3f}"
    return text


def _duration(seconds: float | None) -> str:
    """"1h02m" or "3m05s"; "–" where unknown."""
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def results_table(doc: dict) -> str:
    """The experiment's summary rows as a markdown table (columns chosen by the experiment)."""
    columns = doc["columns"]
    header = ["run", "labels", *[label for _, label in columns], "seeds", "train time (mean)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in doc["summary"]:
        fraction = row["fraction"]
        labels = f"{fraction:.0%}" if fraction >= 0.01 or fraction == 0 else f"{fraction:.1%}"
        cells = [row["group"] + (f" ({row['note']})" if row.get("note") else ""), labels]
        cells += [_cell(row["metrics"].get(key)) for key, _ in columns]
        cells += [str(len(row["seeds"])), _duration((row.get("train_wall_s") or {}).get("mean"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baselines_table(doc: dict) -> str:
    """The baselines on the experiment's evaluation images, as a markdown table."""
    baselines = doc.get("baselines") or {}
    if not baselines:
        return ""
    lines = ["| baseline | cIoU@0.5 | mean cIoU | AUC | pointing |", "|---|---|---|---|---|"]
    for name, r in baselines.items():
        lines.append(f"| {name.replace('_', ' ')} | {r['ciou_at_0_5']:.3f} | "
                     f"{r['mean_ciou']:.3f} | {r['auc']:.3f} | {r['pointing_game']:.3f} |")
    return "\n".join(lines)


# Fields shown with every experiment: a preset's name alone hides changes to it.
SETTINGS_SHOWN = ("image_size", "image_tower", "image_weights", "audio_tower",
                  "attention_temperature", "attention_relu", "infonce_temperature",
                  "optimizer", "learning_rate", "lr_schedule")


def _settings(config: dict) -> str:
    return ", ".join(f"{k}={config[k]}" for k in SETTINGS_SHOWN if k in config)


def _environment_lines(env: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    git = env.get("git", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (with uncommitted changes)"
                                                      if git.get("dirty") else "")
    return [f"- machine: {env.get('machine', 'unknown')}",
            f"- versions: {versions}",
            f"- code: commit {commit}"]


def render_real_photos(doc: dict, level: int = 2) -> str:
    """The real-photo experiment's section: its own table (folds pooled) and provenance."""
    title = EXPERIMENT_TITLES["real_photos"]
    return "\n".join([f"{'#' * level} {title}", "", doc["description"], "",
                      f"- command: `{doc['command']}`",
                      f"- scale: {doc['scale']}; {doc['folds']} folds; scenes per fold: "
                      + ", ".join(f"{k} {v}" for k, v in doc["counts"].items()),
                      f"- total wall time: {_duration(doc.get('seconds'))}",
                      *_environment_lines(doc.get("environment", {})), "", doc["table"]])


def render_within_category(doc: dict, level: int = 2) -> str:
    """The within-category experiment's section: its folds, tables and provenance."""
    folds = "; ".join(f"fold {k}: {', '.join(f['classes'])} (left out: {f['left_out'] or '-'})"
                      for k, f in enumerate(doc["folds"]))
    return "\n".join([f"{'#' * level} {EXPERIMENT_TITLES['within_category']}", "",
                      doc["description"], "",
                      f"- command: `{doc['command']}`",
                      f"- material: {', '.join(doc['photos'])}; held out per fold: {folds}",
                      f"- scale: {doc['scale']}; scenes per fold: "
                      + ", ".join(f"{k} {v}" for k, v in doc["counts"].items()),
                      f"- total wall time: {_duration(doc.get('seconds'))}",
                      *_environment_lines(doc.get("environment", {})), "", doc["markdown"]])


def render_experiment(doc: dict, level: int = 2) -> str:
    """One experiment's section: command, settings, table, baselines, conclusions, provenance."""
    if doc["experiment"] == "real_photos":
        return render_real_photos(doc, level)
    if doc["experiment"] == "within_category":
        return render_within_category(doc, level)
    h = "#" * level
    title = EXPERIMENT_TITLES.get(doc["experiment"], doc["experiment"])
    out = [f"{h} {title}", ""]
    if doc.get("description"):
        out += [doc["description"], ""]
    status = "complete" if doc.get("complete") else (
        f"INCOMPLETE: {doc.get('runs_done', 0)} of {doc.get('runs_planned', '?')} runs finished")
    out += [f"- command: `{doc['command']}`",
            f"- scale: {doc['scale']}; {doc['base_config']['train_steps']} training steps, batch "
            f"{doc['base_config']['batch_size']}, preset `{doc['preset']}`; seeds "
            f"{', '.join(map(str, doc['seeds']))}; {status}",
            f"- settings: {_settings(doc['base_config'])}",
            f"- evaluation: {doc['evaluation']}",
            f"- total wall time of the runs: {_duration(doc.get('wall_s'))} "
            f"(finished {doc.get('finished', '?')})"]
    for cache in doc.get("feature_caches") or []:
        out.append(f"- feature cache `{os.path.basename(cache['directory'])}` (frozen towers, "
                   f"built once, not in the wall time above): {cache['count']} samples in "
                   f"{_duration(cache['seconds'])} ({cache['count'] / cache['seconds']:.1f} "
                   f"samples/s), {cache['bytes'] / cache['count'] / 1e3:.0f} kB per sample; "
                   f"used by {', '.join(cache.get('runs', []))}")
    out += _environment_lines(doc.get("environment", {}))
    out += ["", results_table(doc), ""]
    if doc.get("column_notes"):
        out += [f"Columns: {doc['column_notes']}", ""]
    baselines = baselines_table(doc)
    if baselines:
        out += ["Baselines on the same evaluation images:", "", baselines, ""]
    for line in doc.get("conclusions", {}).get("lines", []):
        out.append(f"- {line}")
    if doc.get("conclusions", {}).get("lines"):
        out.append("")
    if doc.get("plots"):
        out += ["Plots (in the experiment's output directory): "
                + ", ".join(f"`{os.path.basename(p)}`" for p in doc["plots"]), ""]
    return "\n".join(out)


def render_results(docs: list[dict]) -> str:
    """The whole RESULTS.md page."""
    out = ["# Results", "",
           "Generated by `python -m tools.make_results` from the JSON files that "
           "`tools/experiment.py` writes; do not edit by hand. Every number below comes "
           "from one of those files, with the command that produced it.", "",
           "## How the numbers are computed", "",
           "- cIoU@0.5: fraction of evaluation images whose cIoU >= 0.5; mean cIoU: its "
           "average; AUC: area under the success-rate curve over cIoU thresholds 0, 0.05, ..., "
           "1 (trapezoid); pointing: fraction of images whose map peak lies on the ground truth. "
           "All on the attention map alpha, upsampled to the evaluation frame and min-max "
           "normalised, binarised by the rule stated with each experiment. Protocol: "
           "soundloc's own `fixed` rule throughout (threshold 0.5, annotators' consensus "
           "divided by min(annotators, 2)); docs/PROTOCOLS.md says how it differs from the "
           "peers' `lvs`, `ezvsl`, `slavc` and `vssl_eval`, which `soundloc-evaluate "
           "--protocol` computes.",
           "- Audio-dependence gap: the same metric with each image paired with the clip of "
           "the first later evaluation scene whose sounding class differs (matched minus "
           "mismatched); a map that ignores the sound has gap 0.",
           "- Negative audio: each image is also paired with silence, white noise and an "
           "off-screen clip (a class absent from the image); AP over positives and all "
           "negatives pooled, with the model's score (max cosine) or map peak (max alpha) as "
           "the confidence.",
           "- Baselines: whole image, a centred box of half the side, and a seeded random "
           "box (sides uniform in [0.25, 0.75] of the image, uniform position).", ""]
    for doc in docs:
        out += [render_experiment(doc), ""]
    return "\n".join(out).rstrip() + "\n"


def write_results(paths: list[str], output: str) -> str:
    """Writes the page of the experiments at `paths` (output directories or their JSON
    files) to `output`, in the order of EXPERIMENT_TITLES; returns `output`.

    Args:
      paths: experiment output directories, or their <name>.json files.
      output: the markdown file to write (whole, then moved in place).
    """
    order = list(EXPERIMENT_TITLES)
    docs = sorted((load_experiment(p) for p in paths),
                  key=lambda d: order.index(d["experiment"]) if d["experiment"] in order else 99)
    text = render_results(docs)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output + ".tmp", "w") as f:
        f.write(text)
    os.replace(output + ".tmp", output)
    return output
