"""Shared glue of the command-line tools: config flags, one-line errors, quiet logs.

Every field of `soundloc_tf.config.Config` becomes a flag of the same name
(default: the preset's value), so any hyper-parameter can be overridden
without code changes, and `--preset` picks the starting point.

Importing this module (every tool does, before TensorFlow) keeps
TensorFlow's C++ log lines off the terminal; `--verbose` brings them back.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import typing
from typing import Callable

from absl import app, flags, logging

from soundloc_tf.tf_logs import quiet_tensorflow

quiet_tensorflow()

from soundloc_tf import config as config_lib  # noqa: E402 (after the log set-up)

FLAGS = flags.FLAGS
flags.DEFINE_boolean("verbose", False, "Show TensorFlow's C++ log lines (hidden by default).")


def define_config_flags(default_preset: str = config_lib.DEFAULT_PRESET) -> None:
    flags.DEFINE_enum("preset", default_preset, sorted(config_lib.PRESETS),
                      "Named starting configuration; other flags override its fields. The "
                      "command lines and the library's get_config() both start from "
                      f"{config_lib.DEFAULT_PRESET} (minutes on a CPU).")
    hints = typing.get_type_hints(config_lib.Config)
    for field in dataclasses.fields(config_lib.Config):
        kind = hints[field.name]
        help_text = (f"Config field (default: the preset's value; Config()'s, the published "
                     f"method's: {field.default!r}).")
        if kind is bool:
            flags.DEFINE_boolean(field.name, None, help_text)
        elif kind is int:
            flags.DEFINE_integer(field.name, None, help_text)
        elif kind is float:
            flags.DEFINE_float(field.name, None, help_text)
        elif kind is str:
            flags.DEFINE_string(field.name, None, help_text)
        else:  # tuple[int, ...]
            flags.DEFINE_list(field.name, None, help_text + " Comma-separated integers.")


def config_from_flags() -> config_lib.Config:
    hints = typing.get_type_hints(config_lib.Config)
    overrides = {}
    for field in dataclasses.fields(config_lib.Config):
        value = FLAGS[field.name].value
        if value is None:
            continue
        if hints[field.name] not in (bool, int, float, str):
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise ValueError(f"--{field.name} takes comma-separated integers. "
                                 f"Received: {','.join(value)}") from None
        overrides[field.name] = value
    return config_lib.get_config(FLAGS.preset, **overrides)


def overridden_fields() -> list[str]:
    """Config fields given explicitly on the command line."""
    return [f.name for f in dataclasses.fields(config_lib.Config) if FLAGS[f.name].present]


def fail(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad flag as one "error: ..." line and exit code 2 (absl: two
    lines and exit code 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        message = " ".join(str(error).split())
        fail(f"{message}; see --helpshort")


# What an interrupted tool says: only training keeps checkpoints to resume from.
INTERRUPTED = "interrupted; nothing was left half-written, and a rerun starts again"
INTERRUPTED_RESUMABLE = "interrupted; the last checkpoint is kept and a rerun resumes from it"


def _terminate(signum: int, frame) -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) takes the path Ctrl-C takes, so every
    cleanup that removes partial outputs on KeyboardInterrupt runs for it too."""
    raise KeyboardInterrupt


def run_tool(main: Callable[[list[str]], None], interrupted: str = INTERRUPTED) -> None:
    """app.run with expected failures turned into one line on stderr and exit code 2.

    Args:
      main: the tool's main(argv).
      interrupted: the line printed on Ctrl-C or SIGTERM (what survives and how to go on).
    """

    def guarded(argv: list[str]) -> None:
        signal.signal(signal.SIGTERM, _terminate)
        if len(argv) > 1:
            fail(f"unexpected positional arguments {argv[1:]}; all options are --flags")
        if not FLAGS.verbose:  # TensorFlow's Python-side INFO lines ("Sharding callback ...")
            logging.set_verbosity(logging.WARNING)
        try:
            main(argv)
        except (ValueError, FloatingPointError, OSError) as error:
            fail(str(error))
        except Exception as error:  # noqa: BLE001 (only TensorFlow's data and cluster errors)
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            if type(error).__name__ == "DataLossError":
                # Records whose bytes match a (re-signed) manifest but do not parse.
                fail(f"damaged records ({first[:300]}); re-import them or restore the shards")
            if type(error).__name__ not in ("UnavailableError", "DeadlineExceededError",
                                            "AbortedError", "CancelledError"):
                raise
            fail(f"lost contact with another worker of the job ({type(error).__name__}: "
                 f"{first[:300]}); restart every worker with the same command: they resume "
                 f"from the last checkpoint")
        except KeyboardInterrupt:
            fail(interrupted)

    app.run(guarded, flags_parser=parse_flags)
