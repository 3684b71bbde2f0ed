"""The architecture as a test: imports only run down the floors, and the installed names.

Floors, bottom to top (README.md, Layout; soundloc_tf/__init__.py): the config and the pure
maths (top-level modules); dataloaders/; modeling/; train/, eval/ and inference/; the command
lines and the serving side.
A module may import its own floor or a lower one, never a higher one.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The floor of each part of the library: its top-level modules, then one folder per role.
FLOORS = {
    0: ("config", "losses", "metrics", "protocols", "visualize", "tf_logs", "warmup",
        "wav_encode", "towers", "presets"),
    1: ("dataloaders", "realset"),
    2: ("modeling",),
    3: ("train", "eval", "inference", "tasks", "experiments", "pipelines"),
}
TOP = 4  # tools/ and serving/: installed as soundloc_tf.tools and soundloc_tf.serving
FLOOR_OF = {part: floor for floor, parts in FLOORS.items() for part in parts}


def _floor(module: str) -> int:
    """The floor of a dotted name inside the project (soundloc_tf.x[.y], tools.x, serving.x)."""
    parts = module.split(".")
    if parts[0] in ("tools", "serving") or parts[1:2] in (["tools"], ["serving"]):
        return TOP
    return FLOOR_OF[parts[1]]


def _project_imports(path: Path, package: str) -> set[str]:
    """Every project module `path` imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] if "." in base else [f"{base}.{a.name}" for a in node.names]
            found.update(n for n in names if n.split(".")[0] in ("soundloc_tf", "tools",
                                                                   "serving"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names
                         if a.name.split(".")[0] in ("soundloc_tf", "tools", "serving"))
    return found


def _sources():
    for path in sorted((ROOT / "soundloc_tf").rglob("*.py")):
        relative = path.relative_to(ROOT / "soundloc_tf")
        if relative.parts == ("__init__.py",):
            continue
        package = ".".join(("soundloc_tf",) + relative.parts[:-1])
        yield path, package, FLOOR_OF.get(relative.parts[0].removesuffix(".py"))
    for folder in ("tools", "serving"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            package = ".".join(path.relative_to(ROOT).parent.parts)
            yield path, package, TOP


def test_every_library_module_lives_on_a_floor():
    """Top-level modules are floor 0; everything else sits in a role folder with a floor."""
    parts = {p.stem if p.is_file() else p.name for p in (ROOT / "soundloc_tf").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.stem != "__init__"}
    assert parts == set(FLOOR_OF)


def test_no_module_imports_a_module_on_a_higher_floor():
    upward = []
    for path, package, floor in _sources():
        for module in _project_imports(path, package):
            if module in ("soundloc_tf", "tools", "serving"):
                continue
            if _floor(module) > floor:
                upward.append(f"{path.relative_to(ROOT)} (floor {floor}) imports {module} "
                              f"(floor {_floor(module)})")
    assert upward == []


def test_the_serving_side_does_not_import_the_model_code():
    """The client, dev server and studio know the model only through its signatures."""
    model_floors = {part for floor in (2, 3) for part in FLOORS[floor]}
    reached = []
    for path in sorted((ROOT / "serving").rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).parent.parts)
        reached += [f"{path.relative_to(ROOT)}: {m}" for m in _project_imports(path, package)
                    if m.startswith("soundloc_tf.") and m.split(".")[1] in model_floors]
    assert reached == []


MAX_COLUMNS = 100


def test_library_and_command_lines_keep_to_100_columns():
    """The house style; moving modules into role folders lengthened qualified names."""
    long = [f"{path.relative_to(ROOT)}:{number}" for path, _, _ in _sources()
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if len(line) > MAX_COLUMNS]
    assert long == []


def test_installed_names_live_inside_the_library_namespace(tmp_path):
    """Outside the repository, `tools`, `serving` and `benchmarks` are not importable: the
    command lines come from soundloc_tf.tools and soundloc_tf.serving."""
    code = ("import importlib.util as u\n"
            "print([n for n in ('tools', 'serving', 'benchmarks') if u.find_spec(n)])\n"
            "print([n for n in ('soundloc_tf.tools.train', 'soundloc_tf.serving.client',"
            " 'soundloc_tf.serving.studio.app') if u.find_spec(n)])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    if result.returncode == 0 and "soundloc_tf.tools.train" not in result.stdout:
        pytest.skip("soundloc_tf is not installed in this interpreter (pip install -e .)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "[]", "['soundloc_tf.tools.train', 'soundloc_tf.serving.client', "
        "'soundloc_tf.serving.studio.app']"]


# Inside floor 3 the roles are ordered too: the task runs train/, eval/ and inference/, and
# the experiments run tasks; neither of the lower two reaches up into what runs it.
FLOOR_3_ORDER = {"train": 0, "eval": 0, "inference": 0, "tasks": 1, "experiments": 2,
                 "pipelines": 1}


def test_inside_floor_3_the_task_sits_above_training_and_below_the_experiments():
    upward = []
    for path, package, floor in _sources():
        if floor != 3:
            continue
        role = path.relative_to(ROOT / "soundloc_tf").parts[0]
        for module in _project_imports(path, package):
            target = module.split(".")[1:2]
            if target and target[0] in FLOOR_3_ORDER \
                    and FLOOR_3_ORDER[target[0]] > FLOOR_3_ORDER[role]:
                upward.append(f"{path.relative_to(ROOT)} ({role}) imports {module}")
    assert upward == []


MAX_TOOL_LINES = 200
# The command lines parse flags and call the library (fetch_weights' conversions live in
# soundloc_tf/modeling/weight_packages.py and onnx_weights.py). PENDING: other owners' files
# over the bound while issue 32 is under way; an entry that no longer needs to be here fails.
LONG_TOOLS_ALLOWED: set[str] = set()
LONG_TOOLS_PENDING: set[str] = set()


def test_every_command_line_is_under_200_lines():
    long = {path.name for path in (ROOT / "tools").glob("*.py")
            if len(path.read_text().splitlines()) >= MAX_TOOL_LINES}
    assert long - LONG_TOOLS_ALLOWED - LONG_TOOLS_PENDING == set()
    assert LONG_TOOLS_PENDING <= long, "a pending tool is short now: drop it from the list"


# Tests that still import a command-line module, in other owners' files while issue 32 is
# under way; an entry that stops importing one fails, so the list only shrinks.
TOOL_IMPORTS_PENDING: set[str] = set()


def _tool_imports(path: Path) -> set[str]:
    """The command-line modules a test file imports (tools.x, soundloc_tf.tools.x, or the
    names of `from soundloc_tf.tools import x`), at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[:1] == ["tools"] or parts[:2] == ["soundloc_tf", "tools"]:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names
                         if a.name.split(".")[:1] == ["tools"]
                         or a.name.split(".")[:2] == ["soundloc_tf", "tools"])
    return found


def test_no_test_imports_a_command_line_module():
    """Tests reach the logic in the library; a command line is tested as a subprocess."""
    importing = {path.name for path in (ROOT / "tests").glob("*.py") if _tool_imports(path)}
    assert importing - TOOL_IMPORTS_PENDING == set()
    assert TOOL_IMPORTS_PENDING <= importing, "a pending test is clean now: drop it"


MAX_FUNCTION_LINES = 80
# Functions over the bound in other owners' files while issue 32 is under way ("path:name");
# an entry that is short now (or gone) fails, so the list only shrinks.
LONG_FUNCTIONS_PENDING = {
    "soundloc_tf/train/feature_cache.py:read_cache",
}


def _library_files():
    """The library, the command lines and the serving side (what `_sources` walks)."""
    return [path for path, _, _ in _sources()]


def test_no_function_is_over_80_lines():
    """A function a reader can hold at once; nested functions count in their outer one."""
    long = {f"{path.relative_to(ROOT)}:{node.name}" for path in _library_files()
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert long - LONG_FUNCTIONS_PENDING == set()
    assert LONG_FUNCTIONS_PENDING <= long, "a pending function is short now: drop it"


# Facts with one home: the warm-up records' path (soundloc_tf/warmup.py, which the export
# writes and the dev server reads) and the reduction of TF Serving's errors to one line.
DEFINED_ONCE = ("WARMUP_PATH", "error_line")


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_the_warmup_path_and_error_line_are_defined_once():
    homes = {name: [str(path.relative_to(ROOT)) for path in _library_files()
                    if name in _top_level_names(path)] for name in DEFINED_ONCE}
    assert {name: len(found) for name, found in homes.items()} == \
        {name: 1 for name in DEFINED_ONCE}, homes


# The one WAV encoder is soundloc_tf/wav_encode.py (floor 0: the serving side may import
# it). PENDING: other owners' files that still encode WAV themselves while issue 32 is under
# way; an entry that stops fails, so the list only shrinks.
WAV_ENCODER = "soundloc_tf/wav_encode.py"
WAV_ENCODERS_PENDING: set[str] = set()


def _encodes_wav(path: Path) -> bool:
    """Whether `path` writes WAV bytes itself: wave.open(..., "wb"), soundfile.write or
    tf.audio.encode_wav."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        called = f"{getattr(owner, 'id', getattr(owner, 'attr', ''))}.{node.func.attr}"
        mode = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
        if called in ("soundfile.write", "audio.encode_wav") or (
                called == "wave.open" and mode and "w" in str(mode[0])):
            return True
    return False


def test_wav_bytes_are_encoded_in_one_module():
    encoders = {str(path.relative_to(ROOT)) for path in _library_files() if _encodes_wav(path)}
    assert encoders - WAV_ENCODERS_PENDING == {WAV_ENCODER}
    assert WAV_ENCODERS_PENDING <= encoders, "a pending encoder is gone: drop it from the list"


# The dev server and the client know the model only through the SavedModel's signatures: of
# the library they import the floor-0 helpers that need no model code, nothing else.
SERVING_LIBRARY_IMPORTS = {"soundloc_tf.tf_logs", "soundloc_tf.warmup"}


def test_the_dev_server_and_client_import_only_floor_0_helpers():
    reached = []
    for path in sorted((ROOT / "serving").glob("*.py")):  # studio/ is the labelling app
        reached += [f"{path.relative_to(ROOT)}: {module}"
                    for module in _project_imports(path, "serving")
                    if module.startswith("soundloc_tf.")
                    and module not in SERVING_LIBRARY_IMPORTS]
    assert reached == []
