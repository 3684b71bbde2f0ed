"""Runs an experiment by name: its preset, scale, seeds and overrides resolved, then the
sweep, the real-photo folds or the within-category folds.

`tools/experiment.py` parses flags into a `Launch` and calls `run_named`; tests and
notebooks can do the same without a command line.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from soundloc_tf import config as config_lib
from soundloc_tf.experiments import real_photos, superstition, sweeps, within_category
from soundloc_tf.experiments.provenance import environment

EXPERIMENTS = {**sweeps.SWEEPS, "real_photos": real_photos, "within_category": within_category}


@dataclasses.dataclass(frozen=True)
class Launch:
    """One experiment as asked for (tools/experiment.py's flags, which document each).

    Attributes:
      name: one of `EXPERIMENTS`.
      output_dir: where the runs, the JSON and the markdown go.
      command: the command line, recorded in the summary.
      quick: the quick scale (minutes: the pipeline runs) instead of the full one.
      preset: the starting configuration; None: the experiment's own.
      overrides: config fields given explicitly, applied over the preset and the scale.
      seeds: the model seeds; None: the scale's.
      runs: only these rows' keys; None: every row.
      photos: real_photos (one) and within_category (several): the photo sets.
      stamps: the stamps folder (real_material's composites, the real-photo folds).
      train_records, test_records: real_material: record sets instead of composites.
      summarize_only: train nothing; summarise the finished runs (the sweeps).
      num_cases: best and worst cases each in every run's overlay plot (the sweeps).
    """

    name: str
    output_dir: str
    command: str
    quick: bool = False
    preset: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: list[int] | None = None
    runs: list[str] | None = None
    photos: tuple[str, ...] = (sweeps.PHOTOS_DIR,)
    stamps: str = sweeps.STAMPS_DIR
    train_records: str | None = None
    test_records: str | None = None
    summarize_only: bool = False
    num_cases: int = 8

    def __post_init__(self) -> None:
        if self.name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment; expected one of {sorted(EXPERIMENTS)}. "
                             f"Received: name={self.name!r}")


def run_named(launch: Launch, log: Callable[[str], None] = print) -> str:
    """Runs (or resumes) the experiment; returns the line that says what it wrote.

    Args:
      launch: the experiment and its settings.
      log: where progress lines go.
    """
    from soundloc_tf.train.training import make_strategy

    scale = "quick" if launch.quick else "full"
    settings = EXPERIMENTS[launch.name]
    preset = launch.preset or settings.PRESET
    explicit = dict(launch.overrides)
    if launch.name == "within_category":
        config = config_lib.get_config(preset, **{**settings.SCALES[scale], **explicit})
        summary = within_category.run_within_category(
            config, launch.output_dir, scale, list(launch.photos), launch.stamps,
            make_strategy(), environment(), launch.command, launch.runs, seeds=launch.seeds,
            log=log)
        return summary["markdown"]
    if launch.name == "real_photos":
        from soundloc_tf.experiments import photo_folds

        if len(launch.photos) != 1:
            raise ValueError(f"real_photos takes one --photos folder. Received: "
                             f"{','.join(launch.photos)}")
        config = config_lib.get_config(preset, **{**settings.SCALES[scale], **explicit})
        summary = photo_folds.run_real_photos(
            config, launch.output_dir, scale, launch.photos[0], launch.stamps,
            make_strategy(), environment(), launch.command, launch.runs, log=log,
            seeds=launch.seeds)
        return (f"Wrote {os.path.join(launch.output_dir, 'real_photos.json')}: "
                f"{len(summary['runs'])} runs")
    # superstition: the confound sets the cue's probability in the runs that have a cue
    # (and in every run's evaluation scenes), not in the base configuration.
    confound = (explicit.pop("confound", superstition.CONFOUND)
                if launch.name == "superstition" else 0.0)
    scenes = superstition.SCENES if launch.name == "superstition" else {}
    base_config = config_lib.get_config(preset,
                                        **{**settings.SCALES[scale], **scenes, **explicit})
    seeds = launch.seeds or settings.SEEDS[scale]
    if explicit:
        scale += " (with " + ", ".join(f"{k}={v}" for k, v in sorted(explicit.items())) + ")"
    if launch.name == "real_material":
        sweeps.check_real_material_inputs(launch.stamps, launch.train_records,
                                          launch.test_records)
    setting = sweeps.make_setting(
        launch.name, launch.output_dir, base_config, seeds, scale, preset, confound=confound,
        num_cases=launch.num_cases, train_records=launch.train_records,
        test_records=launch.test_records, stamps=launch.stamps, log=log)
    setting.strategy = make_strategy()
    json_path, md_path = sweeps.run_experiment(setting, launch.command, launch.runs,
                                               launch.summarize_only)
    return f"Wrote {json_path} and {md_path}"
