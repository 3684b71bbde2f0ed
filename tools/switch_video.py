"""Writes a test clip whose sound switches from one object to another.

  soundloc-switch-video --workdir=runs/tiny --output=switch.mp4

One held-out synthetic scene with two or more objects is held still for
`--seconds`; the first half of the sound track is the class sound of the
scene's sounding object, the second half that of a silent distractor (taken
from another held-out scene whose sounding class is the distractor's).  Run
`soundloc-localize --workdir=... --video=switch.mp4` on it: a model that
localises sound moves its heat map from the first object to the second.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from . import common

flags.DEFINE_string("workdir", None, "Training run directory (for its config).", required=True)
flags.DEFINE_string("output", "switch.mp4", "The MP4 to write (H.264 + AAC).")
flags.DEFINE_float("seconds", 4.0, "Clip length; the sound switches half-way.", lower_bound=1.0)
flags.DEFINE_integer("fps", 8, "Frames per second.", lower_bound=1)
flags.DEFINE_integer("frame_size", 288, "Side of the written frames in pixels.", lower_bound=32)
FLAGS = flags.FLAGS

SEARCH_LIMIT = 2000  # held-out scenes to search for a fitting pair


def _find_pair(config):
    """A scene with >= 2 objects and, for its first distractor, a scene sounding that class."""
    from soundloc_tf.dataloaders import data

    scenes = data.synthetic_dataset(config, config.eval_seed, count=SEARCH_LIMIT,
                                    with_extras=True)
    first, by_class = None, {}
    for scene in scenes.as_numpy_iterator():
        by_class.setdefault(int(scene["class_id"]), scene)
        if first is None and (scene["object_classes"] >= 0).sum() >= 2:
            first = scene
        if first is not None and int(first["object_classes"][1]) in by_class:
            return first, by_class[int(first["object_classes"][1])]
    raise ValueError(f"no fitting pair of scenes among {SEARCH_LIMIT} held-out scenes")


def _tile(clip: np.ndarray, samples: int) -> np.ndarray:
    return np.resize(clip, samples)  # repeats the clip to the length


def main(argv: list[str]) -> None:
    import av
    from PIL import Image

    from soundloc_tf.train.run_dir import load_saved_config

    config = load_saved_config(FLAGS.workdir)
    if config is None:
        raise ValueError(f"no training run found. Received: workdir={FLAGS.workdir!r}")
    scene, other = _find_pair(config)
    half = int(round(FLAGS.seconds * config.sample_rate / 2))
    audio = np.concatenate([_tile(scene["waveform"], half), _tile(other["waveform"], half)])
    audio = (audio / max(np.abs(audio).max(), 1e-8) * 0.5).astype(np.float32)
    frame = np.asarray(Image.fromarray((scene["image"] * 255).round().astype(np.uint8)).resize(
        (FLAGS.frame_size, FLAGS.frame_size), Image.BICUBIC))

    temporary = FLAGS.output + ".partial.mp4"
    with av.open(temporary, "w") as container:
        video = container.add_stream("libx264", rate=FLAGS.fps)
        video.height = video.width = FLAGS.frame_size
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=config.sample_rate, layout="mono")
        for _ in range(int(round(FLAGS.seconds * FLAGS.fps))):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        track = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
        track.sample_rate, track.pts = config.sample_rate, 0
        for packet in list(sound.encode(track)) + list(sound.encode(None)):
            container.mux(packet)
    os.replace(temporary, FLAGS.output)
    boxes = {"first_half": scene["object_boxes"][0].tolist(),
             "second_half": scene["object_boxes"][1].tolist()}
    with open(FLAGS.output + ".boxes.json", "w") as f:
        json.dump(boxes, f, indent=1)
    print(f"Wrote {FLAGS.output}: {FLAGS.seconds:g} s; the sound switches at "
          f"{FLAGS.seconds / 2:g} s from the object at {np.round(boxes['first_half'], 2).tolist()} "
          f"to the one at {np.round(boxes['second_half'], 2).tolist()} (normalised x1,y1,x2,y2)")


def run() -> None:
    common.run_tool(main)


if __name__ == "__main__":
    run()
