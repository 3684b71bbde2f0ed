"""The sweeps (label_sweep, superstition, real_material): every run of a settings file,
trained and evaluated through the localisation task, resumable run by run.

Each run is a row of the experiment's settings (soundloc_tf/experiments/<name>.py) at one
seed; a finished run (its metrics.json present) is skipped, an interrupted one resumes from
its checkpoint, and the JSON and markdown (`sweep_tables.write_outputs`) are rewritten
after every run, so a long sweep can be stopped and restarted at will.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from soundloc_tf.config import SOUNDNET8_WEIGHTS, Config
from soundloc_tf.experiments import label_sweep, real_material, superstition, sweep_tables
from soundloc_tf.experiments.provenance import environment, now, plain, write_json

SWEEPS = {"label_sweep": label_sweep, "superstition": superstition,
          "real_material": real_material}
VALIDATION_SCENES = 64  # the Trainer's end-of-run validation (logged to TensorBoard only)
# ../shared/realsets beside the repository: the real material's stamps and photos.
REALSETS_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "..", "..", "..", "shared", "realsets"))
STAMPS_DIR = os.path.join(REALSETS_DIR, "stamps")
PHOTOS_DIR = os.path.join(REALSETS_DIR, "photos")
# Fields that do not change what a run learns or how it is scored.
BOOKKEEPING_FIELDS = frozenset({"log_every", "eval_every", "checkpoint_every",
                                "max_checkpoints", "num_summary_images"})


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run: a table row (`key`) at one model seed (`seed`, added to the base
    config's `train_seed`)."""

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


def config_differences(saved: dict, config: Config) -> list[str]:
    """Fields whose saved value differs from `config`'s, ignoring bookkeeping.

    A field the saved run predates counts only if `config` does not leave it
    at its default, so finished runs stay valid while Config gains fields.
    """
    current = plain(dataclasses.asdict(config))
    defaults = plain({f.name: f.default for f in dataclasses.fields(config)})
    return sorted(name for name, value in current.items()
                  if name not in BOOKKEEPING_FIELDS
                  and (saved[name] != value if name in saved else value != defaults[name]))


@dataclasses.dataclass
class Setting:
    """What a sweep needs besides its runs: data, evaluation and the shared strategy.

    Attributes:
      train_records, test_records: the record sets trained and scored on (real_material);
        None: the synthetic scenes, scored on `num_eval_samples` held-out ones.
      eval_changes: config fields changed for evaluation only (superstition's confound).
      recorded_config: set when summarising finished runs only: the configuration they
        recorded.
    """

    name: str
    output_dir: str
    base_config: Config
    seeds: list[int]
    scale: str
    preset: str = "tiny"
    strategy: Any = None  # tf.distribute.Strategy; one per process
    eval_changes: dict = dataclasses.field(default_factory=dict)
    train_records: str | None = None
    test_records: str | None = None
    evaluation_text: str = ""
    num_cases: int = 8
    class_groups: list[int] | None = None
    class_names: dict[str, str] | None = None
    validation_scenes: int = VALIDATION_SCENES
    log: Callable[[str], None] = print
    recorded_config: dict | None = None


def run_config(setting: Setting, spec: RunSpec) -> Config:
    """The base config with the run's fields and its seed."""
    return setting.base_config.replace(
        **spec.overrides, train_seed=setting.base_config.train_seed + spec.seed)


def _finished(setting: Setting, spec: RunSpec, config: Config) -> dict | None:
    """The saved record of a run that finished with `config`; a finished run with another
    configuration is refused."""
    metrics_path = os.path.join(setting.output_dir, "runs", spec.name, "metrics.json")
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path) as f:
        saved = json.load(f)
    differing = config_differences(saved.get("config") or {}, config)
    if differing:
        raise ValueError(
            "the output directory holds a finished run with another configuration (another "
            "scale or flags?); use a new --output_dir or the same settings. Received: "
            f"{metrics_path} differs in {differing}")
    return saved


