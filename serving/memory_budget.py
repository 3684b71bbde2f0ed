"""The dev server's memory bounds: a budget requests claim before they materialise anything,
the cost of a JSON parse counted before it starts, and the heap handed back afterwards."""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Any, Iterator

from .request_errors import RequestError

# Memory the requests being decoded and run at once may claim, estimated before anything is
# materialised (REST: the JSON parse; gRPC: the tensors a TensorProto claims).  1 GiB: one
# 64 MiB body of floats (about 0.75 GB estimated) at a time, small requests beside it.
DEFAULT_MEMORY_BUDGET_BYTES = 1024 * 1024 * 1024
# A request waits this long for its share of the budget, then gets a 503 (clients retry).
BUDGET_WAIT_SECONDS = 120.0
# The cost of parsing a JSON body, measured with tracemalloc over json.loads, the walk and the
# numpy arrays (tests/test_hostile_round2.py): the body itself twice (the bytes and the str
# values copied out of it), per value (a number, string or list: its object, the pointer to
# it and its numpy element; measured 29-69 bytes, objects' members up to 129) and per JSON
# object (a dict).  Floats, the legitimate case, are over-estimated about 2.5x.
JSON_BYTES_PER_BODY_BYTE = 2
JSON_BYTES_PER_VALUE = 104
JSON_BYTES_PER_OBJECT = 512
# Answers from this size on hand their freed memory back to the system once sent.
TRIM_AFTER_BYTES = 1 << 20
# Parses estimated at this size or more do too, once done (glibc keeps the heap otherwise).
TRIM_AFTER_PARSE_BYTES = 64 << 20
# Parses estimated at this size or more pause the cyclic garbage collector (_GcPause): about
# a 1.4 MB body of floats.
PAUSE_GC_FROM_BYTES = 16 << 20


class MemoryBudget:
    """Bytes that requests claim before they materialise anything (a JSON parse, tensors from
    a TensorProto), so the server's memory is bounded by what requests *claim* rather than by
    how many arrive at once.

    A claim larger than the whole budget is a 413 at once; others wait (at most
    BUDGET_WAIT_SECONDS, then a 503) until enough is free.  One claim per request, never
    nested, so waiting cannot deadlock.
    """

    def __init__(self, capacity: int, wait_seconds: float = BUDGET_WAIT_SECONDS):
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.free = capacity
        self._changed = threading.Condition()

    def claim(self, nbytes: int, what: str) -> "_Claim":
        """A context manager holding `nbytes` of the budget; `what` names the cost in errors."""
        if nbytes > self.capacity:
            raise RequestError(413, f"{what} would take about {nbytes} bytes of memory, over "
                               f"the server's budget of {self.capacity} bytes "
                               "(--memory_budget_bytes); send fewer instances")
        return _Claim(self, nbytes)


class _Claim:
    def __init__(self, budget: MemoryBudget, nbytes: int):
        self.budget, self.nbytes = budget, nbytes

    def __enter__(self) -> "_Claim":
        budget = self.budget
        with budget._changed:
            if not budget._changed.wait_for(lambda: budget.free >= self.nbytes,
                                            timeout=budget.wait_seconds):
                raise RequestError(503, f"the server is busy: {self.nbytes} bytes of memory "
                                   f"were not free within {budget.wait_seconds:g} s; retry")
            budget.free -= self.nbytes
        return self

    def __exit__(self, *exc_info: Any) -> None:
        budget = self.budget
        with budget._changed:
            budget.free += self.nbytes
            budget._changed.notify_all()


def json_cost(body: bytes) -> int:
    """An upper bound of the memory parsing `body` takes, counted without parsing it (bytes.count
    runs at memory speed): every JSON value but the first follows a ',', '[' or ':'."""
    values = 1 + body.count(b",") + body.count(b"[") + body.count(b":")
    return (JSON_BYTES_PER_BODY_BYTE * len(body) + JSON_BYTES_PER_VALUE * values
            + JSON_BYTES_PER_OBJECT * body.count(b"{"))


class _GcPause:
    """Pauses the cyclic garbage collector while large JSON bodies are parsed and walked.

    The parse creates millions of lists; each full collection then traverses all of them with
    the GIL held (measured: 0.2-0.5 s stalls of every other thread per 60 MB body, and the
    parse itself 2x slower).  The parsed tree holds no cycles, and whatever other threads
    leave meanwhile is collected when the last large parse ends.  Counted, so overlapping
    parses keep it paused until the last one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._reenable = True

    @contextlib.contextmanager
    def __call__(self, pause: bool) -> Iterator[None]:
        if not pause:
            yield
            return
        with self._lock:
            if self._active == 0:
                self._reenable = gc.isenabled()
                gc.disable()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._reenable:
                    gc.enable()


gc_paused = _GcPause()


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc: nothing to trim
        return None


_LIBC = _load_libc()


def trim_heap() -> None:
    """Hands the heap freed since the last call back to the system (glibc keeps it otherwise);
    nothing where the C library is not glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
