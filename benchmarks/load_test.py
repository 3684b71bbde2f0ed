"""Load test of the REST endpoint: N concurrent clients x M requests against serving/dev_server.

  python -m benchmarks.load_test --model_base_path=exports/soundloc \
      [--clients=8 --requests=25 --bad_every=4 --max_seconds=300 --output=load.json]

Starts `python -m soundloc_tf.serving.dev_server` on 127.0.0.1 (an ephemeral port; loopback
only) as a child process, warms it up, then runs `clients` threads, each sending `requests` :predict
calls over one keep-alive connection.  Every `bad_every`-th request of a client is a bad one
(malformed JSON, a corrupt image, an empty WAV, a missing input, an unknown model, a body
over --max_body_bytes, in turn); the others are good single-pair requests.  The run stops
early at --max_seconds.  The server's resident memory (VmRSS of its process) is read after
the warm-up and at the end.

Prints a table and writes JSON: requests/s, p50/p99 latency of the good requests, the status
counts, failed good requests (anything but 200), bad requests not answered with a 4xx, and
RSS before/after.  Exit status 0 when no good request failed, every bad one got a 4xx and the
RSS grew by at most --max_rss_growth_mb; 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BAD_KINDS = ("malformed json", "corrupt image", "empty wav", "missing input", "unknown model",
             "body over the limit")


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def make_media(seed: int = 0, side: int = 128, rate: int = 8000,
               seconds: float = 1.0) -> tuple[bytes, bytes]:
    """A JPEG of random blocks and a 16-bit PCM WAV tone: one good request's pair."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((side // 8, side // 8, 1), np.uint8))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    t = np.arange(int(rate * seconds)) / rate
    tone = np.round(0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t) * 32767).astype("<i2")
    sound = io.BytesIO()
    with wave.open(sound, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone.tobytes())
    return out.getvalue(), sound.getvalue()


def _empty_wav(rate: int = 8000) -> bytes:
    sound = io.BytesIO()
    with wave.open(sound, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"")
    return sound.getvalue()


def build_requests(model_name: str, max_body_bytes: int) -> tuple[list, dict[str, tuple]]:
    """Good requests (path, body) and the bad ones by kind (path, body, expected status)."""
    predict = f"/v1/models/{model_name}:predict"
    good = []
    pairs = [make_media(seed) for seed in range(3)]
    for image, sound in pairs:
        body = {"signature_name": "serving_default",
                "instances": [{"image_bytes": _b64(image), "wav_bytes": _b64(sound)}]}
        good.append((predict, json.dumps(body).encode()))
    image, sound = pairs[0]
    bad = {
        "malformed json": (predict, b'{"instances": [', 400),
        "corrupt image": (predict, json.dumps({"instances": [
            {"image_bytes": _b64(image[:200]), "wav_bytes": _b64(sound)}]}).encode(), 400),
        "empty wav": (predict, json.dumps({"instances": [
            {"image_bytes": _b64(image), "wav_bytes": _b64(_empty_wav())}]}).encode(), 400),
        "missing input": (predict, json.dumps({"instances": [
            {"image_bytes": _b64(image)}]}).encode(), 400),
        "unknown model": ("/v1/models/no_such_model:predict", good[0][1], 404),
        "body over the limit": (predict, b" " * (max_body_bytes + 1), 413),
    }
    return good, bad


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for process {pid}")


