"""docs/CLUSTER.md's command lines through soundloc-train's flag handling, so the page and the
code cannot drift apart.

Every fenced shell block of the page that runs `soundloc-train` runs here as written (its
`export TF_CONFIG=...`, loops and `&` included), and the Kubernetes Job's script once per
completion index, with `soundloc-train` on PATH standing for `python -m
soundloc_tf.tools.train ... --dry_run`: the flags parsed, the config and tower mode resolved
and checked with TF_CONFIG as the page sets it, nothing read or trained.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DOC = ROOT / "docs" / "CLUSTER.md"
COMMAND = "soundloc-train"
DRY_RUN_TIMEOUT = 300  # seconds for one block's dry runs on a shared 2-core host
# The dry run's line: the resolved tower mode and the workers TF_CONFIG names.
DRY_RUN_LINE = re.compile(r"^Dry run: --tower_mode=(\S+) on (\d+) worker\(s\)", re.M)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


def job_script(yaml_text: str) -> tuple[str, int]:
    """The Kubernetes Job's container script (its `args: - |` literal) and completions."""
    lines = yaml_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- |") + 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        body.append(line[indent:])
    completions = int(re.search(r"^\s*completions:\s*(\d+)", yaml_text, re.M).group(1))
    return "\n".join(body), completions


def command_count(script: str) -> int:
    """The soundloc-train invocations a script holds (one per command, not per mention in a
    string or path)."""
    return len(re.findall(rf"(?:^|\s|exec\s){COMMAND}\s", script, re.M))


@pytest.fixture(scope="module")
def fake_command(tmp_path_factory) -> dict[str, str]:
    """An environment whose `soundloc-train` is this checkout's tool in a dry run, each
    invocation's output, exit status and TF_CONFIG kept in its own file of LOG_DIR."""
    bin_dir = tmp_path_factory.mktemp("bin")
    wrapper = bin_dir / COMMAND
    wrapper.write_text(f"""#!/bin/sh
out=$(mktemp "$LOG_DIR/run.XXXXXX")
printf 'TF_CONFIG=%s\\n' "$TF_CONFIG" > "$out"
"{sys.executable}" -m soundloc_tf.tools.train "$@" --dry_run >> "$out" 2>&1
printf 'exit %s\\n' "$?" >> "$out"
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return env


def run_scripts(scripts: list[tuple[str, str, dict[str, str]]], env: dict[str, str],
                log_dir: Path) -> list[str]:
    """Runs (shell, script, extra environment) all at once from a scratch directory; returns
    the dry runs' outputs."""
    log_dir.mkdir()
    processes = [subprocess.Popen([shell, "-c", script], cwd=log_dir.parent,
                                  env={**env, **extra, "LOG_DIR": str(log_dir)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for shell, script, extra in scripts]
    for process in processes:
        output, _ = process.communicate(timeout=DRY_RUN_TIMEOUT)
        assert process.returncode == 0, output
    return [path.read_text() for path in sorted(log_dir.iterdir())]


def test_the_page_keeps_every_command_in_a_block_this_test_runs():
    """A `soundloc-train --...` command written inline would escape the test."""
    text = re.sub(r"^```.*?^```", "", CLUSTER_DOC.read_text(), flags=re.M | re.S)
    assert re.findall(rf"`{COMMAND} --[^`]*`", text) == []


def test_every_documented_command_passes_the_tools_flag_handling(fake_command, tmp_path):
    blocks = [(lang, body) for lang, body in fenced_blocks(CLUSTER_DOC.read_text())
              if COMMAND in body]
    scripts, expected = [], 0
    for lang, body in blocks:
        if lang == "yaml":
            script, completions = job_script(body)
            assert command_count(script) == 1, script
            scripts += [("sh", script, {"JOB_COMPLETION_INDEX": str(i)})
                        for i in range(completions)]
            expected += completions
        else:
            assert lang == "bash", lang
            scripts.append(("bash", body, {}))
            # a loop's body runs once per item of its `for ... in` list
            loop = re.search(r"^for \w+ in ([^;]*);", body, re.M)
            expected += command_count(body) * (len(loop.group(1).split()) if loop else 1)
    outputs = run_scripts(scripts, fake_command, tmp_path / "runs")
    print(f"{len(outputs)} documented command lines, dry runs:\n" + "\n".join(
        match.group(0) for output in outputs for match in DRY_RUN_LINE.finditer(output)))
    assert len(blocks) >= 3 and len(outputs) == expected
    for output in outputs:
        assert output.rstrip().endswith("exit 0"), output
        tf_config = output.splitlines()[0].removeprefix("TF_CONFIG=")
        mode, workers = DRY_RUN_LINE.search(output).groups()
        # Every multi-worker command of the page trains from the cache, on the workers
        # its TF_CONFIG names.
        assert tf_config and mode == "cached" and int(workers) == 2, output
