"""soundloc's side of the PyTorch comparison: the inputs, the reference process, the parity.

`benchmarks/torch_reference.py` runs under an optional environment with torch
(never a dependency of soundloc); this module, under soundloc's, writes it the
batch, weights and loss settings of one heads-only step, starts it, and asks
it for losses and timings one JSON line at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import numpy as np
import tensorflow as tf

from soundloc_tf import losses
from soundloc_tf.config import Config
from soundloc_tf.modeling.models import build_localizer
from soundloc_tf.train.training import compute_losses, localizer_outputs, pick_annotators

# The Python of the optional PyTorch environment (or `python -m benchmarks.run --torch_python`).
TORCH_PYTHON_ENV = "SOUNDLOC_TORCH_PYTHON"
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
VARIANTS = ("as_written", "as_written_authors_loss", "tuned")
# float32 sums in another order (and another library's kernels) on the same batch.
LOSS_TOLERANCE = 1e-4
DENSE_LAYERS = ("sound_fc1", "sound_fc2", "visual_fc1", "visual_fc2")


def torch_python() -> str | None:
    """The torch environment's interpreter named by the environment variable, if any."""
    return os.environ.get(TORCH_PYTHON_ENV) or None


def authors_config(config: Config) -> Config:
    """The authors' objective in soundloc's terms: triplet, ReLU before the softmax, every
    sample's boxes supervising the attention."""
    return config.replace(unsupervised_loss="triplet", attention_relu=True, label_fraction=1.0,
                          supervised_weight=1.0)


def write_inputs(config: Config, localizer, batch: dict, step: tf.Tensor,
                 directory: str) -> dict[str, float]:
    """Writes batch.npz, weights.npz and config.json for the reference; returns soundloc's
    loss on that batch under `config` ("config") and under the authors' objective
    ("authors"), the numbers the reference must reproduce."""
    os.makedirs(directory, exist_ok=True)
    n = int(batch["visual_map"].shape[0])
    annotator = pick_annotators(config, batch, step)
    # The authors' loss supervises every sample; the same hash picks the same annotator.
    everyone = {**batch, "labeled": tf.ones([n], tf.bool)}
    authors = authors_config(config)
    authors_annotator = pick_annotators(authors, everyone, step)
    target = losses.box_target_maps(batch["boxes"], config.map_size, authors_annotator)
    has_target = tf.reduce_sum(target, axis=[1, 2]) > 0
    visual = batch["visual_map"]
    stored = visual.dtype.name
    visual = visual.numpy()
    if stored == "bfloat16":  # numpy has no bfloat16: its bits travel as uint16
        visual = visual.view(np.uint16)
    np.savez(os.path.join(directory, "batch.npz"), visual_map=visual,
             audio_feature=batch["audio_feature"].numpy(), target=target.numpy(),
             mask=tf.cast(batch["labeled"] & has_target, tf.float32).numpy(),
             authors_mask=tf.cast(has_target, tf.float32).numpy())
    weights = {}
    for name in DENSE_LAYERS:
        kernel, bias = localizer.get_layer(name).get_weights()
        weights[f"{name}/kernel"], weights[f"{name}/bias"] = kernel, bias
    np.savez(os.path.join(directory, "weights.npz"), **weights)
    settings = {"visual_dtype": stored, "unsupervised_loss": config.unsupervised_loss,
                "supervised": annotator is not None,
                "supervised_weight": config.supervised_weight,
                "attention_relu": config.attention_relu,
                "attention_temperature": config.attention_temperature,
                "infonce_temperature": config.infonce_temperature,
                "learning_rate": config.learning_rate,
                "sound_hidden_dim": config.sound_hidden_dim,
                "visual_hidden_dim": config.visual_hidden_dim}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(settings, f, indent=1)

    mine = compute_losses(config, localizer_outputs(localizer, batch), batch, n, annotator)
    # The authors' attention has the ReLU, a constructor argument: a twin localiser.
    twin = build_localizer(authors)
    twin.set_weights(localizer.get_weights())
    theirs = compute_losses(authors, localizer_outputs(twin, everyone), everyone, n,
                            authors_annotator)
    # They divide the supervised sum by the batch, soundloc by the labelled count.
    labelled = float(tf.reduce_sum(tf.cast(has_target, tf.float32)))
    return {"config": float(mine["total"]),
            "authors": float(theirs["unsupervised"]
                             + float(theirs["supervised"]) * labelled / n)}


class TorchReference:
    """The reference process: started on `directory`'s inputs, answering one line a request."""

    def __init__(self, python: str, directory: str):
        self.process = subprocess.Popen([python, SCRIPT, f"--inputs={directory}"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.last_loss: dict[str, float] = {}
        self.info = self._answer()

    def _answer(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch reference exited with {self.process.wait()} "
                               "(its error is printed above)")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the PyTorch reference failed: {answer['error']}")
        return answer

    def ask(self, **request: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def seconds(self, variant: str, steps: int) -> float:
        answer = self.ask(cmd="time", variant=variant, steps=steps)
        self.last_loss[variant] = float(answer["loss"])  # a diverged variant shows here
        return float(answer["seconds"])

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.ask(cmd="quit")
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "TorchReference":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def relative_errors(reference: TorchReference, expected: dict[str, float]) -> dict[str, float]:
    """|torch - soundloc| / |soundloc| of each variant's loss on the written batch."""
    got = reference.ask(cmd="loss")
    errors = {}
    for variant in VARIANTS:
        want = expected["authors" if variant == "as_written_authors_loss" else "config"]
        errors[variant] = abs(got[variant] - want) / max(abs(want), 1e-12)
    return errors
