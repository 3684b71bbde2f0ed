"""A run directory's files: its config.json and the newest readable checkpoint.

Kept apart from the training loop so that evaluation, export and localisation
read a run without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable

import keras
import tensorflow as tf

from soundloc_tf.config import Config
from soundloc_tf.modeling.models import build_model


def print_line(message: str) -> None:
    print(message, flush=True)


# `CheckpointManager` names its checkpoints ckpt-<save count>; the .index file is written last.
_CHECKPOINT_INDEX = re.compile(r"ckpt-([0-9]{1,18})\.index")
_UNREADABLE = (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError)


def restore_newest_readable(checkpoint: tf.train.Checkpoint, paths: list[str],
                            log: Callable[[str], None], partial: bool) -> str | None:
    """Restores the newest readable checkpoint of `paths` (oldest first); returns its path.

    An unreadable one (a kill or a full disk during a write, a damaged file)
    is skipped with a log line and the next older one tried; if none reads,
    a ValueError lists why each failed.  `partial` allows objects of the
    checkpoint that `checkpoint` does not track (the optimiser, for a model).
    """
    failures = []
    for path in reversed(paths):
        try:
            status = checkpoint.restore(path)
            (status.expect_partial() if partial else status).assert_existing_objects_matched()
        except _UNREADABLE as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            failures.append(f"{path} ({type(error).__name__}: {first_line})")
            log(f"Skipped checkpoint {path}: it is unreadable or was written by another model "
                f"({type(error).__name__}: {first_line}); trying an older one.")
            continue
        return path
    if failures:
        raise ValueError(f"could not restore the checkpoint; every one is unreadable or was "
                         f"written by another model. Received: {'; '.join(failures)}")
    return None


def build_run_model(config: Config, pretrained: bool = True) -> keras.Model:
    """`build_model(config)`, with or without reading the towers' pretrained weights.

    Args:
      config: the run's config.
      pretrained: read the weights files `image_weights` and `audio_weights` name. False
        builds the same network with initial weights, for a checkpoint to supply every
        one (restoring checks that it does): a trained run then evaluates and exports on
        a machine without those files.
    """
    if not pretrained:
        config = config.replace(image_weights="none", audio_weights="none")
    return build_model(config)


def checkpoint_paths(workdir: str) -> list[str]:
    """The run's checkpoints, oldest first, as the `checkpoint` state file lists them.

    Read from the state file itself: `CheckpointManager.checkpoints` drops entries without
    timestamps (a state file rolled back or written by other tools). Without a state file,
    the `ckpt-<n>` checkpoints in the directory, so a lost state file loses no checkpoint.

    Raises:
      ValueError: the state file is damaged (not the text TensorFlow writes).
    """
    directory = os.path.join(workdir, "checkpoints")
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (UnicodeDecodeError, tf.errors.OpError) as error:  # text TF cannot parse, it ignores
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"the checkpoint state file is damaged (it is not the text TensorFlow "
                         f"writes); delete it and the checkpoints beside it are read instead. "
                         f"Received: {os.path.join(directory, 'checkpoint')} "
                         f"({type(error).__name__}: {first_line})") from None
    if state:
        return list(state.all_model_checkpoint_paths)
    numbered = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        match = _CHECKPOINT_INDEX.fullmatch(name)
        if match:
            numbered.append((int(match.group(1)), os.path.join(directory, name[:-6])))
    return [path for _, path in sorted(numbered)]


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a checkpoint to resume or restore from."""
    return bool(checkpoint_paths(workdir))


def restore_model(workdir: str, log: Callable[[str], None] = print_line
                  ) -> tuple[Config, keras.Model, int]:
    """The config, model weights and step of the newest readable checkpoint in `workdir`.

    The towers' pretrained weights files are not read (`build_run_model(pretrained=False)`):
    the checkpoint holds every weight, frozen towers included.
    """
    config = load_saved_config(workdir)
    if config is None:
        raise ValueError(f"no training run found (config.json is missing). Received: "
                         f"workdir={workdir!r}")
    paths = checkpoint_paths(workdir)
    if not paths:
        raise ValueError(f"the run has no checkpoint yet. Received: workdir={workdir!r}")
    model = build_run_model(config, pretrained=False)
    step = tf.Variable(0, dtype=tf.int64)
    restore_newest_readable(tf.train.Checkpoint(model=model, step=step), paths, log,
                            partial=True)
    return config, model, int(step.numpy())


def load_saved_config(workdir: str) -> Config | None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            fields = json.load(f)
        known = {f.name: f for f in dataclasses.fields(Config)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
                  if k in known}
        return Config(**values)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"could not read the run's config file. Received: {path} "
                         f"({type(error).__name__}: {error})") from None
