"""pytest_test: one Bazel py_test that runs pytest on one test file."""

def pytest_test(name, src, deps = [], data = [], args = [], size = "large", timeout = "eternal", **kwargs):
    """Runs `pytest <src>` through //third_party/bazel:pytest_runner.py.

    Args:
      name: target name (by convention the file name without `.py`).
      src: the tests/test_*.py file.
      deps: extra py deps; the project's sources (//:soundloc) are always added.
      data: extra data; `src` itself is always added.
      args: extra pytest arguments.
      size: Bazel test size (default "large").
      timeout: Bazel test timeout (default "eternal", 60 min).
      **kwargs: passed to py_test (tags, env, flaky, ...).
    """
    native.py_test(
        name = name,
        srcs = ["//third_party/bazel:pytest_runner.py"],
        main = "//third_party/bazel:pytest_runner.py",
        args = ["$(rootpath %s)" % src] + args,
        data = [src] + data,
        deps = ["//:soundloc"] + deps,
        python_version = "PY3",
        srcs_version = "PY3",
        # Do not add __init__.py files to the runfiles tree: tests/ must stay a
        # plain directory (rootdir-relative helper imports, as with plain pytest).
        legacy_create_init = False,
        size = size,
        timeout = timeout,
        **kwargs
    )
