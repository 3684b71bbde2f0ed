"""A development stand-in for TensorFlow Serving: its REST and gRPC APIs, on 127.0.0.1.

  soundloc-dev-server --model_base_path=exports/soundloc [--model_name=soundloc]
                      [--rest_api_port=8501] [--port=8500] [--all_versions]

Serves the versions of one exported model (`<model_base_path>/<version>/`)
with TF Serving's URLs, JSON rules and gRPC service, so the client, curl and
any TF Serving client work against either:

  GET  /v1/models/<name>[/versions/<v>]            model status
  GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs
  POST /v1/models/<name>[/versions/<v>]:predict    row ("instances") or
       columnar ("inputs") body, {"b64": ...} for bytes; answers
       {"predictions": [...]} or {"outputs": {...}}
  gRPC tensorflow.serving.PredictionService/Predict (--port; needs
       tensorflow-serving-api, see serving/README.md)

Like TF Serving it loads only the latest version (--all_versions loads them
all) and replays each version's assets.extra/tf_serving_warmup_requests
before serving it.  Errors are {"error": "<message>"} (gRPC: the status
code TF Serving uses) with TF Serving's HTTP codes: 400 for bad requests
(malformed JSON, missing or unknown inputs, unknown signature, undecodable
bytes: the in-graph checks' message), 404 for an unknown model or version,
413 for a request over a limit; an unexpected failure is a 500 for that
request only.  Error messages are cut to the line that explains them.

Limits, each a 413 naming it (TF Serving has none of these; they keep one
request from exhausting a development machine):
  --max_body_bytes      request body (64 MiB; gRPC: message size)
  --max_instances       instances in one request (64)
  --max_response_bytes  the answer, estimated at 24 bytes per number before
                        the model runs (64 MiB: 55 instances of a 224 x 224
                        heat map)
  --memory_budget_bytes what the requests being decoded at once may claim
                        (1 GiB), estimated before decoding: JSON values
                        counted in the body, the bytes a gRPC TensorProto's
                        shape would take; more waits, over all of it: 413

The network layers are maintained servers, not hand-written ones: waitress
(REST; pure Python, no dependencies) owns the listen backlog (1024),
keep-alive, the connection limit (--max_connections, more wait in the
backlog) and a bounded pool of worker threads (--threads); grpcio (gRPC,
installed with TensorFlow) owns HTTP/2.  Requests are not batched and
versions are not polled for.  For development and tests on a machine
without Docker; production uses TF Serving (serving/README.md).  It needs
only the standard library, numpy, TensorFlow (to load the SavedModel),
waitress and grpcio; of soundloc_tf only tf_logs and warmup (the warm-up
record format), never the model code.

By role: model_store.py (the versions and the limits), json_rules.py (TF
Serving's JSON), rest.py (WSGI), grpc_service.py (gRPC), memory_budget.py
and request_errors.py (what they share); this module starts both servers
and is the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Sequence

from soundloc_tf.tf_logs import quiet_tensorflow

from .grpc_service import GRPC_INSTALL_HINT, grpc_server
from .memory_budget import DEFAULT_MEMORY_BUDGET_BYTES
from .model_store import DEFAULT_MAX_INSTANCES, DEFAULT_MAX_RESPONSE_BYTES, ModelStore
from .rest import rest_server
from .threaded import ThreadedServer

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


class DevServer(ThreadedServer):
    """TF Serving's REST (and, with `grpc_port`, gRPC) API for one exported model, in this
    process.

        with DevServer("exports/soundloc", port=0) as server:   # port 0: any free port
            urllib.request.urlopen(server.url + "/v1/models/soundloc")

    Args:
        model_base_path: directory holding the integer version directories.
        model_name: the name in URLs; default: the directory's name.
        host: address to listen on (loopback by default).
        port: REST port (0: any free one).
        all_versions: load every version, not only the latest.
        max_body_bytes: request body limit (REST body, gRPC message), 413 beyond.
        quiet: no request log on stderr.
        max_concurrent_predictions: model runs at once; the others wait.
        grpc_port: gRPC port (0: any free one; None: no gRPC).
        max_instances: instances per request, 413 beyond.
        max_response_bytes: estimated answer size, 413 beyond.
        threads: worker threads of each server.
        max_connections: open REST connections; more wait in the listen backlog.
        memory_budget_bytes: memory the requests being decoded at once may claim (413 for a
            request claiming more, the others wait for their share).
    """

    thread_name = "soundloc-dev-server"

    def __init__(self, model_base_path: str, model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 8501, all_versions: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, quiet: bool = False,
                 max_concurrent_predictions: int = 4, grpc_port: int | None = None,
                 max_instances: int = DEFAULT_MAX_INSTANCES,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, threads: int = 8,
                 max_connections: int = 100,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES):
        for name, value in (("port", port), ("grpc_port", grpc_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must lie in [0, 65535]. Received: {name}={value}")
        limits = {"max_body_bytes": max_body_bytes, "max_instances": max_instances,
                  "max_response_bytes": max_response_bytes, "threads": threads,
                  "max_connections": max_connections,
                  "max_concurrent_predictions": max_concurrent_predictions,
                  "memory_budget_bytes": memory_budget_bytes}
        if min(limits.values()) < 1:
            raise ValueError(f"limits must be >= 1. Received: {limits}")
        self.store = ModelStore(model_base_path, model_name, all_versions, max_instances,
                                max_response_bytes, max_concurrent_predictions,
                                memory_budget_bytes)
        self.server = rest_server(self.store, host, port, max_body_bytes, quiet, threads,
                                  max_connections)
        self.grpc = self.grpc_port = None
        if grpc_port is not None:
            try:
                self.grpc, self.grpc_port = grpc_server(self.store, host, grpc_port,
                                                        max_body_bytes, threads)
            except BaseException:
                self.server.close()
                raise

    @property
    def grpc_target(self) -> str | None:
        """host:port of the gRPC server (None: not started)."""
        return None if self.grpc is None else f"{self.server.effective_host}:{self.grpc_port}"

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace=1).wait()
        super().stop()


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="soundloc-dev-server",
        description="Development stand-in for TF Serving's REST and gRPC APIs (production: "
                    "TF Serving).")
    parser.add_argument("--model_base_path", required=True,
                        help="directory holding the integer version directories")
    parser.add_argument("--model_name", default=None, help="default: the directory's name")
    parser.add_argument("--host", default="127.0.0.1", help="default %(default)s (local only)")
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--port", type=int, default=8500,
                        help="gRPC port, as TF Serving's flag (default %(default)s; -1: no gRPC; "
                             "without tensorflow-serving-api: REST only, with a note)")
    parser.add_argument("--all_versions", action="store_true",
                        help="load every version, not only the latest")
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max_instances", type=int, default=DEFAULT_MAX_INSTANCES)
    parser.add_argument("--max_response_bytes", type=int, default=DEFAULT_MAX_RESPONSE_BYTES)
    parser.add_argument("--threads", type=int, default=8, help="worker threads per server")
    parser.add_argument("--max_connections", type=int, default=100,
                        help="open REST connections; more wait in the listen backlog")
    parser.add_argument("--memory_budget_bytes", type=int, default=DEFAULT_MEMORY_BUDGET_BYTES,
                        help="memory the requests being decoded at once may claim, estimated "
                             "before decoding (REST JSON, gRPC tensors); default %(default)s")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    parser.add_argument("--verbose", action="store_true", help="TensorFlow's C++ log lines too")
    args = parser.parse_args(argv)
    grpc_port = None if args.port < 0 else args.port
    if grpc_port is not None and importlib.util.find_spec("tensorflow_serving") is None:
        print(f"note: REST only; {GRPC_INSTALL_HINT}", file=sys.stderr)
        grpc_port = None
    try:
        server = DevServer(args.model_base_path, args.model_name, args.host, args.rest_api_port,
                           args.all_versions, args.max_body_bytes, args.quiet,
                           grpc_port=grpc_port,
                           max_instances=args.max_instances,
                           max_response_bytes=args.max_response_bytes, threads=args.threads,
                           max_connections=args.max_connections,
                           memory_budget_bytes=args.memory_budget_bytes)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    versions = ", ".join(str(v) for v in sorted(server.store.versions))
    warmed = sum(v.warmup_requests for v in server.store.versions.values())
    grpc_note = f" (gRPC: {server.grpc_target})" if server.grpc_target else ""
    print(f"Serving {server.store.model_name} (versions {versions}; {warmed} warm-up requests "
          f"replayed) at {server.url}/v1/models/{server.store.model_name}{grpc_note}  "
          "(development server; production: TF Serving)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def run() -> None:
    """Console entry point: soundloc-dev-server."""
    sys.exit(main())


if __name__ == "__main__":
    run()
