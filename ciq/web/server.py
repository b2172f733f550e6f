"""Serving the web app with uvicorn: `ciq web` in the foreground, `ciq up` in a thread.

The listening socket is bound before uvicorn starts, so that a port in use is a
:class:`PortInUse` error with one line to say, not uvicorn's log and exit.
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from ..errors import CiqError, PortInUse
from ..settings import Settings
from .app import create_app

#: Seconds that open connections get to finish when the server stops.
GRACEFUL_SHUTDOWN = 5


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0 picks a free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CiqError(f"cannot listen on {host}: {exc.strerror}; give an address such as "
                       "127.0.0.1 with --host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a restart may bind while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use; choose another with --port") from None
        raise CiqError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn raises a caught SIGINT/SIGTERM again once it has stopped, which ends
        # the process with that signal; a stopped `ciq web` exits with status 0 instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: do not wait for connections
            self.should_exit = True

        originals = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


class WebServer:
    """The web app on a socket bound at once (:class:`PortInUse` if taken)."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.socket = bind(host, port)
        self.host = host
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False,
                                lifespan="off", server_header=False,
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
        self.server = _Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (in the main thread) or :meth:`stop`."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> None:
        """Serve in a background thread (for `ciq up`); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.run, name="ciq-web", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = GRACEFUL_SHUTDOWN + 1) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080,
          announce: Callable[[str], object] | None = None) -> None:
    """Serve the web UI until SIGINT or SIGTERM; ``announce`` gets its URL once bound."""
    web = WebServer(settings, host, port)
    if announce is not None:
        announce(web.url)
    web.run()
