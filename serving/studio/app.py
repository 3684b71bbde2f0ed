"""The studio's web server: a small WSGI application on waitress.

Routes (JSON answers; errors are {"error": message} with a 4xx/5xx status):

  GET  /                          the page (static/index.html); /static/<file> its files
  GET  /api/state                 pairs, labels, progress, the annotation file's health
  GET  /api/pairs/<n>/image       pair n's frame as stored in the records
  GET  /api/pairs/<n>/sound.wav   pair n's sound
  PUT  /api/labels                {"id", "boxes", "no_source", "revision", "by"}: saves one
                                  label (409 when another tab saved it first, or the
                                  annotation file is corrupt)
  POST /api/localize              {"image" | "image_pair", "sound" | "sound_pair" |
                                  "mismatch_for"}: heat map, box, score (files are
                                  {"name", "b64"})
  POST /api/localize_video        {"video": {"name", "b64"}}: one result per sampled time

waitress serves it (already the dev server's REST layer): a maintained,
threaded, pure-Python WSGI server; the app has a handful of routes and static
files, so no framework is added on top.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import os
import re
import sys
from typing import Any, Callable, Iterable

from soundloc_tf.dataloaders import annotations
from ..threaded import ThreadedServer, create_server
from .localize import (Localizer, ModelUnavailable, UnsupportedFile,
                                         as_model_image, as_model_sound)
from .pairs import RecordPairs

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# Uploads travel base64 in JSON; a phone video of a few minutes fits.
MAX_BODY_BYTES = 256 * 1024 * 1024
_PAIR_PATH = re.compile(r"/api/pairs/(\d+)/(image|sound\.wav)")
# A pair number longer than this is refused before int() (which raises past 4300 digits).
MAX_PAIR_DIGITS = 18
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 502: "Bad Gateway"}


class _Fail(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class StudioApp:
    """The WSGI application.

    Args:
        records_dir: the record directory whose pairs are labelled.
        server: TF Serving's REST address for the localise side.
        annotations_path: the layer file; default: annotations.json beside the records.
        model_name: the served model's name.
        quiet: no request log on stderr.
    """

    thread_name = "soundloc-studio"

    def __init__(self, records_dir: str, server: str, annotations_path: str | None = None,
                 model_name: str = "soundloc", quiet: bool = False):
        self.pairs = RecordPairs(records_dir)
        self.annotations_path = annotations_path or annotations.default_path(self.pairs.directory)
        self.localizer = Localizer(server, model_name)
        self.quiet = quiet
        self._static = {name for name in os.listdir(STATIC_DIR)
                        if os.path.isfile(os.path.join(STATIC_DIR, name))}

    # -- WSGI --------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            status, content_type, body = self._dispatch(method, path, environ)
        except _Fail as failure:
            status, content_type = failure.status, "application/json"
            body = json.dumps({"error": failure.message, **failure.extra}).encode()
        except Exception as error:  # noqa: BLE001 (one request fails, the server stays up)
            status, content_type = 500, "application/json"
            body = json.dumps({"error": f"internal error: {type(error).__name__}: {error}"}
                              ).encode()
        if not self.quiet:
            sys.stderr.write(f"{method} {path} {status}\n")
        start_response(f"{status} {_REASONS.get(status, 'Error')}",
                       [("Content-Type", content_type), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [body]

    def _dispatch(self, method: str, path: str, environ: dict) -> tuple[int, str, bytes]:
        if path in ("/", "/index.html"):
            return self._static_file("index.html", method)
        if path.startswith("/static/"):
            return self._static_file(path[len("/static/"):], method)
        match = _PAIR_PATH.fullmatch(path)
        if match:
            _allow(method, "GET")
            if len(match.group(1)) > MAX_PAIR_DIGITS:
                raise _Fail(400, f"the pair number has {len(match.group(1))} digits; the "
                                 f"records hold {len(self.pairs)} pairs")
            position = int(match.group(1))
            if position >= len(self.pairs):
                raise _Fail(404, f"no pair {position}; the records hold {len(self.pairs)}")
            if match.group(2) == "image":
                data, mime = self.pairs.image(position)
                return 200, mime, data
            return 200, "audio/wav", self.pairs.sound(position)
        routes = {("/api/state", "GET"): self.state, ("/api/labels", "PUT"): self.save,
                  ("/api/localize", "POST"): self.localize,
                  ("/api/localize_video", "POST"): self.localize_video}
        handler = routes.get((path, method))
        if handler is None:
            if any(p == path for p, _ in routes):
                raise _Fail(405, f"{method} is not allowed on {path}")
            raise _Fail(404, f"not found: {path}")
        request = _read_json(environ) if method in ("PUT", "POST") else {}
        return 200, "application/json", json.dumps(handler(request)).encode()

    def _static_file(self, name: str, method: str) -> tuple[int, str, bytes]:
        _allow(method, "GET")
        if name not in self._static:  # only the files shipped with the page
            raise _Fail(404, f"not found: /static/{name}")
        with open(os.path.join(STATIC_DIR, name), "rb") as f:
            data = f.read()
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return 200, mime + ("; charset=utf-8" if mime.startswith("text/") or
                            mime.endswith("javascript") else ""), data

    # -- annotate ----------------------------------------------------------------

    def _layer(self) -> tuple[dict, str | None]:
        try:
            return annotations.load(self.annotations_path), None
        except annotations.CorruptAnnotationsError as error:
            return {"labels": {}}, str(error)

    def state(self, _: dict) -> dict:
        layer, problem = self._layer()
        labels = {k: v for k, v in layer["labels"].items() if k in self.pairs.index}
        return {"records": self.pairs.directory, "annotations": self.annotations_path,
                "annotations_error": problem, "server": self.localizer.server,
                "total": len(self.pairs),
                "labelled": sum(annotations.is_labelled(v) for v in labels.values()),
                "pairs": [{"id": sample_id, "clip": self.pairs.clip_of(i),
                           "label": labels.get(sample_id)}
                          for i, sample_id in enumerate(self.pairs.ids)]}

    def save(self, request: dict) -> dict:
        sample_id = request.get("id")
        if sample_id not in self.pairs.index:
            raise _Fail(400, f"no pair with this id in the records. Received: id={sample_id!r}")
        try:
            label = annotations.save_label(
                self.annotations_path, sample_id, request.get("boxes", []),
                request.get("no_source", False), request.get("by", ""),
                request.get("revision", 0), self.pairs.identity)
        except annotations.RevisionConflict as conflict:
            raise _Fail(409, str(conflict), kind="revision", current=conflict.current) from None
        except annotations.CorruptAnnotationsError as error:
            raise _Fail(409, str(error), kind="corrupt") from None
        except ValueError as error:
            raise _Fail(400, str(error)) from None
        except OSError as error:
            raise _Fail(500, f"the label was not saved ({error.strerror or error}); the "
                             f"annotation file holds the labels saved before") from None
        layer, _ = self._layer()
        return {"id": sample_id, "label": label,
                "labelled": sum(annotations.is_labelled(v) for k, v in layer["labels"].items()
                                if k in self.pairs.index)}

    # -- localise ----------------------------------------------------------------

    def _pair_index(self, request: dict, key: str) -> int:
        value = request[key]
        if not isinstance(value, int) or isinstance(value, bool) or \
                not 0 <= value < len(self.pairs):
            raise _Fail(400, f"{key} must be a pair number in [0, {len(self.pairs)}). "
                             f"Received: {key}={value!r}")
        return value

    def localize(self, request: dict) -> dict:
        try:
            if "image_pair" in request:
                image = self.pairs.image(self._pair_index(request, "image_pair"))[0]
            else:
                image = as_model_image(*_upload(request, "image")[::-1])
            sound_from = None
            if "mismatch_for" in request:
                sound_from = self.pairs.mismatched(self._pair_index(request, "mismatch_for"))
            elif "sound_pair" in request:
                sound_from = self._pair_index(request, "sound_pair")
            if sound_from is not None:
                sound = self.pairs.sound(sound_from)
            else:
                name, data = _upload(request, "sound")
                sound = as_model_sound(data, name)
            result = self.localizer.localize([image], [sound])[0]
        except UnsupportedFile as error:
            raise _Fail(415, str(error)) from None
        except ModelUnavailable as error:
            raise _Fail(502, str(error)) from None
        if sound_from is not None:
            result["sound"] = {"pair": sound_from, "id": self.pairs.ids[sound_from]}
        return result

    def localize_video(self, request: dict) -> dict:
        name, data = _upload(request, "video")
        try:
            return self.localizer.localize_video(data, name, self.pairs.clip_seconds)
        except UnsupportedFile as error:
            raise _Fail(415, str(error)) from None
        except ModelUnavailable as error:
            raise _Fail(502, str(error)) from None


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise _Fail(405, f"only {allowed} is allowed here. Received: {method}")


def _read_json(environ: dict) -> dict:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _Fail(400, "bad Content-Length") from None
    if length > MAX_BODY_BYTES:
        raise _Fail(413, f"the upload is {length / 1e6:.0f} MB; the studio takes up to "
                         f"{MAX_BODY_BYTES / 1e6:.0f} MB")
    try:
        value = json.loads(environ["wsgi.input"].read(length) or b"{}")
    except (ValueError, UnicodeDecodeError) as error:
        raise _Fail(400, f"the request body is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise _Fail(400, "the request body must be a JSON object")
    return value


def _upload(request: dict, key: str) -> tuple[str, bytes]:
    """({"name", "b64"}) -> (name, bytes); a missing or undecodable file is a 400."""
    item = request.get(key)
    if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
        raise _Fail(400, f"no {key} file in the request. Received: keys {sorted(request)}")
    name = str(item.get("name") or key)
    try:
        data = base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise _Fail(400, f"{name!r}: the upload is not valid base64") from None
    if not data:
        raise _Fail(415, f"{name!r} is empty")
    return name, data


class StudioServer(ThreadedServer):
    """The studio on 127.0.0.1, served by waitress in this process.

        with StudioServer("records/clips", "http://localhost:8501", port=0) as studio:
            print(studio.url)

    Args:
        records_dir, server, annotations_path, model_name, quiet: see `StudioApp`.
        host: address to listen on (loopback: the labels are local files).
        port: 0 picks a free one.
        threads: waitress worker threads (two tabs, uploads and page loads at once).
    """

    def __init__(self, records_dir: str, server: str, annotations_path: str | None = None,
                 model_name: str = "soundloc", host: str = "127.0.0.1", port: int = 8600,
                 quiet: bool = False, threads: int = 8):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must lie in [0, 65535]. Received: port={port}")
        self.app = StudioApp(records_dir, server, annotations_path, model_name, quiet)
        self.server = create_server(
            self.app, host=host, port=port, threads=threads, ident="soundloc-studio",
            max_request_body_size=MAX_BODY_BYTES, expose_tracebacks=False)
