"""The authors' PyTorch heads step, as written and best-tuned, for the benchmark suite.

Runs under an optional environment that has `torch` and `numpy` (never soundloc's own:
torch is no dependency of the project), started by `benchmarks.run` with
`--torch_python` or SOUNDLOC_TORCH_PYTHON:

    /path/to/torch-env/bin/python benchmarks/torch_reference.py --inputs=DIR

DIR holds what soundloc's heads step trains on, written by `benchmarks.run`:
`batch.npz` (one cached batch: the 16-bit visual maps [B, m, m, C] in the cache's
NHWC layout, the audio features [B, D], the supervised target maps [B, m, m] of
soundloc's annotator choice, and the masks of the samples the configured loss and
the authors' loss supervise), `weights.npz` (the localiser's
Keras Dense kernels and biases) and `config.json` (the loss settings).  The
process then answers one JSON line per request line on stdin, so the suite can
interleave its timed repetitions with soundloc's and noise hits both alike:

    {"cmd": "info"}                          -> versions, threads, variants
    {"cmd": "loss"}                          -> each variant's loss on the batch
    {"cmd": "time", "variant": V, "steps": N} -> seconds for N update steps

Variants:

* `as_written`: the heads of the authors' `AVModel.forward` (sound fc1-relu-fc2,
  F.normalize of the sound and of a copy of the NCHW map, permute, bmm, softmax,
  z = the map weighted by the attention, relu-fc1-relu-fc2), eager, Adam, the
  default thread count.  The cache's NHWC map is made the contiguous NCHW tensor
  their `.view(N, 512, 400)` needs inside the step (their VGG handed it over).
  Its loss is soundloc's configured one, so both steps optimise the same thing.
* `as_written_authors_loss`: the same forward with the authors' own losses
  (`UnsupervisedLoss`: softmax over [d+, d-] against [0, 1], squared, mean;
  `SupervisedLoss`: cross-entropy of the attention with the target map, weighted).
* `tuned`: the same arithmetic written for speed: the NHWC map read in place as a
  channels-last NCHW view (no copy), the cosine as (v . s) / |v| without a
  normalised copy of the map, the whole forward and loss under `torch.compile`
  (when it works here; eager otherwise, reported), fused Adam, threads = cores,
  denormals flushed to zero (as TensorFlow's CPU threads do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

VARIANTS = ("as_written", "as_written_authors_loss", "tuned")


class Heads(torch.nn.Module):
    """The trainable part of the authors' AVModel: two sound and two vision FC layers."""

    def __init__(self, audio_dim: int, sound_hidden: int, channels: int, visual_hidden: int):
        super().__init__()
        self.sound_fc1 = torch.nn.Linear(audio_dim, sound_hidden)
        self.sound_fc2 = torch.nn.Linear(sound_hidden, channels)
        self.vision_fc1 = torch.nn.Linear(channels, visual_hidden)
        self.vision_fc2 = torch.nn.Linear(visual_hidden, audio_dim)

    def load_keras(self, weights: dict[str, np.ndarray]) -> None:
        """Keras Dense kernels are [in, out]; torch Linear weights are [out, in]."""
        names = {"sound_fc1": "sound_fc1", "sound_fc2": "sound_fc2",
                 "vision_fc1": "visual_fc1", "vision_fc2": "visual_fc2"}
        with torch.no_grad():
            for mine, keras_name in names.items():
                layer = getattr(self, mine)
                layer.weight.copy_(torch.from_numpy(weights[f"{keras_name}/kernel"].T.copy()))
                layer.bias.copy_(torch.from_numpy(weights[f"{keras_name}/bias"]))


def forward_as_written(heads: Heads, visual_nhwc: torch.Tensor, audio: torch.Tensor,
                       relu: bool, temperature: float) -> dict[str, torch.Tensor]:
    """The localisation module of `AVModel.forward` on a cached map, step for step."""
    n, m, _, c = visual_nhwc.shape
    vis_embedding = visual_nhwc.float().permute(0, 3, 1, 2).contiguous()  # (N, 512, 20, 20)
    h = heads.sound_fc1(audio.float())
    h = F.relu(h)
    h = heads.sound_fc2(h)
    h = F.normalize(h, p=2, dim=1)
    sound = h
    h = h.unsqueeze(2)
    normalized = F.normalize(vis_embedding, p=2, dim=1)
    reshaped = normalized.view(n, c, m * m).permute(0, 2, 1)
    att_map = torch.matmul(reshaped, h)
    att_map = torch.squeeze(att_map, 2)
    cosine = att_map
    if relu:
        att_map = F.relu(att_map)
    att_map = torch.softmax(att_map / temperature, dim=-1)
    z = torch.matmul(vis_embedding.view(n, c, m * m), att_map.unsqueeze(2))
    z = torch.squeeze(z, 2)
    z = F.relu(z)
    z = heads.vision_fc1(z)
    z = F.relu(z)
    z = heads.vision_fc2(z)
    return {"visual_feature": z, "attention": att_map, "cosine": cosine, "sound": sound,
            "visual_unit": reshaped}