def start_server(model_base_path: str, max_body_bytes: int,
                 timeout: float = 180) -> tuple[subprocess.Popen, str, int, str]:
    """The dev server as a child process: (process, host, port, model name)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "soundloc_tf.serving.dev_server",
         f"--model_base_path={model_base_path}",
         "--host=127.0.0.1", "--rest_api_port=0", "--port=-1",
         f"--max_body_bytes={max_body_bytes}", "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + timeout
    line = process.stdout.readline()
    if not line.startswith("Serving ") or time.monotonic() > deadline:
        process.kill()
        _, error = process.communicate(timeout=30)
        raise RuntimeError(f"the dev server did not start: {line.strip()} {error.strip()[-500:]}")
    # "Serving <name> (versions ...) at http://127.0.0.1:PORT/v1/models/<name>  (...)"
    url = line.split(" at ", 1)[1].split()[0]
    hostport, name = url[len("http://"):].split("/v1/models/")
    host, port = hostport.rsplit(":", 1)
    return process, host, int(port), name


class _Connection:
    """One keep-alive HTTP/1.1 connection that reconnects after the server closes it."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, dict | None]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, body=body,
                                  headers={"Content-Type": "application/json"})
                response = self.conn.getresponse()
                payload = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                try:
                    answer = json.loads(payload)
                except ValueError:
                    answer = None
                return response.status, answer
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A connection the server closed after a previous answer (413s close it).
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_load(host: str, port: int, model_name: str, clients: int, requests: int,
             bad_every: int, max_seconds: float, max_body_bytes: int,
             request_timeout: float = 120) -> dict[str, Any]:
    good, bad = build_requests(model_name, max_body_bytes)
    results: list[list[tuple]] = [[] for _ in range(clients)]
    stop_at = time.monotonic() + max_seconds
    bad_kinds = list(bad)

    def client(index: int) -> None:
        connection = _Connection(host, port, request_timeout)
        bad_count = 0
        try:
            for r in range(requests):
                if time.monotonic() > stop_at:
                    break
                is_bad = bad_every > 0 and (r + index) % bad_every == bad_every - 1
                if is_bad:
                    kind = bad_kinds[(index + bad_count) % len(bad_kinds)]
                    bad_count += 1
                    path, body, expected = bad[kind]
                else:
                    kind, expected = "good", 200
                    path, body = good[(index + r) % len(good)]
                started = time.perf_counter()
                try:
                    status, answer = connection.post(path, body)
                    error = answer.get("error") if isinstance(answer, dict) else None
                except (OSError, http.client.HTTPException) as failure:
                    status, error = -1, f"{type(failure).__name__}: {failure}"
                results[index].append((kind, expected, status, time.perf_counter() - started,
                                       error))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + request_timeout + 30)
    seconds = time.perf_counter() - started
    flat = [item for per_client in results for item in per_client]
    good_items = [i for i in flat if i[0] == "good"]
    bad_items = [i for i in flat if i[0] != "good"]
    latencies = np.array([i[3] for i in good_items]) * 1000.0
    statuses: dict[str, int] = {}
    for item in flat:
        statuses[str(item[2])] = statuses.get(str(item[2]), 0) + 1
    failed_good = [{"status": i[2], "error": i[4]} for i in good_items if i[2] != 200]
    bad_not_4xx = [{"kind": i[0], "status": i[2], "error": i[4]} for i in bad_items
                   if not 400 <= i[2] < 500]
    bad_wrong_status = [{"kind": i[0], "expected": i[1], "status": i[2]} for i in bad_items
                        if i[2] != i[1]]
    return {
        "clients": clients, "requests_per_client": requests, "bad_every": bad_every,
        "sent": len(flat), "good": len(good_items), "bad": len(bad_items),
        "bad_by_kind": {k: sum(1 for i in bad_items if i[0] == k) for k in bad_kinds},
        "seconds": round(seconds, 3),
        "requests_per_second": round(len(flat) / max(seconds, 1e-9), 2),
        "good_per_second": round(len(good_items) / max(seconds, 1e-9), 2),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
            "p99": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
            "max": round(float(latencies.max()), 1) if latencies.size else None},
        "statuses": statuses,
        "failed_good": len(failed_good), "failed_good_examples": failed_good[:5],
        "bad_not_4xx": len(bad_not_4xx), "bad_not_4xx_examples": bad_not_4xx[:5],
        "bad_wrong_status": len(bad_wrong_status),
        "stopped_early": len(flat) < clients * requests,
    }


def load_test(model_base_path: str, clients: int = 8, requests: int = 25, bad_every: int = 4,
              max_seconds: float = 300, max_body_bytes: int = 1 << 20,
              warmup: int = 3) -> dict[str, Any]:
    """Starts the server, warms it up, runs the load, stops the server; the result dict."""
    if clients < 1 or requests < 1:
        raise ValueError(f"clients and requests must be >= 1. Received: {clients}, {requests}")
    process, host, port, name = start_server(model_base_path, max_body_bytes)
    try:
        good, _ = build_requests(name, max_body_bytes)
        connection = _Connection(host, port, 120)
        for i in range(warmup):
            status, answer = connection.post(*good[i % len(good)])
            if status != 200:
                raise RuntimeError(f"warm-up request failed: {status} {answer}")
        connection.close()
        rss_before = rss_bytes(process.pid)
        result = run_load(host, port, name, clients, requests, bad_every, max_seconds,
                          max_body_bytes)
        rss_after = rss_bytes(process.pid)
        alive = process.poll() is None
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    result.update({"model_base_path": str(model_base_path), "server": f"{host}:{port}",
                   "max_body_bytes": max_body_bytes, "server_alive_after": alive,
                   "rss_before_mb": round(rss_before / 2 ** 20, 1),
                   "rss_after_mb": round(rss_after / 2 ** 20, 1),
                   "rss_growth_mb": round((rss_after - rss_before) / 2 ** 20, 1)})
    return result


def table(result: dict[str, Any]) -> str:
    rows = [
        ("clients x requests", f"{result['clients']} x {result['requests_per_client']}"),
        ("sent (good / bad)", f"{result['sent']} ({result['good']} / {result['bad']})"),
        ("seconds", f"{result['seconds']:.1f}"),
        ("requests/s", f"{result['requests_per_second']:.2f}"),
        ("good latency p50 / p99 / max ms",
         f"{result['latency_ms']['p50']} / {result['latency_ms']['p99']} / "
         f"{result['latency_ms']['max']}"),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(result["statuses"].items()))),
        ("failed good requests", str(result["failed_good"])),
        ("bad requests without a 4xx", str(result["bad_not_4xx"])),
        ("server RSS before / after MB",
         f"{result['rss_before_mb']} / {result['rss_after_mb']} "
         f"(+{result['rss_growth_mb']})"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_test",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_base_path", required=True,
                        help="an export's model directory (<export_base>/<name>)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--bad_every", type=int, default=4,
                        help="every n-th request of a client is a bad one (0: none)")
    parser.add_argument("--max_seconds", type=float, default=300)
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20)
    parser.add_argument("--max_rss_growth_mb", type=float, default=200)
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    try:
        result = load_test(args.model_base_path, args.clients, args.requests, args.bad_every,
                           args.max_seconds, args.max_body_bytes)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result["max_rss_growth_mb"] = args.max_rss_growth_mb
    result["passed"] = (result["failed_good"] == 0 and result["bad_not_4xx"] == 0
                        and result["rss_growth_mb"] <= args.max_rss_growth_mb
                        and result["server_alive_after"])
    print(table(result))
    print("PASSED" if result["passed"] else "FAILED")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
