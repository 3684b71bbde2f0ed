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
    from soundloc_tf.modeling.models import build_image_tower

    tower = build_image_tower(get_config("paper", image_weights="none"))
    assert count_macs(tower) == 31_319_654_400  # 31.32 GMAC to block5_conv3 at 320x320
    assert layer_macs(tower.get_layer("block1_conv1")) == 320 * 320 * 64 * 3 * 3 * 3


@pytest.mark.slow
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
    # Without oneDNN's int8 kernels (TensorFlow's default on CPUs without AVX-512 VNNI)
    # the int8 tower's figures are skipped with that reason, not missing.
    unsupported = results["unsupported_figures"]
    assert all("int8" in k for k in unsupported) and results["missing_figures"] == []
    assert "PyTorch reference | not run" in results["table_markdown"] or \
        os.environ.get("SOUNDLOC_TORCH_PYTHON")
    _assert_positive(results["figures"], [k for k in run.REQUIRED_FIGURES
                                          if k not in unsupported])


@pytest.mark.slow
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


def test_heads_update_flops_counts_the_products_of_one_update():
    from benchmarks.flops import heads_update_flops
    from benchmarks.torch_compare import authors_config
    from soundloc_tf.config import get_config

    paper = get_config("paper", image_weights="none", audio_weights="none")
    hw, c = 20 * 20, 512
    sound = 2 * 1000 * 1000 + 3 * 1000 * 512  # fc1 forward + weights; fc2 also back to fc1
    # InfoNCE: |v|^2, the own cosine, every location against every sound and its gradient.
    assert heads_update_flops(paper, 30) == 2 * (sound + 2 * hw * c + 2 * 30 * hw * c)
    assert heads_update_flops(paper, 30) / 1e9 == pytest.approx(0.03247, abs=1e-5)
    # The authors' objective: triplet through the attended map and both visual heads, the
    # attention in the loss; no batch-wide product.
    heads = 512 * 512 + 512 * 1000
    authors = authors_config(paper)
    expected = 2 * (sound + hw * c + 2 * hw * c + 2 * hw * c + 3 * heads)
    assert heads_update_flops(authors, 30) == heads_update_flops(authors, 7) == expected


def test_without_pytorch_the_table_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("SOUNDLOC_TORCH_PYTHON", raising=False)
    st = run.Stage("train_cache", run.QUICK, str(tmp_path), lambda _: None)
    run._torch_comparison(st, trainer=None, fixed=None)  # returns before touching either
    assert st.figures == {} and st.skipped == {}
    table = run.format_table({}, st.notes)
    assert ("| PyTorch reference | not run: no PyTorch environment (--torch_python or "
            "$SOUNDLOC_TORCH_PYTHON) |") in table.splitlines()
    assert "PyTorch reference" not in run.format_table({}, {})


def test_heads_ratios_to_pytorch_and_to_the_peak_come_from_one_run():
    figures = {"heads_soundloc_pairs_per_s": 300.0, "heads_torch_tuned_pairs_per_s": 100.0,
               "heads_torch_as_written_pairs_per_s": 60.0, "peak_fp32_gflops": 50.0,
               "heads_gflop_per_pair": 0.03}
    run.derive(figures)
    assert figures["heads_soundloc_over_torch_tuned"] == pytest.approx(3.0)
    assert figures["heads_soundloc_over_torch_as_written"] == pytest.approx(5.0)
    assert figures["heads_soundloc_pct_of_peak"] == pytest.approx(18.0)
    assert figures["heads_torch_tuned_pct_of_peak"] == pytest.approx(6.0)
    assert "heads_soundloc_over_torch_as_written_authors_loss" not in figures
    table = run.format_table(figures)
    assert "| 300 / 60.0 / n/a / 100 |" in table and "| 5.00 / n/a / 3.00 |" in table


def _random_cached_batch(config, n: int):
    import numpy as np
    import tensorflow as tf

    from soundloc_tf.dataloaders import data

    rng = np.random.default_rng(0)
    m, c = config.map_size, config.visual_dim
    boxes = np.zeros([n, data.MAX_ANNOTATORS, data.MAX_BOXES, 4], np.float32)
    for i in range(0, n, 2):  # every other sample annotated, 1-2 annotators, 1-2 boxes
        for a in range(1 + i % 2):
            for b in range(1 + (i // 2) % 2):
                x0, y0 = rng.uniform(0, 0.6, 2)
                boxes[i, a, b] = [x0, y0, x0 + rng.uniform(0.1, 0.4), y0 + rng.uniform(0.1, 0.4)]
    return {"visual_map": tf.constant(rng.gamma(1.0, 1.0, [n, m, m, c]), tf.float16),
            "audio_feature": tf.constant(rng.normal(0, 1, [n, config.audio_feature_dim]),
                                         tf.float16),
            "boxes": tf.constant(boxes), "labeled": tf.constant(rng.uniform(size=n) < 0.7),
            "id": tf.constant([f"pair-{i}" for i in range(n)])}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SOUNDLOC_TORCH_PYTHON"),
                    reason="needs the optional PyTorch environment: set SOUNDLOC_TORCH_PYTHON to "
                           "its python (benchmarks/README.md, 'PyTorch reference')")
def test_pytorch_reference_reproduces_soundlocs_losses(tmp_path):
    import keras
    import tensorflow as tf

    from benchmarks import torch_compare
    from soundloc_tf.config import get_config
    from soundloc_tf.modeling.models import build_localizer

    tiny = get_config("tiny")  # InfoNCE with a supervised term on the labelled pairs
    for name, config in (("infonce", tiny),
                         ("triplet", tiny.replace(unsupervised_loss="triplet",
                                                  attention_relu=True))):
        keras.utils.set_random_seed(1)
        localizer = build_localizer(config)
        batch = _random_cached_batch(config, 6)
        inputs = str(tmp_path / name)
        expected = torch_compare.write_inputs(config, localizer, batch,
                                              tf.constant(3, tf.int64), inputs)
        with torch_compare.TorchReference(os.environ["SOUNDLOC_TORCH_PYTHON"],
                                          inputs) as reference:
            errors = torch_compare.relative_errors(reference, expected)
            assert max(errors.values()) < torch_compare.LOSS_TOLERANCE, (name, errors)
            for variant in torch_compare.VARIANTS:
                assert reference.seconds(variant, 2) > 0
            assert reference.info["torch"] and reference.info["batch"] == 6
