"""Repository rule that points Bazel's Python toolchain at the project's venv.

The interpreter is `<workspace root>/.venv/bin/python3`, found at fetch time
from the location of //:WORKSPACE, so a clone anywhere on disk works without
editing any file. Set SOUNDLOC_PYTHON (an absolute path to a python3 that has
the project's requirements and pytest installed) to use another interpreter.
"""

def _venv_python_impl(rctx):
    override = rctx.os.environ.get("SOUNDLOC_PYTHON", "").strip()
    if override:
        interpreter = override
    else:
        root = rctx.path(Label("//:WORKSPACE")).dirname
        interpreter = str(root) + "/.venv/bin/python3"

    if not interpreter.startswith("/"):
        fail("SOUNDLOC_PYTHON must be an absolute path, got %r" % interpreter)

    # Not fatal at fetch time (the venv may be created later), but say so:
    # the tests will fail to start until it exists.
    if not rctx.path(interpreter).exists:
        print("WARNING: Python interpreter %s does not exist yet; create the " % interpreter +
              "venv (python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]') " +
              "or set SOUNDLOC_PYTHON.")

    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD", """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    stub_shebang = "#!{interpreter}",
)

py_runtime_pair(
    name = "py_runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":py_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(interpreter = interpreter))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    environ = ["SOUNDLOC_PYTHON"],
    local = True,
)
