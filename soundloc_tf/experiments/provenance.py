"""Provenance: the versions, machine and code revision recorded with every result.

Experiments and benchmarks record the same fields through `environment`, so a number in
results/ or benchmarks/ names the machine (with its widest vector unit: one recipe's
numbers differ between AVX2 and AVX-512 machines) and the commit it came from.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Any


def _git(*args: str) -> str | None:
    """git's answer in the repository holding this file; None outside one."""
    try:
        return subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name(cpuinfo: str) -> str:
    """The CPU's model name in /proc/cpuinfo text, with its widest vector unit: one recipe's
    numbers differ between the AVX2 and the AVX-512 machines, and both report as "AMD
    EPYC"."""
    lines = cpuinfo.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), platform.processor() or "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines
                      if line.startswith("flags")), []))
    vector = next((unit for unit, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"))
                   if flag in flags), None)
    return f"{name} ({vector})" if vector else name


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return cpu_name(f.read())
    except OSError:
        return cpu_name("")


def environment() -> dict:
    """Versions, machine and code revision, recorded with every result."""
    import keras
    import matplotlib
    import numpy
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": numpy.__version__,
                     "matplotlib": matplotlib.__version__},
        "machine": f"{_cpu_model()}, {cores} usable cores of {os.cpu_count()}, "
                   f"{platform.system()} {platform.machine()}"
                   + (f", GPUs: {', '.join(gpus)}" if gpus else ", no GPU"),
        "git": {"commit": _git("rev-parse", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))},
    }


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: str, value: Any) -> None:
    """`value` as JSON at `path`, written whole and then moved in place."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), for comparisons with saved files."""
    return json.loads(json.dumps(value))
