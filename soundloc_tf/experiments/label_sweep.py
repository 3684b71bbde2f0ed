"""How much do labels help? The tiny model without labels, with labels only, and with both.

  python -m tools.experiment --name=label_sweep --output_dir=results/label_sweep [--quick]

Cost on 2 CPU cores: about 2.4 min per run at the preset's 800 steps (docs/RESULTS.md: seeds
0,1, 20 runs, 47 min of runs), so about 70 min for the default 3 seeds x 10 runs.
"""

from typing import Any

PRESET = "tiny"
DESCRIPTION = ("How much do labels help? The same tiny model trained without labels (InfoNCE, "
               "or the paper's triplet loss), with labels only, and with both.")
SCALES: dict[str, dict[str, Any]] = {
    # A few hundred steps: the sweep's shape in minutes on 2 CPU cores.
    "quick": {"train_steps": 200, "num_eval_samples": 200, "checkpoint_every": 100,
              "log_every": 50},
    # The preset's own training length.
    "full": {"num_eval_samples": 500},
}
SEEDS = {"quick": [0], "full": [0, 1, 2]}
LABEL_FRACTIONS = (0.01, 0.05, 0.1, 1.0)


def rows() -> list[tuple[str, str, float, dict]]:
    """(key, group, label fraction, config fields) of every table row."""
    out = [("unsupervised_infonce@0", "unsupervised (InfoNCE)", 0.0,
            {"unsupervised_loss": "infonce", "label_fraction": 0.0}),
           ("unsupervised_triplet@0", "unsupervised (triplet, the paper's)", 0.0,
            {"unsupervised_loss": "triplet", "label_fraction": 0.0})]
    out += [(f"supervised_only@{f:g}", "supervised only", f,
             {"unsupervised_loss": "none", "label_fraction": f}) for f in LABEL_FRACTIONS]
    out += [(f"semi_infonce@{f:g}", "semi-supervised (InfoNCE + supervised)", f,
             {"unsupervised_loss": "infonce", "label_fraction": f}) for f in LABEL_FRACTIONS]
    return out
