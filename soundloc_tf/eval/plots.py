"""Evaluation plots (matplotlib, Agg canvas): PNGs beside the metrics, and TensorBoard images.

Figures are drawn on `matplotlib.figure.Figure` with an Agg canvas, never
through pyplot, so no display or global backend is involved and the tools
can run on headless machines and in threads.
"""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from soundloc_tf import metrics
from soundloc_tf.visualize import draw_boxes, overlay

DPI = 100
CURVE_STYLES = {  # label, line style; anything else is drawn plain
    "model": ("model (attention map)", "-"),
    "mismatched_sound": ("model, mismatched sound", "--"),
    "whole_image": ("baseline: whole image", ":"),
    "center_box": ("baseline: centre box", ":"),
    "random_box": ("baseline: random box", ":"),
}


def _save(figure: Figure, path: str) -> str:
    FigureCanvasAgg(figure)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path + ".tmp.png", dpi=DPI)
    os.replace(path + ".tmp.png", path)
    return path


def success_curve(curves: dict[str, np.ndarray], path: str, title: str = "") -> str:
    """Success rate (fraction of images with cIoU >= t) against t, one line per curve.

    `curves` maps a name (see CURVE_STYLES) to per-image cIoU values; the
    legend gives each curve's AUC, the number the follow-up papers report.
    """
    if not curves:
        raise ValueError("need at least one curve. Received: curves={}")
    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    for name, cious in curves.items():
        label, style = CURVE_STYLES.get(name, (name, "-"))
        axes.plot(metrics.AUC_THRESHOLDS, metrics.success_curve(cious), style, marker=".",
                  label=f"{label} (AUC {metrics.auc(cious):.3f})")
    axes.axvline(0.5, color="grey", linewidth=0.5)
    axes.set(xlabel="cIoU threshold t", ylabel="fraction of images with cIoU >= t",
             xlim=(0, 1), ylim=(0, 1.02), title=title or "success rate")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def best_and_worst(cious: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the `count` highest and lowest cIoU images (ties: lower index first)."""
    cious = np.asarray(cious)
    if count < 1:
        raise ValueError(f"count must be >= 1. Received: count={count}")
    order = np.argsort(-cious, kind="stable")
    worst = np.argsort(cious, kind="stable")
    return order[:count], worst[:count]


def gather_elements(dataset: tf.data.Dataset, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Elements at `indices` (in that order) of an unbatched dataset, stacked."""
    wanted = [int(i) for i in indices]
    if not wanted or min(wanted) < 0:
        raise ValueError(f"need non-negative indices. Received: {wanted}")
    found: dict[int, dict] = {}
    for position, element in enumerate(dataset.take(max(wanted) + 1)):
        if position in wanted:
            found[position] = {k: v.numpy() for k, v in element.items()}
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"the dataset is shorter than the indices. Received: {missing[:3]}")
    return {k: np.stack([found[i][k] for i in wanted]) for k in found[wanted[0]]}


