"""Experiments, one command each: train every run (Trainer), evaluate, write JSON + markdown.

  python -m tools.experiment --name=label_sweep  --output_dir=results/label_sweep  [--quick]
  python -m tools.experiment --name=superstition --output_dir=results/superstition [--quick]
      [--confound=1.0 --object_identity=0.25 --max_objects=1 --cue_size=0.25]
  python -m tools.experiment --name=real_material --output_dir=results/real_material [--quick]

  python -m tools.experiment --name=real_photos --output_dir=results/real_photos [--quick]
  python -m tools.experiment --name=within_category --output_dir=results/within_category \
      [--photos=DIR,DIR] [--quick]

Each experiment's settings (preset, scales, seeds, runs), with what it measures, its command
and its cost, are a small file in soundloc_tf/experiments/; this tool trains, evaluates and
writes the tables (real_photos through tools/real_photos.py).

Writes <output_dir>/<name>.json and <name>.md (refreshed after every run),
plots, and one directory per run under <output_dir>/runs/ (checkpoints,
TensorBoard, metrics.json, evaluation plots). Re-running the same command
resumes: finished runs (metrics.json present) are skipped and an interrupted
run continues from its last checkpoint, so a long sweep can run in the
background (nohup ... &) and be restarted at will. Every config field is also
a flag (e.g. --train_steps, --batch_size); the scale (--quick or full) and
the run's own settings are applied on top of the preset, flags on top of
the scale, and the run's swept fields last.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Callable

from absl import flags

from soundloc_tf.config import SOUNDNET8_WEIGHTS
from soundloc_tf.experiments import label_sweep, real_material, superstition
from soundloc_tf.experiments import real_photos as real_photos_settings
from soundloc_tf.experiments import within_category

from . import common

EXPERIMENTS = {"label_sweep": label_sweep, "superstition": superstition,
               "real_material": real_material, "real_photos": real_photos_settings,
               "within_category": within_category}
AUDIO_GAP_FLOOR = 0.05  # a pointing gap below this: the map hardly depends on the sound
VALIDATION_SCENES = 64  # the Trainer's end-of-run validation (logged to TensorBoard only)
STAMPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                          "shared", "realsets", "stamps")
PHOTOS_DIR = os.path.join(os.path.dirname(STAMPS_DIR), "photos")

flags.DEFINE_enum("name", None, list(EXPERIMENTS), "Which experiment.", required=True)
flags.DEFINE_string("output_dir", None, "Where the runs, the JSON and the markdown go.",
                    required=True)
flags.DEFINE_boolean("quick", False, "Quick scale, seed 0 (minutes: the pipeline runs). "
                     "Default: full scale, the seeds of the experiment's settings "
                     "(soundloc_tf/experiments/<name>.py).")
flags.DEFINE_list("seeds", None, "Seeds (model initialisation and training scenes); each run "
                  "is repeated per seed and tables give mean ± sd. Default: by scale.")
flags.DEFINE_list("runs", None, "Only these runs (keys as in the tables' JSON, e.g. "
                  "semi_infonce@0.1); default: all of the experiment's runs.")
flags.DEFINE_string("train_records", None, "real_material: training records (directory or "
                    "shard pattern); default: composites built into <output_dir>/data/train.")
flags.DEFINE_string("test_records", None, "real_material: test records; default: composites "
                    "built into <output_dir>/data/test.")
flags.DEFINE_string("stamps", os.path.normpath(STAMPS_DIR), "real_material: the stamps folder "
                    "(objects, sounds, backgrounds) the composites are built from.")
flags.DEFINE_list("photos", [os.path.normpath(PHOTOS_DIR)], "real_photos, within_category: "
                  "the whole photos with boxes and their recordings (photos/, sounds/, "
                  "manifest.json); within_category merges several, comma-separated.")
flags.DEFINE_boolean("summarize_only", False, "Train nothing: rewrite the JSON, markdown and "
                     "plots from the runs that finished (e.g. after the code or the preset "
                     "changed); the tables then state the finished runs' own configuration.")
flags.DEFINE_integer("num_cases", 8, "Best and worst cases each in every run's overlay plot "
                     "(0: no per-run plots).", lower_bound=0)
common.define_config_flags()
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------
# The runs of each experiment.


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run: a table row (`key`) at one seed."""

    key: str
    group: str
    fraction: float
    overrides: dict
    seed: int
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.key}_seed{self.seed}"


