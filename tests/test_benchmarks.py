"""Tests of benchmarks/run.py: every named figure is produced and positive (not how fast).

The whole `--quick` run takes minutes on a shared 2-core machine, so the
default tests run its cheapest stages in-process and check the committed
benchmarks/results.json (the output of the last full or quick run) for every
required figure; `test_whole_quick_run` runs all of `--quick` when
SOUNDLOC_BENCH_WHOLE_QUICK=1 is set.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package (pyproject lists
    sys.path.insert(0, str(ROOT))  # soundloc_tf, tools, serving); plain `pytest` needs this

from benchmarks import run  # noqa: E402
from benchmarks.flops import count_macs, layer_macs  # noqa: E402


def _assert_positive(figures: dict, names) -> None:
    missing = [n for n in names if n not in figures]
    assert not missing, f"missing figures: {missing}"
    bad = {n: figures[n] for n in names
           if not (isinstance(figures[n], (int, float)) and math.isfinite(figures[n])
                   and figures[n] > 0)}
    assert not bad, f"figures that are not positive numbers: {bad}"


def test_vgg16_mac_count_matches_the_paper_figure():
    from soundloc_tf.config import get_config
    from soundloc_tf.models import build_image_tower

    tower = build_image_tower(get_config("paper", image_weights="none"))
    assert count_macs(tower) == 31_319_654_400  # 31.32 GMAC to block5_conv3 at 320x320
    assert layer_macs(tower.get_layer("block1_conv1")) == 320 * 320 * 64 * 3 * 3 * 3


def test_cheap_stages_produce_their_figures(tmp_path):
    output = tmp_path / "results.json"
    code = run.main(["--quick", "--no-isolate", "--stages=peak,train_e2e",
                     f"--output={output}", "--intra_op_threads=2"])
    assert code == 0
    results = json.loads(output.read_text())
    _assert_positive(results["figures"], [
        "peak_fp32_gflops", "peak_bf16_gflops", "train_e2e_tiny_fp32_pairs_per_s",
        "train_e2e_tiny_bf16_pairs_per_s", "peak_rss_mb_peak", "peak_rss_mb_train_e2e"])
    assert results["skipped"] == {}
    assert results["machine"]["tensorflow"] and results["machine"]["threads"]["intra_op"] == 2
    assert "| Peak matmul" in results["table_markdown"]


def test_committed_results_hold_every_required_figure():
    path = ROOT / "benchmarks" / "results.json"
    if not path.exists():
        pytest.skip("benchmarks/results.json not written yet (python -m benchmarks.run)")
    results = json.loads(path.read_text())
    _assert_positive(results["figures"], run.REQUIRED_FIGURES)
    assert results["missing_figures"] == []
    for key in ("machine", "notes", "stages", "mode"):
        assert key in results


def test_unknown_stage_is_a_clear_error(capsys):
    assert run.main(["--stages=peak,warp_drive"]) == 2
    assert "warp_drive" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SOUNDLOC_BENCH_WHOLE_QUICK"),
                    reason="the whole --quick run takes minutes; set SOUNDLOC_BENCH_WHOLE_QUICK=1")
def test_whole_quick_run(tmp_path):
    output = tmp_path / "results.json"
    assert run.main(["--quick", f"--output={output}"]) == 0
    results = json.loads(output.read_text())
    _assert_positive(results["figures"], run.REQUIRED_FIGURES)


def test_bf16_quality_trains_both_precisions_and_reports_their_difference(tmp_path):
    # Its own process: the Trainer makes a MirroredStrategy, and two in one process mix up
    # their collectives (see conftest.py).
    import subprocess

    output = tmp_path / "bf16.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.bf16_quality", f"--output={output}",
                           "--train_steps=2", "--num_eval_samples=8"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bf16 - fp32" in done.stdout
    result = json.loads(output.read_text())
    fp32, bf16 = result["runs"]["fp32"], result["runs"]["bf16"]
    for run_ in (fp32, bf16):
        assert 0.0 <= run_["ciou_at_0_5"] <= 1.0 and 0.0 <= run_["auc"] <= 1.0
        assert run_["train_pairs_per_s"] > 0
    for key, value in result["bf16_minus_fp32"].items():
        assert value == pytest.approx(bf16[key] - fp32[key])
    refused = subprocess.run([sys.executable, "-m", "benchmarks.bf16_quality", "--train_steps=0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Received: 0" in refused.stderr


def test_comparison_table_lists_both_runs_and_their_difference():
    from benchmarks.comparison import comparison_table

    table, difference = comparison_table(("auc", "pointing_game"),
                                         ("fp32", {"auc": 0.683, "pointing_game": 1.0}),
                                         ("bf16", {"auc": 0.675, "pointing_game": 0.95}))
    assert difference == pytest.approx({"auc": -0.008, "pointing_game": -0.05})
    lines = table.splitlines()
    assert len(lines) == 5 and lines[1] == "|---|---|---|"
    assert lines[4].split("|")[1:-1] == [" bf16 - fp32 ", "        -0.008 ", "        -0.050 "]
