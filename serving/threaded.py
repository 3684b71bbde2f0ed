"""A waitress server run in a background thread: the dev server and the studio share it.

Standard library only (waitress is imported by the subclasses), so the studio does not
load the dev server's TensorFlow side to use it.
"""

from __future__ import annotations

import threading
from typing import Any


class ThreadedServer:
    """Runs `self.server`, a waitress server its subclass creates, in a daemon thread.

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
