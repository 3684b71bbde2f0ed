"""What the real-photo experiments share: held-out scenes as a client sends them, the
frozen towers run once on them, and the maps of a trained localiser or of a SavedModel.

Every experiment that scores real photographs decodes images with the SavedModel's own
decoder and reads the towers' outputs once per fold (the feature cache's reasoning applied
to validation), so their numbers are comparable and served maps equal the model's.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Callable

import numpy as np

from soundloc_tf import wav_encode

# The ids `importers` gives scenes it composed (a composite, a mosaic): their box is where
# the sounding object or tile was put, known without anyone drawing it.
COMPOSED_IDS = r"(composite|mosaics)/.*"
RESUMED = " ; then "  # joins the commands of a resumed experiment in its summary


def select_runs(plan: list, runs_filter: list[str] | None, experiment: str) -> list:
    """The rows of `plan` (objects with a `key`) named in `runs_filter`, in plan order; all
    of them without a filter. An unknown key is refused, naming the known ones."""
    if not runs_filter:
        return plan
    unknown = sorted(set(runs_filter) - {r.key for r in plan})
    if unknown:
        raise ValueError(f"unknown run(s) for {experiment}; expected some of "
                         f"{[r.key for r in plan]}. Received: {unknown}")
    return [r for r in plan if r.key in runs_filter]


def composed_labels(dataset_fn: Callable) -> Callable:
    """A Trainer dataset function whose composed scenes are labelled and whole photos not."""
    import tensorflow as tf

    return lambda start: dataset_fn(start).map(
        lambda sample: {**sample, "labeled": tf.strings.regex_full_match(sample["id"],
                                                                         COMPOSED_IDS)})


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    """A held-out sound as a client sends it: 16-bit PCM WAV bytes.

    By libsndfile's rule (`wav_encode.PCM_RULES`), which wrote these sounds before
    wav_encode was the one encoder: the same bytes, so the experiments' results stay.

    Args:
      waveform: [F] mono, full scale at +-1.
      sample_rate: in Hz.
    """
    return wav_encode.wav_bytes(waveform, sample_rate, rule="libsndfile")


def decoded(images: list[bytes], matched: list[bytes], mismatched: list[bytes],
            config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """JPEG images -> [N, S, S, 3] in [0, 1]; both sounds' WAVs -> waveforms at the config's
    rate and length.

    The images go through the SavedModel's own decoder, as training's records and served
    queries do: another JPEG decoder moves pixels by up to 17/255 and, on maps this flat,
    the peaks of some mosaics with them. The waveforms are resampled as the records are.
    """
    import soundfile
    import tensorflow as tf

    from soundloc_tf.dataloaders import audio_io
    from soundloc_tf.inference import image_decode

    size, n = config.image_size, config.num_samples
    decode = tf.function(lambda contents: image_decode.decode_image(contents, size))
    pixels = np.stack([decode(tf.constant(b)).numpy() for b in images])

    def waves(items: list[bytes]) -> np.ndarray:
        out = []
        for raw in items:
            wave, rate = soundfile.read(io.BytesIO(raw), dtype="float32")
            wave = audio_io.resample(wave, rate, config.sample_rate)[:n]
            out.append(np.pad(wave, [0, n - len(wave)]))
        return np.stack(out)

    return pixels, waves(matched), waves(mismatched)


@dataclasses.dataclass
class TowerOutputs:
    """The frozen towers' outputs on a fold's validation mosaics and both their sounds."""

    visual: np.ndarray  # [N, m, m, C]
    matched: np.ndarray  # [N, D]
    mismatched: np.ndarray  # [N, D]


def tower_outputs(model, images: np.ndarray, matched: np.ndarray, mismatched: np.ndarray,
                  batch: int = 8) -> TowerOutputs:
    """Runs the model's towers once; every run on the same towers reuses the outputs (the
    feature cache's reasoning, applied to validation)."""
    from soundloc_tf.modeling import models

    towers = models.split_model(model)

    def run(tower, values: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(tower(values[i:i + batch], training=False))
                               for i in range(0, len(values), batch)])

    return TowerOutputs(run(towers.image, images), run(towers.audio, matched),
                        run(towers.audio, mismatched))


def model_maps(model, visual: np.ndarray, audio: np.ndarray, batch: int = 25) -> np.ndarray:
    """The model's attention maps [N, m, m] from its towers' outputs, through its localiser
    (the path training and evaluation share)."""
    from soundloc_tf.modeling import models

    localizer = models.split_model(model).localizer
    return np.concatenate([np.asarray(localizer([visual[i:i + batch], audio[i:i + batch]],
                                                training=False)["attention"])
                           for i in range(0, len(visual), batch)])


def serving_maps(signature, images: list[bytes], sounds: list[bytes],
                 batch: int = 8) -> np.ndarray:
    """Heat maps from a SavedModel's serving_default, queried with JPEG and WAV bytes."""
    import tensorflow as tf

    out = []
    for i in range(0, len(images), batch):
        result = signature(image_bytes=tf.constant(images[i:i + batch]),
                           wav_bytes=tf.constant(sounds[i:i + batch]))
        out.append(result["heatmap"].numpy())
    return np.concatenate(out)


def resumed_summary(path: str, command: str) -> tuple[dict, str]:
    """The summary an experiment left at `path` (empty when there is none), and the command
    line to record: a command that adds runs is recorded after the first, so the table's
    provenance names both; one already recorded is not repeated.

    Args:
      path: the experiment's summary JSON.
      command: this command line.
    """
    if not os.path.exists(path):
        return {}, command
    with open(path) as f:
        previous = json.load(f)
    recorded = previous.get("command", command)
    if command not in recorded.split(RESUMED):
        recorded += RESUMED + command
    return previous, recorded


def write_summary(output_dir: str, name: str, summary: dict, markdown: str) -> None:
    """<name>.json (written whole, then moved in place: a reader never sees half of it) and
    <name>.md in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(path + ".tmp", path)
    with open(os.path.join(output_dir, f"{name}.md"), "w") as f:
        f.write(markdown)
