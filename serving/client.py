"""REST client for a soundloc model served by TensorFlow Serving (or serving/dev_server.py).

  soundloc-client [--server=http://localhost:8501] [--model_name=soundloc] [--version=N] status
  soundloc-client ... metadata
  soundloc-client ... predict --image=scene.jpg --sound=scene.wav [--image=... --sound=...]
                      [--format=row|columnar] [--output_dir=predictions]

`predict` sends the files as {"b64": ...} to the `serving_default`
signature, writes <output_dir>/<image name>_overlay.png (heat map and box
over the image at its own resolution) and <image name>_box.json, and
prints the boxes as JSON.

Speaks TF Serving's REST API only (GET /v1/models/<name>[/versions/<v>],
.../metadata, POST ...:predict), so it depends on nothing but the exported
signatures: the standard library, numpy, and Pillow for the PNG.  Requests
have a timeout; connection failures, timeouts and 5xx answers are retried
with exponential backoff, 4xx answers are not.  Server errors ({"error":
...}) become one-line `ServingError` messages; on the command line,
"error: <message>" on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence

import numpy as np

OVERLAY_OPACITY = 0.5
DEFAULT_SERVER = "http://localhost:8501"


class ServingError(Exception):
    """A request that failed: the server's one-line message and the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def error_line(message: str) -> str:
    """TF Serving's error text reduced to the line that explains it.

    Graph errors carry node names and stack lines after the first line, and
    TF Serving C-escapes the message (newlines arrive as a backslash and
    "n"); a failed in-graph check reads "assertion failed: [<message>]".
    """
    text = str(message).replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
    if "assertion failed: [" in text:
        text = text.split("assertion failed: [", 1)[1].split("]\n", 1)[0]
        return text[:-1] if text.endswith("]") else text
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Detected at node", "<stack traces", "[[")) \
                and line != "Graph execution error:":
            return line
    return text.strip() or "unknown error"


class ServingClient:
    """TF Serving's REST API for one model: status, metadata, predict."""

    def __init__(self, server: str = DEFAULT_SERVER, model_name: str = "soundloc",
                 version: int | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep):
        parsed = urllib.parse.urlparse(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"server must be an http(s)://host:port URL. Received: server={server!r}")
        if not model_name or "/" in model_name or ":" in model_name:
            raise ValueError(f"model_name must be a plain name. Received: model_name={model_name!r}")
        if version is not None and (isinstance(version, bool) or int(version) < 1):
            raise ValueError(f"version must be a positive integer. Received: version={version!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("need timeout > 0, retries >= 0, backoff >= 0. Received: "
                             f"timeout={timeout}, retries={retries}, backoff={backoff}")
        self.server = server.rstrip("/")
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._sleep = sleep

    @property
    def model_url(self) -> str:
        url = f"{self.server}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        return url if self.version is None else f"{url}/versions/{self.version}"

    # -- HTTP ------------------------------------------------------------------

    def request(self, method: str, url: str, body: dict | None = None) -> dict:
        """One JSON request with retries; returns the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        attempt = 0
        while True:
            try:
                req = urllib.request.Request(url, data=data, method=method, headers=headers)
                with urllib.request.urlopen(req, timeout=self.timeout) as response:
                    return _decode_json(response.read(), response.status)
            except urllib.error.HTTPError as error:
                status, payload = error.code, error.read()
                message = _error_text(payload) or f"HTTP {status} {error.reason}"
                failure = ServingError(f"{error_line(message)} (HTTP {status})", status)
                if status < 500:
                    raise failure from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    socket.timeout, TimeoutError) as error:
                reason = getattr(error, "reason", error)
                failure = ServingError(f"no answer from {self.server} ({reason})")
            if attempt >= self.retries:
                raise failure
            self._sleep(self.backoff * 2 ** attempt)
            attempt += 1

    def status(self) -> dict:
        """GET /v1/models/<name>[/versions/<v>]: {"model_version_status": [...]}."""
        return self.request("GET", self.model_url)

    def metadata(self) -> dict:
        """GET .../metadata: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        return self.request("GET", self.model_url + "/metadata")

    def predict(self, body: dict) -> dict:
        """POST ...:predict with a request body as TF Serving documents it."""
        return self.request("POST", self.model_url + ":predict", body)

    # -- soundloc --------------------------------------------------------------

    def localize(self, images: Sequence[bytes], sounds: Sequence[bytes],
                 request_format: str = "row") -> list[dict[str, Any]]:
        """Image and WAV file bytes -> one {"heatmap", "box", "score"} per pair."""
        if request_format not in ("row", "columnar"):
            raise ValueError("request_format must be 'row' or 'columnar'. Received: "
                             f"request_format={request_format!r}")
        if len(images) != len(sounds) or not images:
            raise ValueError("need the same, non-zero number of images and sounds. Received: "
                             f"{len(images)} images, {len(sounds)} sounds")
        body = localize_request(images, sounds, request_format)
        return parse_localize_response(self.predict(body), len(images))


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def localize_request(images: Sequence[bytes], sounds: Sequence[bytes],
                     request_format: str = "row") -> dict:
    """The `serving_default` predict body in row ("instances") or columnar ("inputs") form."""
    if request_format == "row":
        return {"signature_name": "serving_default",
                "instances": [{"image_bytes": b64(i), "wav_bytes": b64(s)}
                              for i, s in zip(images, sounds)]}
    return {"signature_name": "serving_default",
            "inputs": {"image_bytes": [b64(i) for i in images],
                       "wav_bytes": [b64(s) for s in sounds]}}


def parse_localize_response(answer: dict, count: int) -> list[dict[str, Any]]:
    """{"predictions": [...]} or {"outputs": {...}} -> per-pair heatmap/box/score."""
    try:
        if "predictions" in answer:
            rows = answer["predictions"]
        else:
            outputs = answer["outputs"]
            rows = [{k: outputs[k][i] for k in ("heatmap", "box", "score")} for i in range(count)]
        results = [{"heatmap": np.asarray(r["heatmap"], np.float32),
                    "box": [float(v) for v in r["box"]], "score": float(r["score"])} for r in rows]
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ServingError(f"unexpected answer from the server ({type(error).__name__}: {error}); "
                           "is this a soundloc model?") from None
    if len(results) != count or any(r["heatmap"].ndim != 2 or len(r["box"]) != 4
                                    for r in results):
        raise ServingError(f"unexpected answer from the server: {len(results)} results for "
                           f"{count} pairs, or wrong shapes")
    return results


# ---------------------------------------------------------------------------
# Overlays (numpy + Pillow; the colours match soundloc_tf.visualize.colorize).


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> RGB float [H, W, 3], the same jet-like map as the TensorBoard images."""
    x = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)[..., None]
    return np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)


def load_rgb(data: bytes) -> np.ndarray:
    """Image file bytes -> uint8 RGB [H, W, 3] (16-bit and gray images scaled to 8 bits)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode.startswith("I;16") or image.mode == "I":
            values = np.asarray(image, dtype=np.float64)
            scale = 65535.0 if values.max() > 255 else 255.0
            gray = np.round(values / scale * 255.0).clip(0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.asarray(image.convert("RGB"))


def overlay_png(image: np.ndarray, heatmap: np.ndarray, box: Sequence[float]) -> bytes:
    """uint8 RGB image, heat map [h, w] in [0, 1] and normalised box -> PNG bytes."""
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    resized = Image.fromarray(np.asarray(heatmap, np.float32)).resize(
        (width, height), Image.BILINEAR)
    heat = np.asarray(resized, np.float32)
    low, high = heat.min(), heat.max()
    heat = (heat - low) / max(high - low, 1e-12)
    blended = (1.0 - OVERLAY_OPACITY) * image.astype(np.float32) / 255.0 + \
        OVERLAY_OPACITY * colorize(heat)
    picture = Image.fromarray(np.round(blended * 255.0).clip(0, 255).astype(np.uint8))
    x1, y1, x2, y2 = box
    ImageDraw.Draw(picture).rectangle(
        [x1 * width, y1 * height, max(x2 * width - 1, x1 * width),
         max(y2 * height - 1, y1 * height)], outline=(255, 255, 255))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------------------
# Command line.


def _decode_json(payload: bytes, status: int) -> dict:
    try:
        value = json.loads(payload)
    except ValueError:
        raise ServingError(f"the server answered HTTP {status} with a body that is not JSON "
                           f"({len(payload)} bytes)", status) from None
    if not isinstance(value, dict):
        raise ServingError(f"the server answered HTTP {status} with JSON that is not an object",
                           status)
    return value


def _error_text(payload: bytes) -> str:
    try:
        value = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace").strip()[:500]
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return value["error"]
    return ""


def _write_atomic(path: str, data: bytes) -> None:
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundloc-client", description="Query a soundloc model served by TensorFlow Serving.")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="REST endpoint (default %(default)s)")
    parser.add_argument("--model_name", default="soundloc")
    parser.add_argument("--version", type=int, default=None, help="default: the latest")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries after connection errors, timeouts and 5xx answers")
    parser.add_argument("--backoff", type=float, default=0.5,
                        help="first retry delay in seconds, doubled on each retry")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="GET /v1/models/<name>")
    commands.add_parser("metadata", help="GET /v1/models/<name>/metadata")
    predict = commands.add_parser("predict", help="localise sounds in images")
    predict.add_argument("--image", action="append", required=True, help="JPEG or PNG; repeat for a batch")
    predict.add_argument("--sound", action="append", required=True, help="WAV; one per --image")
    predict.add_argument("--format", choices=("row", "columnar"), default="row",
                         help="request body: 'instances' (row) or 'inputs' (columnar)")
    predict.add_argument("--output_dir", default="predictions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        client = ServingClient(args.server, args.model_name, args.version, args.timeout,
                               args.retries, args.backoff)
        if args.command == "status":
            print(json.dumps(client.status(), indent=1))
        elif args.command == "metadata":
            print(json.dumps(client.metadata(), indent=1))
        else:
            if len(args.image) != len(args.sound):
                raise ValueError(f"give one --sound per --image. Received: {len(args.image)} "
                                 f"images, {len(args.sound)} sounds")
            images = [_read(p) for p in args.image]
            sounds = [_read(p) for p in args.sound]
            results = client.localize(images, sounds, args.format)
            os.makedirs(args.output_dir, exist_ok=True)
            summary = []
            for path, sound, data, result in zip(args.image, args.sound, images, results):
                stem = os.path.splitext(os.path.basename(path))[0]
                overlay_path = os.path.join(args.output_dir, f"{stem}_overlay.png")
                box_path = os.path.join(args.output_dir, f"{stem}_box.json")
                entry = {"image": path, "sound": sound,
                         "box": [round(v, 6) for v in result["box"]],
                         "score": round(result["score"], 6), "overlay": overlay_path}
                try:
                    picture = load_rgb(data)
                except Exception as error:  # Pillow raises many types for unreadable files
                    raise ValueError(f"the server accepted {path!r} but Pillow cannot read it "
                                     f"to draw the overlay ({type(error).__name__})") from None
                _write_atomic(overlay_path, overlay_png(picture, result["heatmap"], result["box"]))
                _write_atomic(box_path, json.dumps(entry, indent=1).encode())
                summary.append(entry)
            print(json.dumps(summary, indent=1))
    except (ServingError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ValueError(f"cannot read {path!r} ({error.strerror})") from None


def run() -> None:
    """Console entry point: soundloc-client."""
    sys.exit(main())


if __name__ == "__main__":
    run()
