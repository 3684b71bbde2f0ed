#!/usr/bin/env bash
# Runs the pytest suite through Bazel, fully offline:
#   .ci/bazel_test.sh [extra bazel test flags / target patterns]
# Installs Debian's bazel-bootstrap (Bazel 4.2.3) and bazel-rules-java if
# missing. Python comes from <repo>/.venv (or $SOUNDLOC_PYTHON); create it first:
#   python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]'
# Exits non-zero if any test fails, the build fails, or no test was run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v bazel >/dev/null 2>&1 || [ ! -f /usr/share/bazel/rules/java/java/defs.bzl ]; then
    echo "bazel_test: installing bazel-bootstrap and bazel-rules-java (Debian)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq bazel-bootstrap bazel-rules-java >/dev/null
fi

PY="${SOUNDLOC_PYTHON:-$ROOT/.venv/bin/python3}"
if [ ! -x "$PY" ]; then
    echo "bazel_test: no Python interpreter at $PY" >&2
    echo "bazel_test: create the venv (python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]') or set SOUNDLOC_PYTHON" >&2
    exit 2
fi

LOG="$(mktemp)"
cleanup() {
    rm -f "$LOG"
    # In CI, do not leave a Bazel server running after the script.
    if [ -n "${CI:-}" ]; then bazel shutdown >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [ "$#" -eq 0 ]; then set -- //tests/...; fi

start=$(date +%s)
set +e
# Flags repeat .bazelrc so the script works even if that file is overridden.
bazel test \
    --spawn_strategy=local \
    --test_output=errors \
    --test_summary=short \
    --test_env=HOME \
    --keep_going \
    --curses=no \
    --color=no \
    --show_progress_rate_limit=30 \
    "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "bazel_test: bazel exited $rc after $(( $(date +%s) - start ))s"

# Sum pytest's per-test-case counts from the JUnit XML of the targets that
# this run reported, and print one closing summary line.
TESTLOGS="$(bazel info bazel-testlogs 2>/dev/null || echo "$ROOT/bazel-testlogs")"
"$PY" - "$LOG" "$TESTLOGS" <<'PYEOF' || true
import os, re, sys
import xml.etree.ElementTree as ET

log, testlogs = sys.argv[1], sys.argv[2]
targets = []
for line in open(log, errors="replace"):
    m = re.match(r"^(//\S+:\S+)\s+(?:\(cached\)\s+)?(PASSED|FAILED|FLAKY|TIMEOUT|NO STATUS|INCOMPLETE|REMOTE FAILURE|FAILED TO BUILD)", line)
    if m:
        targets.append(m.group(1))
passed = failed = skipped = 0
for t in targets:
    pkg, name = t[2:].split(":", 1)
    path = os.path.join(testlogs, pkg, name, "test.xml")
    try:
        root = ET.parse(path).getroot()
    except Exception:
        continue
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    for s in suites:
        n = int(s.get("tests", 0))
        f = int(s.get("failures", 0)) + int(s.get("errors", 0))
        k = int(s.get("skipped", 0))
        passed += n - f - k
        failed += f
        skipped += k
print("bazel: %d test targets" % len(targets))
print("pytest: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
PYEOF

if [ "$rc" -eq 4 ]; then
    echo "bazel_test: no test targets found (no tests/test_*.py?)" >&2
fi
exit "$rc"
