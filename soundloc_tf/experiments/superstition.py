"""A context cue that announces the sound: does the map follow the cue, and do labels fix it?

  python -m tools.experiment --name=superstition --output_dir=results/superstition [--quick]
      [--confound=1.0 --object_identity=0.25 --max_objects=1 --cue_size=0.25]

Cost on 2 CPU cores: about 2.2 min per run (docs/RESULTS.md: seeds 0,1, 12 runs, 26 min of
runs), so about 40 min for the default 3 seeds x 6 runs.
"""

from typing import Any

from soundloc_tf.experiments import label_sweep

PRESET = "tiny"
DESCRIPTION = ("A context patch whose colour announces the sounding class: does an "
               "unsupervised model look at the patch instead of the object, and how many "
               "labelled pairs put its attention back on the object?")
SCALES: dict[str, dict[str, Any]] = label_sweep.SCALES
SEEDS = label_sweep.SEEDS
LABEL_FRACTIONS = (0.01, 0.05, 0.1, 0.25)
CONFOUND = 1.0  # default of --confound: how often the cue announces the sounding class
# One object, whose look names its class only a quarter of the time (else a random class's
# look), and a cue a quarter of the image side: the cue then predicts the sound better than the
# object does, as a road does a car. With scenes where the object is the better predictor no
# superstition appeared (docs/RESULTS.md keeps that run). Flags override each.
SCENES = {"object_identity": 0.25, "max_objects": 1, "cue_size": 0.25}
# A semi-supervised run corrects the superstition when its peak falls nearer the cue in at most
# CORRECTION_TOLERANCE more scenes than the no-cue control's and on the object in at least
# CORRECTED_MIN_POINTING of them.
CORRECTION_TOLERANCE = 0.05
CORRECTED_MIN_POINTING = 0.5
OBJECTIVE_NAMES = {"infonce": "InfoNCE", "triplet": "triplet"}


def rows(confound: float, objective: str = "infonce") -> list[tuple[str, str, float, dict]]:
    """A no-cue control, the unsupervised model and semi-supervised ones, all with `objective`."""
    if objective not in OBJECTIVE_NAMES:
        raise ValueError(f"the superstition experiment needs an unsupervised objective, one of "
                         f"{sorted(OBJECTIVE_NAMES)}. Received: unsupervised_loss={objective!r}")
    name = OBJECTIVE_NAMES[objective]
    out = [("control_no_cue@0", f"control: unsupervised ({name}), trained without cue", 0.0,
            {"label_fraction": 0.0, "confound": 0.0}),
           ("unsupervised@0", f"unsupervised ({name})", 0.0,
            {"label_fraction": 0.0, "confound": confound})]
    out += [(f"semi_{objective}@{f:g}", f"semi-supervised ({name} + supervised)", f,
             {"label_fraction": f, "confound": confound}) for f in LABEL_FRACTIONS]
    return [(key, group, f, {"unsupervised_loss": objective, **fields})
            for key, group, f, fields in out]