def specs_of(rows: list[tuple[str, str, float, dict]], seeds: list[int]) -> list[RunSpec]:
    """Every row of an experiment's settings at every seed."""
    return [RunSpec(key, group, fraction, fields, seed)
            for seed in seeds for key, group, fraction, fields in rows]


# ---------------------------------------------------------------------------
# Provenance.


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name(cpuinfo: str) -> str:
    """The CPU's model name in /proc/cpuinfo text, with its widest vector unit: one recipe's
    numbers differ between the AVX2 and the AVX-512 machines, and both report as "AMD
    EPYC"."""
    lines = cpuinfo.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), platform.processor() or "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines
                      if line.startswith("flags")), []))
    vector = next((unit for unit, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"))
                   if flag in flags), None)
    return f"{name} ({vector})" if vector else name


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return cpu_name(f.read())
    except OSError:
        return cpu_name("")


def environment() -> dict:
    """Versions, machine and code revision, recorded with every result."""
    import keras
    import matplotlib
    import numpy
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": numpy.__version__,
                     "matplotlib": matplotlib.__version__},
        "machine": f"{_cpu_model()}, {cores} usable cores of {os.cpu_count()}, "
                   f"{platform.system()} {platform.machine()}"
                   + (f", GPUs: {', '.join(gpus)}" if gpus else ", no GPU"),
        "git": {"commit": _git("rev-parse", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))},
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), for comparisons with saved files."""
    return json.loads(json.dumps(value))


# Fields that do not change what a run learns or how it is scored.
BOOKKEEPING_FIELDS = frozenset({"log_every", "eval_every", "checkpoint_every",
                                "max_checkpoints", "num_summary_images"})


def config_differences(saved: dict, config) -> list[str]:
    """Fields whose saved value differs from `config`'s, ignoring bookkeeping.

    A field the saved run predates counts only if `config` does not leave it
    at its default, so finished runs stay valid while Config gains fields.
    """
    current = _plain(dataclasses.asdict(config))
    defaults = _plain({f.name: f.default for f in dataclasses.fields(config)})
    return sorted(name for name, value in current.items()
                  if name not in BOOKKEEPING_FIELDS
                  and (saved[name] != value if name in saved else value != defaults[name]))


# ---------------------------------------------------------------------------
# One run.


@dataclasses.dataclass
class Setting:
    """What an experiment needs besides its runs: data, evaluation and the shared strategy."""

    name: str
    output_dir: str
    base_config: Any  # Config
    seeds: list[int]
    scale: str
    preset: str = "tiny"
    strategy: Any = None  # tf.distribute.Strategy; one per process
    eval_changes: dict = dataclasses.field(default_factory=dict)
    train_dataset_fn: Callable | None = None  # (config) -> (start -> dataset)
    eval_dataset_fn: Callable | None = None  # (eval config) -> dataset
    evaluation_text: str = ""
    num_cases: int = 8
    class_groups: list[int] | None = None
    class_names: dict[str, str] | None = None
    validation_scenes: int = VALIDATION_SCENES
    # (config) -> unbatched training data for a feature cache; None trains through the towers.
    cache_source_fn: Callable | None = None
    log: Callable[[str], None] = print
    # Set when summarising finished runs only: the configuration they recorded.
    recorded_config: dict | None = None


def run_config(setting: Setting, spec: RunSpec):
    return setting.base_config.replace(
        **spec.overrides, train_seed=setting.base_config.train_seed + spec.seed)


def execute(setting: Setting, spec: RunSpec) -> dict:
    """Trains and evaluates one run, or returns its saved record if it already finished."""
    import keras

    from soundloc_tf.dataloaders import data
    from soundloc_tf.eval import plots
    from soundloc_tf.eval.evaluation import evaluate_detailed
    from soundloc_tf.train.training import Trainer

    config = run_config(setting, spec)
    run_dir = os.path.join(setting.output_dir, "runs", spec.name)
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            saved = json.load(f)
        differing = config_differences(saved.get("config") or {}, config)
        if differing:
            raise ValueError(
                "the output directory holds a finished run with another configuration (another "
                "scale or flags?); use a new --output_dir or the same settings. Received: "
                f"{metrics_path} differs in {differing}")
        setting.log(f"[{spec.name}] finished earlier; skipped")
        return saved

    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seed)
    eval_config = config.replace(**setting.eval_changes)
    validation = (setting.eval_dataset_fn(eval_config).take(setting.validation_scenes)
                  if setting.eval_dataset_fn else
                  data.synthetic_dataset(config, config.eval_seed,
                                         count=setting.validation_scenes))
    train_fn = setting.train_dataset_fn(config) if setting.train_dataset_fn else None
    trainer = Trainer(config, os.path.join(run_dir, "train"), setting.strategy,
                      dataset_fn=train_fn, validation=validation,
                      log=lambda message: setting.log(f"[{spec.name}] {message}"))
    cache = None
    if setting.cache_source_fn is not None:
        from soundloc_tf.train import feature_cache
        from soundloc_tf.modeling.models import split_model

        # One cache per tower weights: runs that share towers share it.
        key = feature_cache.fingerprint(*split_model(trainer.model)[:2])[:16]
        cache_dir = os.path.join(setting.output_dir, "feature_cache", key)
        manifest = feature_cache.ensure_cache(trainer.model, config,
                                              setting.cache_source_fn(config), cache_dir,
                                              log=setting.log)
        cache = {"directory": cache_dir, "count": manifest["count"],
                 "seconds": manifest["seconds"],
                 "bytes": sum(s["bytes"] for s in manifest["shards"])}
        trainer.use_feature_cache(feature_cache.cache_dataset_fn(
            config, cache_dir, in_memory=feature_cache.fits_in_memory(manifest)))
    first_step = int(trainer.step.numpy())
    started = time.perf_counter()
    losses = trainer.train()
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    scenes = (setting.eval_dataset_fn(eval_config) if setting.eval_dataset_fn else
              data.synthetic_dataset(eval_config, eval_config.eval_seed,
                                     count=config.num_eval_samples, with_extras=True))
    result, details = evaluate_detailed(trainer.model, eval_config, scenes, "fixed",
                                        all_rules=True, with_negatives=True,
                                        class_groups=setting.class_groups)
    eval_seconds = time.perf_counter() - started
    plot_paths = {}
    if setting.num_cases:
        plot_paths = plots.write_evaluation_plots(
            result, details, scenes, os.path.join(run_dir, "eval"), setting.num_cases,
            tensorboard_dir=os.path.join(run_dir, "train", "tensorboard"),
            step=config.train_steps, class_names=setting.class_names)
    record = {"run": spec.name, "key": spec.key, "group": spec.group, "fraction": spec.fraction,
              "seed": spec.seed, "note": spec.note, "overrides": spec.overrides,
              "config": _plain(dataclasses.asdict(config)),
              "eval_changes": setting.eval_changes, "resumed_from_step": first_step,
              "train_wall_s": train_seconds, "eval_wall_s": eval_seconds,
              "feature_cache": cache,
              "final_losses": losses, "finished": _now(), "plots": plot_paths,
              "metrics": result}
    os.makedirs(run_dir, exist_ok=True)
    _write_json(metrics_path, record)
    setting.log(f"[{spec.name}] cIoU@0.5 {result['ciou_at_0_5']:.3f}  AUC {result['auc']:.3f}  "
                f"pointing {result['pointing_game']:.3f}  (train {train_seconds:.0f}s, "
                f"eval {eval_seconds:.0f}s)")
    return record


# ---------------------------------------------------------------------------
# Summaries.

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
    import numpy as np

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
    from . import make_results

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
        "schema": make_results.SCHEMA, "experiment": name,
        "description": EXPERIMENTS[name].DESCRIPTION,
        "command": command, "scale": setting.scale, "preset": setting.preset,
        "seeds": setting.seeds,
        "base_config": setting.recorded_config or _plain(dataclasses.asdict(setting.base_config)),
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
        "started": started, "finished": max(r["finished"] for r in records) if records else _now(),
        "environment": env, "plots": plot_paths,
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in records],
    }
    json_path = os.path.join(setting.output_dir, f"{name}.json")
    md_path = os.path.join(setting.output_dir, f"{name}.md")
    _write_json(json_path, doc)
    with open(md_path + ".tmp", "w") as f:
        f.write(make_results.render_experiment(doc, level=1) + "\n")
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


# ---------------------------------------------------------------------------
# Setting up each experiment.


def ensure_composites(directory: str, stamps: str, count: int, seed: int,
                      label_fraction: float, log: Callable[[str], None] = print,
                      clip_seconds: float = 5.0) -> str:
    """The composite records in `directory`, built with tools/import_data's importer if absent."""
    manifest_path = os.path.join(directory, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest.get("count") != count or manifest.get("source") != "composites":
            raise ValueError(f"{directory} holds other records ({manifest.get('count')} of "
                             f"{manifest.get('source')!r}, expected {count} composites); delete "
                             f"it or use another --output_dir. Received: {manifest_path}")
        return directory
    if not os.path.isdir(stamps):
        raise ValueError("the composites are built from the real-material stamps, which are "
                         f"not there; pass --stamps. Received: stamps={stamps!r}")
    from soundloc_tf.dataloaders import importers

    if os.path.isdir(directory) and os.listdir(directory):
        raise ValueError(f"an earlier import into {directory} did not finish; delete the "
                         f"directory and rerun. Received: {sorted(os.listdir(directory))[:3]}")
    log(f"building {count} composite scenes (seed {seed}) from {stamps} into {directory}")
    importers.run_import("composites", stamps, directory,
                         sample_rate=real_material.COMPOSITE_SAMPLE_RATE,
                         clip_seconds=clip_seconds, count=count, seed=seed,
                         label_fraction=label_fraction)
    return directory


def check_real_material_inputs(stamps: str, train: str | None, test: str | None) -> None:
    """Fails in seconds, not after the first runs: the stamps (unless given records) and the
    pretrained towers' weights must be there."""
    if not (train and test) and not os.path.isdir(stamps):
        raise ValueError("the composites are built from the real-material stamps, which are "
                         f"not there; pass --stamps. Received: stamps={stamps!r}")
    from soundloc_tf.modeling import models

    missing = [p for p in (os.path.expanduser(SOUNDNET8_WEIGHTS),
                           models.hed_weights_path())
               if not os.path.isfile(p)]
    if missing:
        raise ValueError("the pretrained towers' weights are missing; run `"
                         f"soundloc-fetch-weights --what=all` first. Received: {missing}")


def real_material_setting(base: Setting, train: str | None, test: str | None,
                          stamps: str) -> Setting:
    """Builds (or takes) the composite records and wires the record reader into the setting."""
    scale = "quick" if base.scale.startswith("quick") else "full"
    train_count, test_count = real_material.COMPOSITES[scale]
    data_dir = os.path.join(base.output_dir, "data")
    clip = base.base_config.clip_seconds
    train = train or ensure_composites(os.path.join(data_dir, "train"), stamps, train_count,
                                       real_material.COMPOSITE_SEEDS[0],
                                       real_material.TRAIN_LABELS, base.log,
                                       clip)
    test = test or ensure_composites(os.path.join(data_dir, "test"), stamps, test_count,
                                     real_material.COMPOSITE_SEEDS[1], 1.0, base.log,
                                     clip)
    from soundloc_tf.dataloaders import records
    from soundloc_tf.eval.evaluation import group_ids

    manifests = {}
    for flag, path in (("train_records", train), ("test_records", test)):
        try:
            manifests[flag] = records.resolve(path).manifest
        except ValueError as error:
            raise ValueError(f"--{flag} is not a record set: {error}") from None
    extra = manifests["test_records"].get("extra", {})
    base.class_groups = group_ids(extra.get("classes") or [], extra.get("groups"))
    base.class_names = {str(i): name for i, name in enumerate(extra.get("classes") or [])} or None
    base.train_dataset_fn = lambda config: (
        lambda start: records.read_records(config, train, training=True,
                                           seed=config.train_seed, start=start))
    base.eval_dataset_fn = lambda config: records.read_records(config, test, training=False)
    base.cache_source_fn = lambda config: records.read_records(config, train, training=False,
                                                               verify=False)
    groups = " (mismatched and off-screen sounds chosen by class group)" \
        if base.class_groups else ""
    base.evaluation_text = (
        f"all {manifests['test_records'].get('count', '?')} pairs of {test}{groups}; attention "
        f"map, fixed threshold {base.base_config.ciou_threshold}, frame "
        f"{base.base_config.eval_size}x{base.base_config.eval_size}")
    return base


def plan(setting: Setting, runs_filter: list[str] | None = None) -> list[RunSpec]:
    if setting.name == "label_sweep":
        specs = specs_of(label_sweep.rows(), setting.seeds)
    elif setting.name == "superstition":
        specs = specs_of(superstition.rows(setting.eval_changes["confound"],
                                           setting.base_config.unsupervised_loss),
                         setting.seeds)
    else:
        specs = specs_of(real_material.rows(), setting.seeds)
    if runs_filter:
        known = {s.key for s in specs}
        unknown = sorted(set(runs_filter) - known)
        if unknown:
            raise ValueError(f"unknown run(s) for {setting.name}; expected some of "
                             f"{sorted(known)}. Received: {unknown}")
        specs = [s for s in specs if s.key in runs_filter]
    return specs


def load_finished(setting: Setting, specs: list[RunSpec]) -> list[dict]:
    """The saved records of the runs that finished, whatever configuration they ran with."""
    records = []
    for spec in specs:
        path = os.path.join(setting.output_dir, "runs", spec.name, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                records.append(json.load(f))
    return records


def run_experiment(setting: Setting, command: str, runs_filter: list[str] | None = None,
                   summarize_only: bool = False) -> tuple[str, str]:
    """Every run of the experiment (skipping finished ones), then the JSON and markdown.

    With `summarize_only`, trains nothing and summarises the finished runs.
    """
    specs = plan(setting, runs_filter)
    os.makedirs(setting.output_dir, exist_ok=True)
    env, started = environment(), _now()
    if summarize_only:
        records = load_finished(setting, specs)
        if not records:
            raise ValueError(f"no finished runs to summarise. Received: "
                             f"output_dir={setting.output_dir!r}")
        # Swept fields as the base configuration has them; everything else as the runs ran.
        swept = {k: getattr(setting.base_config, k)
                 for k in ("label_fraction", "unsupervised_loss", "confound")}
        setting.recorded_config = {**records[0]["config"], **swept,
                                   "train_seed": setting.base_config.train_seed}
        # The command, machine and versions of the runs themselves, when their summary says so.
        previous_path = os.path.join(setting.output_dir, f"{setting.name}.json")
        if os.path.exists(previous_path):
            with open(previous_path) as f:
                previous = json.load(f)
            command, env = previous.get("command", command), previous.get("environment", env)
            started = previous.get("started", started)
        return write_outputs(setting, specs, records, command, env, started)
    records, paths = [], ("", "")
    for i, spec in enumerate(specs, start=1):
        setting.log(f"=== run {i}/{len(specs)}: {spec.name} ({spec.group}, "
                    f"{spec.fraction:.0%} labels)")
        records.append(execute(setting, spec))
        paths = write_outputs(setting, specs, records, command, env, started)
    return paths


def make_setting(name: str, output_dir: str, base_config, seeds: list[int], scale: str,
                 preset: str = "tiny", strategy=None, confound: float = 0.9, num_cases: int = 8,
                 train_records: str | None = None, test_records: str | None = None,
                 stamps: str = STAMPS_DIR, log: Callable[[str], None] = print) -> Setting:
    setting = Setting(name=name, output_dir=output_dir, base_config=base_config, seeds=seeds,
                      scale=scale, preset=preset, strategy=strategy, num_cases=num_cases, log=log)
    if name == "superstition":
        if not 0.0 < confound <= 1.0:
            raise ValueError(f"confound must lie in (0, 1]. Received: confound={confound}")
        setting.eval_changes = {"confound": confound}
    if name == "real_material":
        return real_material_setting(setting, train_records, test_records, stamps)
    objects = (f"{base_config.min_objects}" if base_config.min_objects == base_config.max_objects
               else f"{base_config.min_objects}-{base_config.max_objects}")
    cue = (f", context cue (side {base_config.cue_size}) announcing the sounding class with "
           f"probability {confound}, {objects} object(s) per scene wearing their own class's "
           f"look with probability {base_config.object_identity}"
           if name == "superstition" else "")
    setting.evaluation_text = (
        f"{base_config.num_eval_samples} held-out synthetic scenes (seed {base_config.eval_seed})"
        f"{cue}; attention map, fixed threshold {base_config.ciou_threshold}, frame "
        f"{base_config.eval_size}x{base_config.eval_size}; all rules, negatives and per-class "
        "results in each run's metrics.json")
    return setting


def _explicit_overrides() -> dict[str, Any]:
    """Config fields given on the command line, parsed like tools/common.config_from_flags."""
    import typing

    from soundloc_tf import config as config_lib

    hints = typing.get_type_hints(config_lib.Config)
    overrides = {}
    for name in common.overridden_fields():
        value = FLAGS[name].value
        if hints[name] not in (bool, int, float, str):
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise ValueError(f"--{name} takes comma-separated integers. "
                                 f"Received: {','.join(value)}") from None
        overrides[name] = value
    return overrides


def main(argv: list[str]) -> None:
    from soundloc_tf import config as config_lib

    scale = "quick" if FLAGS.quick else "full"
    preset = FLAGS.preset if FLAGS["preset"].present else EXPERIMENTS[FLAGS.name].PRESET
    explicit = _explicit_overrides()
    try:
        seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else None
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers. Received: "
                         f"{','.join(FLAGS.seeds)}") from None
    if FLAGS.name == "within_category":
        from soundloc_tf.train.training import make_strategy

        config = config_lib.get_config(
            preset, **{**within_category.SCALES[scale], **explicit})
        command = "python -m tools.experiment " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        summary = within_category.run_within_category(
            config, FLAGS.output_dir, scale, FLAGS.photos, FLAGS.stamps, make_strategy(),
            environment(), command, FLAGS.runs, seeds=seeds)
        print(summary["markdown"])
        return
    if FLAGS.name == "real_photos":
        if len(FLAGS.photos) != 1:
            raise ValueError(f"real_photos takes one --photos folder. Received: "
                             f"{','.join(FLAGS.photos)}")
        from soundloc_tf.train.training import make_strategy
        from . import real_photos

        config = config_lib.get_config(
            preset, **{**EXPERIMENTS["real_photos"].SCALES[scale], **explicit})
        command = "python -m tools.experiment " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        summary = real_photos.run_real_photos(config, FLAGS.output_dir, scale, FLAGS.photos[0],
                                              FLAGS.stamps, make_strategy(), environment(),
                                              command, FLAGS.runs, seeds=seeds)
        print(f"Wrote {os.path.join(FLAGS.output_dir, 'real_photos.json')}: "
              f"{len(summary['runs'])} runs")
        return
    # superstition: --confound sets the cue's probability in the runs that have a cue (and in
    # every run's evaluation scenes), not in the base configuration.
    confound = explicit.pop("confound", superstition.CONFOUND) if FLAGS.name == "superstition" \
        else 0.0
    settings = EXPERIMENTS[FLAGS.name]
    scenes = superstition.SCENES if FLAGS.name == "superstition" else {}
    base_config = config_lib.get_config(preset, **{**settings.SCALES[scale], **scenes, **explicit})
    seeds = seeds or settings.SEEDS[scale]
    if explicit:
        scale += " (with " + ", ".join(f"{k}={v}" for k, v in sorted(explicit.items())) + ")"
    if FLAGS.name == "real_material":
        check_real_material_inputs(FLAGS.stamps, FLAGS.train_records, FLAGS.test_records)
    setting = make_setting(FLAGS.name, FLAGS.output_dir, base_config, seeds, scale, preset,
                           confound=confound, num_cases=FLAGS.num_cases,
                           train_records=FLAGS.train_records, test_records=FLAGS.test_records,
                           stamps=FLAGS.stamps)
    from soundloc_tf.train.training import make_strategy

    setting.strategy = make_strategy()
    command = "python -m tools.experiment " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    json_path, md_path = run_experiment(setting, command, FLAGS.runs, FLAGS.summarize_only)
    print(f"Wrote {json_path} and {md_path}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
