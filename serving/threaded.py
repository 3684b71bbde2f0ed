"""A waitress server run in a background thread: the dev server and the studio share it.

Standard library only (waitress is imported when a server is created), so the studio does
not load the dev server's TensorFlow side to use it.

waitress counts every open connection against its `connection_limit`, idle keep-alive ones
included, and its only deadline, `channel_timeout`, restarts on every byte received
(Pylons/waitress#301): 100 idle keep-alive connections, or 100 sending a header byte every
5 s, shut every other client out.  `create_server` adds the policy it lacks, in waitress's
own maintenance pass (run every second):

* an idle keep-alive connection is closed after KEEPALIVE_IDLE_SECONDS, and at once (after
  AT_CAPACITY_SECONDS) while the server is at its connection limit;
* a request's line and headers must arrive within HEADER_SECONDS of its first byte (a
  deadline that does not restart per byte: slowloris), AT_CAPACITY_SECONDS at the limit;
* its body within BODY_GRACE_SECONDS plus its length at MIN_BODY_BYTES_PER_SECOND;
  late requests get a 408 and the connection is closed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# A keep-alive connection with no request in flight is closed after this long (clients reuse
# theirs within milliseconds; urllib3 and http.client reconnect when one was closed).
KEEPALIVE_IDLE_SECONDS = 5
# The request line and headers must be complete this long after their first byte (Go's
# ReadHeaderTimeout idea; a client sends them in one packet).
HEADER_SECONDS = 10
# The body: this long after the headers plus its length at this rate (1 MiB/s: a 64 MiB body
# may take 74 s).  Chunked bodies are given the server's body limit.
BODY_GRACE_SECONDS = 10
MIN_BODY_BYTES_PER_SECOND = 1024 * 1024
# At the connection limit, idle connections and unfinished headers older than this are
# closed at once, so new clients get in within about two maintenance passes.
AT_CAPACITY_SECONDS = 1
# How often the deadlines are checked (waitress's cleanup_interval, whole seconds).
MAINTENANCE_SECONDS = 1
# waitress's inactivity timeout, still the bound for an answer the client stops reading.
CHANNEL_TIMEOUT_SECONDS = 60
_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                   b"Content-Length: 0\r\n\r\n")


def create_server(application: Any, **adjustments: Any) -> Any:
    """waitress.create_server(application, **adjustments) with the connection policy above:
    one TCP listener (`host`, `port`)."""
    from waitress.adjustments import Adjustments
    from waitress.channel import HTTPChannel
    from waitress.server import TcpWSGIServer
    from waitress.task import ThreadedTaskDispatcher

    class Channel(HTTPChannel):
        # When the first byte of the request being received arrived (time.time(), as
        # waitress's last_activity).
        request_started = 0.0

        def received(self, data: bytes) -> bool:
            if self.request is None and data:
                self.request_started = time.time()
            return super().received(data)

        def expire(self, answer: bytes | None) -> None:
            """Closes the connection, with `answer` sent first (a 408) when given."""
            if answer is None:
                self.will_close = True
                return
            with self.outbuf_lock:
                self.outbufs[-1].append(answer)
                self.current_outbuf_count += len(answer)
                self.total_outbufs_len += len(answer)
            self.close_when_flushed = True
            self.server.pull_trigger()

    class Server(TcpWSGIServer):
        channel_class = Channel

        def maintenance(self, now: float) -> None:
            super().maintenance(now)  # channel_timeout: answers nobody reads
            full = len(self._map) >= self.adj.connection_limit
            for channel in list(self.active_channels.values()):
                if channel.requests or channel.will_close or channel.close_when_flushed:
                    continue  # a request is being answered: the model's time is its own
                request = channel.request
                if request is None:
                    idle = now - channel.last_activity
                    if not channel.total_outbufs_len and idle >= (
                            AT_CAPACITY_SECONDS if full else KEEPALIVE_IDLE_SECONDS):
                        channel.expire(None)
                    continue
                waited = now - channel.request_started
                if not request.headers_finished:
                    late = waited >= (AT_CAPACITY_SECONDS if full else HEADER_SECONDS)
                else:
                    length = self.adj.max_request_body_size if request.chunked else \
                        request.content_length
                    late = waited >= (HEADER_SECONDS + BODY_GRACE_SECONDS
                                      + length / MIN_BODY_BYTES_PER_SECOND)
                if late:
                    channel.expire(_TIMEOUT_ANSWER)

    adjustments.setdefault("cleanup_interval", MAINTENANCE_SECONDS)
    adjustments.setdefault("channel_timeout", CHANNEL_TIMEOUT_SECONDS)
    adj = Adjustments(**adjustments)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    return Server(application, {}, dispatcher=dispatcher, adj=adj)


class ThreadedServer:
    """Runs `self.server`, a waitress server its subclass creates (`create_server`), in a
    daemon thread.

    `start()` returns self, `stop()` closes the socket and joins the thread, and the
    object is a context manager doing both.
    """

    thread_name = "soundloc-server"
    server: Any
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.server.effective_host}:{self.server.effective_port}"

    def start(self) -> "ThreadedServer":
        """Serves in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                        name=self.thread_name)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.server.run()
        except OSError:  # the socket closed by stop()
            pass

    def stop(self) -> None:
        self.server.close()
        self.server.task_dispatcher.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