def execute(setting: Setting, spec: RunSpec) -> dict:
    """Trains and evaluates one run, or returns its saved record if it already finished.

    The run trains as soundloc-train would train its config (`LocalizationTask`: the
    paper preset from a feature cache shared by the runs on the same towers).
    """
    import keras

    from soundloc_tf.eval import plots
    from soundloc_tf.eval.evaluation import evaluate_detailed
    from soundloc_tf.tasks import evaluation, localization

    config = run_config(setting, spec)
    saved = _finished(setting, spec, config)
    if saved is not None:
        setting.log(f"[{spec.name}] finished earlier; skipped")
        return saved
    run_dir = os.path.join(setting.output_dir, "runs", spec.name)
    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seed)
    task = localization.LocalizationTask(
        config, localization.DataConfig(records=setting.train_records,
                                        validation_records=setting.test_records),
        validation_samples=setting.validation_scenes,
        shared_cache=os.path.join(setting.output_dir, "feature_cache"),
        log=lambda message: setting.log(f"[{spec.name}] {message}"))
    trainer = task.build_trainer(os.path.join(run_dir, "train"), setting.strategy)
    cache = next(({"directory": directory, "count": manifest["count"],
                   "seconds": manifest["seconds"],
                   "bytes": sum(s["bytes"] for s in manifest["shards"])}
                  for directory, manifest in task.feature_caches.items()), None)
    first_step = int(trainer.step.numpy())
    started = time.perf_counter()
    losses = trainer.train()
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    eval_config = config.replace(**setting.eval_changes)
    scenes = evaluation.evaluation_scenes(eval_config, setting.test_records).dataset
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
              "config": plain(dataclasses.asdict(config)),
              "eval_changes": setting.eval_changes, "resumed_from_step": first_step,
              "train_wall_s": train_seconds, "eval_wall_s": eval_seconds,
              "feature_cache": cache,
              "final_losses": losses, "finished": now(), "plots": plot_paths,
              "metrics": result}
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "metrics.json"), record)
    setting.log(f"[{spec.name}] cIoU@0.5 {result['ciou_at_0_5']:.3f}  AUC {result['auc']:.3f}  "
                f"pointing {result['pointing_game']:.3f}  (train {train_seconds:.0f}s, "
                f"eval {eval_seconds:.0f}s)")
    return record


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
    """Builds (or takes) the composite records and names them, their classes and groups in
    the setting."""
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
    base.train_records, base.test_records = train, test
    groups = " (mismatched and off-screen sounds chosen by class group)" \
        if base.class_groups else ""
    base.evaluation_text = (
        f"all {manifests['test_records'].get('count', '?')} pairs of {test}{groups}; attention "
        f"map, fixed threshold {base.base_config.ciou_threshold}, frame "
        f"{base.base_config.eval_size}x{base.base_config.eval_size}")
    return base


def plan(setting: Setting, runs_filter: list[str] | None = None) -> list[RunSpec]:
    """The sweep's runs (rows x seeds), only those keyed in `runs_filter` when given; an
    unknown key is refused, naming the known ones."""
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
    env, started = environment(), now()
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
        return sweep_tables.write_outputs(setting, specs, records, command, env, started)
    records, paths = [], ("", "")
    for i, spec in enumerate(specs, start=1):
        setting.log(f"=== run {i}/{len(specs)}: {spec.name} ({spec.group}, "
                    f"{spec.fraction:.0%} labels)")
        records.append(execute(setting, spec))
        paths = sweep_tables.write_outputs(setting, specs, records, command, env, started)
    return paths


def make_setting(name: str, output_dir: str, base_config: Config, seeds: list[int],
                 scale: str, preset: str = "tiny", strategy: Any = None, confound: float = 0.9,
                 num_cases: int = 8, train_records: str | None = None,
                 test_records: str | None = None, stamps: str = STAMPS_DIR,
                 log: Callable[[str], None] = print) -> Setting:
    """The setting of one sweep, with its data built (real_material's composites) and its
    evaluation described.

    Args:
      name: one of `SWEEPS`.
      output_dir: where the runs, the JSON and the markdown go.
      base_config: the preset with the scale's fields and the command line's on top.
      seeds: the model seeds each row runs at.
      scale: the scale's name as the tables state it ("quick", "full (with ...)").
      preset: the preset's name, recorded.
      strategy: the distribution strategy every run shares (one per process).
      confound: superstition: the cue's probability in the cue runs and the evaluation.
      num_cases: best and worst cases each in every run's overlay plot (0: none).
      train_records, test_records: real_material: record sets instead of composites.
      stamps: real_material: the stamps folder the composites are built from.
      log: where progress lines go.
    """
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

