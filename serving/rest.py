"""TF Serving's REST API over a ModelStore, as a WSGI application served by waitress."""

from __future__ import annotations

import json
import re
import sys
import time
import traceback

from .memory_budget import TRIM_AFTER_BYTES, trim_heap
from .model_store import ModelStore
from .request_errors import RequestError, bad, echo
from .threaded import create_server

# Versions are int64 in TF Serving (gRPC's Int64Value): at most 19 digits.
MAX_VERSION_DIGITS = 19
# Bodies up to this many times the limit are read and answered with a JSON 413; larger
# ones get waitress's own 413 as soon as their header arrives.
_DRAIN_FACTOR = 4
_PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)")
_MODEL_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?(?:/(metadata))?")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict",
            411: "Length Required", 413: "Content Too Large", 429: "Too Many Requests",
            499: "Client Closed Request", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable", 504: "Gateway Timeout", 401: "Unauthorized",
            403: "Forbidden"}


def rest_server(store: ModelStore, host: str, port: int, max_body_bytes: int, quiet: bool,
                threads: int, max_connections: int):
    """A waitress server (not yet serving) answering TF Serving's REST API over `store`.

    Args:
        store: the model and the limits requests are held to.
        host: address to listen on.
        port: port to listen on (0: any free one).
        max_body_bytes: request body limit; a 413 beyond.
        quiet: no request log on stderr.
        threads: worker threads.
        max_connections: open connections; more wait in the listen backlog (1024).
    """
    # waitress with deadlines it lacks (threaded.py): idle keep-alive connections closed
    # after 5 s (at once at the connection limit), headers due 10 s after their first byte.
    return create_server(
        RestApp(store, max_body_bytes, quiet), host=host, port=port, threads=threads,
        backlog=1024, connection_limit=max_connections,
        max_request_body_size=_DRAIN_FACTOR * max_body_bytes + 1, ident="soundloc-dev-server",
        expose_tracebacks=False)


class RestApp:
    """TF Serving's REST API over a ModelStore, as a WSGI application."""

    def __init__(self, store: ModelStore, max_body_bytes: int, quiet: bool):
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.quiet = quiet

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        started = time.perf_counter()
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            # PEP 3333 hands the path over as latin-1 characters of its bytes; URLs carry
            # UTF-8, so a model named 'sóundloc' (served over gRPC) must match here too (N14).
            try:
                path = path.encode("latin-1").decode("utf-8")
            except UnicodeError:
                raise bad(f"the URL path is not UTF-8: {echo(path)}") from None
            body = self._read_body(environ) if method == "POST" else b""
            status, pieces = 200, self._dispatch(method, path, body)
        except RequestError as error:
            status, pieces = error.status, [json.dumps({"error": error.message}).encode()]
        except Exception as error:  # never let one request take the server down
            traceback.print_exc(file=sys.stderr)
            status = 500
            pieces = [json.dumps({"error": f"Internal: {type(error).__name__}: {error}"}).encode()]
        size = sum(len(p) for p in pieces)
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "application/json"), ("Content-Length", str(size))])
        if not self.quiet:
            sys.stderr.write(f"{environ.get('REMOTE_ADDR', '-')} {method} {path} {status} "
                             f"{(time.perf_counter() - started) * 1000:.1f} ms\n")
        return _Answer(pieces) if size >= TRIM_AFTER_BYTES else pieces

    def _read_body(self, environ: dict) -> bytes:
        # waitress has checked the header and read the whole body (up to 4x the limit), so
        # the connection stays usable and the client reads this 413 after its upload.
        size = int(environ.get("CONTENT_LENGTH") or 0)
        if size > self.max_body_bytes:
            raise RequestError(413, f"the request body of {size} bytes exceeds the limit of "
                               f"{self.max_body_bytes} bytes")
        return environ["wsgi.input"].read(size)

    def _dispatch(self, method: str, path: str, body: bytes) -> list[bytes]:
        store = self.store
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match:
                name, version, verb = match.groups()
                if verb.lower() != "predict":
                    raise RequestError(501, f"only :predict is implemented by the dev server, "
                                       f"not :{verb}")
                return store.predict_json(name, _version(version), body)
        elif method == "GET":
            match = _MODEL_PATH.fullmatch(path)
            if match:
                name, version, metadata = match.groups()
                if not name:
                    raise bad("Missing model name in request.")
                answer = store.metadata(name, _version(version)) if metadata else \
                    store.status(name, _version(version))
                return [json.dumps(answer).encode()]
        if path.lower().startswith("/v1/"):
            raise bad(f"Malformed request: {method} {path}")
        raise RequestError(404, f"Not found: {method} {path} (the API is under /v1/models/)")


class _Answer(list):
    """A large answer's pieces; once waitress has sent them (and calls close), the freed heap
    goes back to the system: glibc keeps it otherwise, and the probe's server kept 1.5 GB."""

    def close(self) -> None:
        self.clear()
        trim_heap()


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    # Checked by length first: int() refuses over 4300 digits with a ValueError (a 500).
    if len(text) > MAX_VERSION_DIGITS or int(text) > 2 ** 63 - 1:
        raise bad(f"Failed to convert version: {echo(text)} to numeric (versions are int64).")
    return int(text)
