"""Keeps TensorFlow's C++ start-up log lines off a tool's terminal.

TensorFlow 2.21 writes lines such as "oneDNN custom operations are on",
"cpu_feature_guard ..." and absl's "WARNING: All log messages before
absl::InitializeLog() ..." straight to file descriptor 2 while it is
imported, before TF_CPP_MIN_LOG_LEVEL is consulted, so they bury the tools'
own output.  `quiet_tensorflow()` silences descriptor 2 for the duration of
the first `import tensorflow` and sets TF_CPP_MIN_LOG_LEVEL=3 for the lines
that follow (an explicit TF_CPP_MIN_LOG_LEVEL in the environment wins).
`--verbose` on the command line, or SOUNDLOC_VERBOSE=1, leaves both alone.

Standard library only: the dev server imports it without loading any other part of
soundloc_tf (a namespace package: importing this module runs nothing else).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
from typing import Iterator, Sequence

VERBOSE_FLAG = "--verbose"


def wants_verbose(argv: Sequence[str]) -> bool:
    """`--verbose` (or --verbose=true/1) in `argv`, or SOUNDLOC_VERBOSE=1.

    Read before flag parsing because the log lines appear while TensorFlow is
    imported, which may happen before the flags are parsed.
    """
    if os.environ.get("SOUNDLOC_VERBOSE", "") in ("1", "true"):
        return True
    return any(a in (VERBOSE_FLAG, f"{VERBOSE_FLAG}=true", f"{VERBOSE_FLAG}=1") for a in argv)


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null inside the block (C++ writes included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _SilentLoader(importlib.abc.Loader):
    """Runs the wrapped loader with descriptor 2 silenced; delegates everything else."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with silenced_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` like the normal finders, with a silencing loader; then leaves."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilentLoader(spec.loader)
        return spec


def quiet_tensorflow(argv: Sequence[str] | None = None) -> None:
    """Silences TensorFlow's C++ start-up lines unless `--verbose` is in `argv` (sys.argv)."""
    if wants_verbose(sys.argv if argv is None else argv) or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