def forward_tuned(heads: Heads, visual_nhwc: torch.Tensor, audio: torch.Tensor,
                  relu: bool, temperature: float) -> dict[str, torch.Tensor]:
    """The same outputs from one matrix product of every location with every sound.

    The NHWC map is read as a channels-last [N*hw, C] matrix (its own layout, no
    permuted copy), the cosine is (v . s) / |v| without a normalised copy of the map,
    and the [N*hw, C] x [C, N] product serves the attention (its diagonal) and the
    InfoNCE logits (its max over locations) alike.
    """
    n, m, _, c = visual_nhwc.shape
    flat = visual_nhwc.float().reshape(n * m * m, c)
    sound = F.normalize(heads.sound_fc2(F.relu(heads.sound_fc1(audio.float()))), p=2, dim=1)
    inverse_norm = torch.rsqrt(torch.clamp((flat * flat).sum(-1), min=1e-12))
    every = (flat @ sound.t() * inverse_norm[:, None]).view(n, m * m, n)  # [image, loc, sound]
    cosine = torch.diagonal(every, dim1=0, dim2=2).t()  # [N, hw]: each image's own sound
    logits = F.relu(cosine) if relu else cosine
    attention = torch.softmax(logits / temperature, dim=-1)
    z = torch.bmm(attention.unsqueeze(1), flat.view(n, m * m, c)).squeeze(1)
    z = heads.vision_fc2(F.relu(heads.vision_fc1(F.relu(z))))
    return {"visual_feature": z, "attention": attention, "cosine": cosine, "sound": sound,
            "every": every}


