"""Writes docs/RESULTS.md from the experiments' JSON files; nothing in it is typed by hand.

  python -m tools.make_results --results=results/label_sweep,results/superstition \
      [--output=docs/RESULTS.md]

Each --results entry is an experiment's output directory (or its <name>.json)
written by tools/experiment.py. The page gives, per experiment, the command,
scale, seeds, the results table (mean +- sd over seeds), the baselines, the
conclusions the experiment computed, and where and how long it ran
(soundloc_tf/experiments/results_page.py).
"""

from __future__ import annotations

from absl import flags

from . import common

flags.DEFINE_list("results", None, "Experiment output directories (or their <name>.json).")
flags.DEFINE_string("output", "docs/RESULTS.md", "Markdown file to write.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    from soundloc_tf.experiments import results_page

    if not FLAGS.results:
        raise ValueError("--results needs at least one experiment output directory. "
                         "Received: --results=")
    print(f"Wrote {results_page.write_results(FLAGS.results, FLAGS.output)}")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