def overlay_grid(images: np.ndarray, heatmaps: np.ndarray, boxes: np.ndarray,
                 titles: Sequence[str], path: str, columns: int = 8,
                 suptitle: str = "") -> str:
    """Heat-map overlays [N] with ground-truth boxes [N, B, 4] (white), one title each."""
    if not len(images) == len(heatmaps) == len(boxes) == len(titles) or len(images) == 0:
        raise ValueError("need the same, non-zero number of images, maps, boxes and titles. "
                         f"Received: {len(images)}, {len(heatmaps)}, {len(boxes)}, {len(titles)}")
    tiles = draw_boxes(overlay(images, heatmaps), boxes).numpy()
    columns = min(columns, len(tiles))
    rows = int(np.ceil(len(tiles) / columns))
    figure = Figure(figsize=(1.6 * columns, 2.0 * rows + (0.3 if suptitle else 0)))
    for i, (tile, title) in enumerate(zip(tiles, titles)):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(np.clip(tile, 0, 1))
        axes.set_title(title, fontsize=7)
        axes.axis("off")
    if suptitle:
        figure.suptitle(suptitle, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def per_class(per_class_results: dict[str, dict], path: str,
              class_names: dict[str, str] | None = None, title: str = "") -> str:
    """cIoU@0.5, mean cIoU and pointing game per sounding class, as grouped bars."""
    if not per_class_results:
        raise ValueError("need results of at least one class. Received: {}")
    keys = sorted(per_class_results, key=lambda k: (len(k), k))
    names = [(class_names or {}).get(k, f"class {k}") for k in keys]
    labels = [f"{name}\n(n={per_class_results[k]['n']})" for name, k in zip(names, keys)]
    crowded = len(keys) > 10
    figure = Figure(figsize=(min(16, max(5, (0.45 if crowded else 1.0) * len(keys) + 2)), 4.5))
    axes = figure.add_subplot()
    x = np.arange(len(keys))
    for offset, (metric, label) in zip((-0.27, 0, 0.27), (("ciou_at_0_5", "cIoU@0.5"),
                                                           ("mean_ciou", "mean cIoU"),
                                                           ("pointing_game", "pointing game"))):
        axes.bar(x + offset, [per_class_results[k][metric] for k in keys], 0.27, label=label)
    axes.set_xticks(x, labels, fontsize=7, rotation=60 if crowded else 0,
                    ha="right" if crowded else "center")
    axes.set(ylim=(0, 1.05), ylabel="score", title=title or "per sounding class")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def score_distributions(confidences: dict[str, dict[str, np.ndarray]], path: str,
                        title: str = "") -> str:
    """Histograms of each confidence ('score', 'map_peak') for positives and each negative kind."""
    if "positive" not in confidences:
        raise ValueError("need the positives' confidences under 'positive'. Received: "
                         f"{sorted(confidences)}")
    names = list(confidences["positive"])
    figure = Figure(figsize=(5 * len(names), 3.8))
    for column, name in enumerate(names, start=1):
        axes = figure.add_subplot(1, len(names), column)
        values = np.concatenate([v[name] for v in confidences.values()])
        bins = np.linspace(values.min(), values.max() + 1e-9, 31)
        for kind, by_name in confidences.items():
            axes.hist(by_name[name], bins=bins, histtype="step", linewidth=1.5,
                      label=f"{kind} (n={len(by_name[name])})", density=True)
        axes.set(xlabel=name, ylabel="density", title=f"{title} {name}".strip())
        axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def log_images(logdir: str, pngs: dict[str, str], step: int) -> None:
    """Writes PNG files to TensorBoard as images (tag: the dict key)."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=step):
        for tag, path in pngs.items():
            image = tf.io.decode_png(tf.io.read_file(path), channels=3)
            tf.summary.image(tag, image[None], max_outputs=1)
    writer.flush()
    writer.close()


def write_evaluation_plots(result: dict, details, dataset: tf.data.Dataset, output_dir: str,
                           num_cases: int = 8, tensorboard_dir: str | None = None,
                           step: int = 0, class_names: dict[str, str] | None = None
                           ) -> dict[str, str]:
    """The standard plots of one evaluation, written to `output_dir` (and TensorBoard).

    `details` is the `EvaluationDetails` returned with `result` by
    `evaluation.evaluate_detailed` over `dataset` (needed again only for the
    images of the best and worst cases). Returns {tag: path}.
    """
    rule = result["rule"] + (f" {result['threshold']}" if result.get("threshold") else "")
    paths = {"success_curve": success_curve(
        details.curves, os.path.join(output_dir, "success_curve.png"),
        f"success rate, n={result['n']}, rule: {rule}")}
    if num_cases > 0:
        count = min(num_cases, len(details.ciou))
        best, worst = best_and_worst(details.ciou, count)
        indices = np.concatenate([best, worst])
        elements = gather_elements(dataset, indices)
        def name(class_id: int) -> str:
            return (class_names or {}).get(str(class_id), f"class {class_id}")

        titles = [f"{'best' if i < count else 'worst'} #{index}\ncIoU {details.ciou[index]:.2f}"
                  f" {name(details.class_id[index])}" for i, index in enumerate(indices)]
        paths["best_worst"] = overlay_grid(
            elements["image"], details.attention[indices], details.boxes[indices, 0], titles,
            os.path.join(output_dir, "best_worst.png"), columns=count,
            suptitle=f"top row: {count} best, bottom row: {count} worst (cIoU, rule: {rule})")
    if result.get("per_class"):
        paths["per_class"] = per_class(result["per_class"],
                                       os.path.join(output_dir, "per_class.png"), class_names,
                                       f"per sounding class, rule: {rule}")
    if details.confidences:
        paths["score_distributions"] = score_distributions(
            details.confidences, os.path.join(output_dir, "score_distributions.png"),
            "positives vs negative audio:")
    if tensorboard_dir:
        log_images(tensorboard_dir, {f"evaluation/{k}": v for k, v in paths.items()}, step)
    return paths


def metric_vs_fraction(series: dict[str, list[tuple[float, float, float]]], path: str,
                       ylabel: str, title: str = "",
                       references: dict[str, float] | None = None) -> str:
    """Lines of (label fraction, mean, sd) per series, fractions on evenly spaced ticks.

    `references` draws horizontal lines (e.g. a baseline or a control run).
    Fractions span 0 to 1 with most of the interest below 0.1, so the x axis
    is categorical rather than linear or logarithmic (0 has no logarithm).
    """
    if not series:
        raise ValueError("need at least one series. Received: series={}")
    fractions = sorted({f for points in series.values() for f, _, _ in points})
    position = {f: i for i, f in enumerate(fractions)}
    figure = Figure(figsize=(6.5, 4.2))
    axes = figure.add_subplot()
    for name, points in series.items():
        points = sorted(points)
        x = [position[f] for f, _, _ in points]
        mean = np.array([m for _, m, _ in points])
        sd = np.array([s for _, _, s in points])
        axes.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=name)
    colours = itertools.cycle(("grey", "black", "brown"))
    for (name, value), colour in zip((references or {}).items(), colours):
        axes.axhline(value, linestyle=":", color=colour, label=f"{name} ({value:.2f})")
    axes.set_xticks(range(len(fractions)), [f"{f:.0%}" if f >= 0.01 or f == 0 else f"{f:.1%}"
                                            for f in fractions])
    axes.set(xlabel="labelled fraction of training pairs", ylabel=ylabel, ylim=(0, 1.02),
             title=title)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)