def infonce(image_to_sound: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE on one device, as soundloc computes it: both directions from one
    matrix of max-pooled cosines, the mean over the batch."""
    labels = torch.arange(image_to_sound.shape[0])
    logits = image_to_sound / temperature
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def soundloc_loss(out: dict[str, torch.Tensor], audio: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor, settings: dict) -> torch.Tensor:
    """soundloc's configured objective (`training.compute_losses`) on these outputs."""
    n = audio.shape[0]
    if settings["unsupervised_loss"] == "infonce":
        if "visual_unit" in out:  # [N, hw, C] unit vectors, already written by as-written
            image_to_sound = torch.matmul(out["sound"], out["visual_unit"].transpose(1, 2)
                                          ).amax(dim=2)
        else:
            image_to_sound = out["every"].amax(dim=1)
        unsupervised = infonce(image_to_sound, settings["infonce_temperature"])
    elif settings["unsupervised_loss"] == "triplet":
        audio = audio.float()
        negative = torch.roll(audio, -1, 0)  # the next clip's sound, as soundloc pairs them
        unsupervised = authors_unsupervised(out["visual_feature"], audio, negative)
    else:
        unsupervised = torch.zeros([])
    total = unsupervised
    if settings["supervised"]:
        log_alpha = torch.log(torch.clamp(out["attention"], min=1e-8))
        per_example = -(target.reshape(n, -1) * log_alpha).sum(1) * mask
        total = total + settings["supervised_weight"] * per_example.sum() / mask.sum().clamp(
            min=1.0)
    return total


def authors_unsupervised(f_v: torch.Tensor, f_pos: torch.Tensor,
                         f_neg: torch.Tensor) -> torch.Tensor:
    """`UnsupervisedLoss`: softmax over the two distances against [0, 1], squared, mean."""
    d_pos = F.pairwise_distance(f_v, f_pos, keepdim=False, eps=0.0)
    d_neg = F.pairwise_distance(f_v, f_neg, keepdim=False, eps=0.0)
    dist_softmax = F.softmax(torch.stack((d_pos, d_neg), 1), dim=-1)
    dist_target = torch.stack((torch.zeros(f_v.size(0)), torch.ones(f_v.size(0))), 1)
    return ((dist_softmax - dist_target) ** 2).mean()


def authors_loss(out: dict[str, torch.Tensor], audio: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
    """`UnsupervisedLoss` + `SupervisedLoss` (weights[:, 0] is the labelled flag)."""
    audio = audio.float()
    unsupervised = authors_unsupervised(out["visual_feature"], audio, torch.roll(audio, -1, 0))
    cross_entropy = -(torch.sum(torch.mul(target.reshape(audio.shape[0], -1),
                                          torch.log(out["attention"])), 1))
    return unsupervised + torch.mul(cross_entropy, mask).mean()


class Reference:
    """The three variants on one batch, each with its own copy of the same weights."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, "config.json")) as f:
            self.settings = json.load(f)
        batch = np.load(os.path.join(directory, "batch.npz"))
        weights = dict(np.load(os.path.join(directory, "weights.npz")))
        self.threads = os.cpu_count() or 1
        self.default_threads = torch.get_num_threads()
        s = self.settings
        # The cache's 16-bit map as stored (float16 or bfloat16 bits arrive as uint16).
        visual = torch.from_numpy(batch["visual_map"])
        if s["visual_dtype"] == "bfloat16":
            visual = visual.view(torch.bfloat16)
        self.visual = visual
        self.audio = torch.from_numpy(batch["audio_feature"])
        self.target = torch.from_numpy(batch["target"]).float()
        self.mask = torch.from_numpy(batch["mask"]).float()
        self.authors_mask = torch.from_numpy(batch["authors_mask"]).float()
        n, m, _, c = self.visual.shape
        shapes = (self.audio.shape[1], s["sound_hidden_dim"], c, s["visual_hidden_dim"])
        self.compiled = "not tried"
        self.steps: dict[str, Callable[[], torch.Tensor]] = {}
        self.losses: dict[str, Callable[[], torch.Tensor]] = {}
        for variant in VARIANTS:
            heads = Heads(*shapes)
            heads.load_keras(weights)
            self._make(variant, heads)

    def _make(self, variant: str, heads: Heads) -> None:
        s = self.settings
        relu, temperature = s["attention_relu"], s["attention_temperature"]
        if variant == "as_written_authors_loss":
            def loss() -> torch.Tensor:  # the authors' attention has the ReLU
                out = forward_as_written(heads, self.visual, self.audio, True, temperature)
                return authors_loss(out, self.audio, self.target, self.authors_mask)
        else:
            forward = forward_as_written if variant == "as_written" else forward_tuned

            def loss() -> torch.Tensor:
                out = forward(heads, self.visual, self.audio, relu, temperature)
                return soundloc_loss(out, self.audio, self.target, self.mask, s)
        tuned = variant == "tuned"
        optimizer = torch.optim.Adam(heads.parameters(), lr=s["learning_rate"],
                                     **({"fused": True} if tuned else {}))
        if tuned:
            loss = self._compile(loss)

        def step() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            value = loss()
            value.backward()
            optimizer.step()
            return value

        self.losses[variant], self.steps[variant] = loss, step

    def _compile(self, loss: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """torch.compile where its C++ toolchain works here; eager otherwise (reported)."""
        try:
            compiled = torch.compile(loss, dynamic=False)
            with self._threads("tuned"):
                compiled().backward()  # compiles forward and backward now, not when timed
            self.compiled = "torch.compile (inductor)"
            return compiled
        except Exception as error:  # no compiler, or inductor fails on this CPU
            self.compiled = f"eager ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
            return loss

    def _threads(self, variant: str):
        reference = self

        class Threads:
            def __enter__(self):
                tuned = variant == "tuned"
                torch.set_num_threads(reference.threads if tuned else reference.default_threads)
                # TensorFlow's CPU threads flush denormals to zero; tuned PyTorch does too.
                torch.set_flush_denormal(tuned)

            def __exit__(self, *exc):
                return False
        return Threads()

    def info(self) -> dict:
        return {"torch": torch.__version__, "numpy": np.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "default_threads": self.default_threads, "tuned_threads": self.threads,
                "tuned_compiler": self.compiled, "variants": list(VARIANTS),
                "batch": int(self.visual.shape[0]), "visual_dtype": str(self.visual.dtype)}

    def loss(self) -> dict:
        with torch.no_grad():
            return {v: float(self.losses[v]()) for v in VARIANTS}

    def time(self, variant: str, steps: int) -> dict:
        with self._threads(variant):
            started = time.perf_counter()
            for _ in range(steps):
                value = self.steps[variant]()
            last = float(value.detach())
            seconds = time.perf_counter() - started
        return {"seconds": seconds, "loss": last}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True, help="directory written by benchmarks.run")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    reference = Reference(args.inputs)
    print(json.dumps({"ready": True, **reference.info()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["cmd"] == "quit":
                break
            answer = {"info": reference.info, "loss": reference.loss}.get(request["cmd"])
            result = answer() if answer else reference.time(request["variant"],
                                                            int(request["steps"]))
        except Exception as error:  # reported to the suite, which records it as skipped
            result = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
