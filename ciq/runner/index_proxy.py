"""The package index, and nothing else, for build steps in a box without a network.

A box (:mod:`.box`) has a network namespace of its own, with no route to anywhere, not
even to the host's loopback where the broker lives. To install a commit's dependencies
the worker runs an :class:`IndexProxy` on a Unix socket bind-mounted into the box, where
:mod:`.relay` turns ``127.0.0.1:PORT`` into that socket for the build steps' proxy.

The allow-list is enforced here, outside the box, so code that talks to the socket
directly gains nothing: a tunnel (``CONNECT``) or a plain-HTTP request (an ``http://``
index such as a local devpi) goes to an allowed ``(host, port)`` only. A loopback,
link-local or unspecified address is reached only when the allow-list spells the host as
that address or as ``localhost``: an allowed name that a DNS trick points at
``127.0.0.1`` must not reach the worker's Redis.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

#: The public index: its pages and the host its files come from.
DEFAULT_INDEX = frozenset({("pypi.org", 443), ("files.pythonhosted.org", 443)})
#: Variables uv and pip read index URLs from (space-separated lists allowed), and those
#: of them that replace the public index.
INDEX_VARIABLES = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL",
                   "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
REPLACING = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "PIP_INDEX_URL")
#: Bytes a request head may have: pip's and uv's are well under 2 KiB.
HEAD_LIMIT = 16 << 10
#: Seconds a client has for its whole head: a silent one must not hold a thread for ever.
HEAD_TIMEOUT = 30.0
#: Connections served at once; a build opens a few dozen at most.
MAX_CONNECTIONS = 64
#: Seconds to reach the index (or the worker's own proxy).
CONNECT_TIMEOUT = 10.0
#: Seconds a connection may carry no byte either way before it is closed.
IDLE_TIMEOUT = 300.0
#: Names that are loopback by definition (RFC 6761), whatever a resolver answers.
LOOPBACK_NAMES = frozenset({"localhost"})
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
#: Headers of a plain-HTTP request meant for this proxy, not for the index.
HOP_HEADERS = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authorization"})
NOT_INDEX = "ciq's build proxy only reaches the package index; {} is not part of it"


@dataclass(frozen=True)
class Reply:
    """An error answered to the client instead of a connection to the index."""

    status: int
    line: str

    def send(self, sock: socket.socket) -> None:
        body = (self.line + "\n").encode()
        head = (f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with suppress(OSError):  # a client gone already needs no answer
            sock.sendall(head.encode() + body)


@dataclass(frozen=True)
class Request:
    """The head of one proxy request: ``path`` is the origin form of a plain-HTTP
    request's URL (``""`` for CONNECT), ``headers`` its lines but those of HOP_HEADERS."""

    method: str
    host: str
    port: int
    path: str
    version: str
    headers: tuple[str, ...]

    def forwarded(self) -> bytes:
        """The head sent on to the index, asking it to close after its answer: the
        connection is spliced to one host and must not carry a request for another."""
        lines = (f"{self.method} {self.path} {self.version}", *self.headers, "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def allowed_hosts(environ: Mapping[str, str],
                  extra: Iterable[str] = ()) -> frozenset[tuple[str, int]]:
    """The ``(host, port)`` pairs of the package index the worker uses: the public index
    unless ``UV_INDEX_URL``, ``UV_DEFAULT_INDEX`` or ``PIP_INDEX_URL`` replaces it, the
    hosts of every index URL uv and pip read, and ``extra`` entries ``host[:port]``
    (port 443 by default; a malformed one raises ValueError)."""
    found: set[tuple[str, int]] = set()
    if not any(environ.get(name, "").strip() for name in REPLACING):
        found |= DEFAULT_INDEX
    for name in INDEX_VARIABLES:
        # A path or file:// index needs no network: nothing to allow for it.
        found.update(p for e in environ.get(name, "").split() if (p := _index_host(e)))
    for entry in extra:
        pair = _endpoint("//" + entry.strip(), 443)
        if pair is None:
            raise ValueError(f"index host {entry!r} is not host[:port], e.g. devpi:3141")
        found.add(pair)
    return frozenset(found)


def upstream_proxy(environ: Mapping[str, str]) -> str | None:
    """The worker's own ``http://`` proxy to the internet, if it has one; others
    (``socks5://``, ``https://``) are not spoken here, and the index is dialled directly."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        value = environ.get(name, "").strip()
        if value.lower().startswith("http://"):
            return value
    return None


def may_reach(host: str, address: str) -> bool:
    """Whether a connection for the allowed ``host`` may go to ``address``, one it
    resolved to: a loopback, link-local or unspecified address only when ``host`` is
    spelled as an address or as ``localhost``, never through another name."""
    return not _is_special(address) or host in LOOPBACK_NAMES or _ip(host) is not None


class IndexProxy:
    """A filtering HTTP proxy on a Unix socket: ``with IndexProxy(path, allowed):`` serves
    in daemon threads, then closes every connection and removes the socket file."""

    def __init__(self, socket_path: Path, allowed: frozenset[tuple[str, int]],
                 upstream: str | None = None, *, head_timeout: float = HEAD_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.socket_path = socket_path
        self.allowed = frozenset((host.lower(), port) for host, port in allowed)
        self.upstream = _endpoint(upstream, 80) if upstream else None
        if upstream and (self.upstream is None or not upstream.lower().startswith("http://")):
            raise ValueError(f"upstream proxy {upstream!r} is not http://HOST[:PORT]")
        #: The Proxy-Authorization line for the upstream, when its URL has a user.
        self.credentials: tuple[str, ...] = ()
        if upstream and (user := urlsplit(upstream)).username is not None:
            token = base64.b64encode(f"{user.username}:{user.password or ''}".encode())
            self.credentials = (f"Proxy-Authorization: Basic {token.decode()}",)
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    def __enter__(self) -> IndexProxy:
        if self.socket_path.is_socket():  # left by a worker that was killed
            self.socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            os.chmod(self.socket_path, 0o666)  # the box runs as another user (nobody)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,),
                                          name="index-proxy", daemon=True)
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._listener is not None:
            _shut(self._listener)  # wakes the accepting thread
            self._listener.close()
            self._listener = None
        if self._acceptor is not None:
            self._acceptor.join(5)  # after it, no handler starts any more
        with self._lock:
            for sock in self._open:
                _shut(sock)  # its handler wakes on EOF, closes and forgets it
        if self.socket_path.is_socket():
            self.socket_path.unlink()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # shut by __exit__
            if not self._slots.acquire(blocking=False):
                logger.warning("index proxy %s: over %d connections, one refused",
                               self.socket_path, self.max_connections)
                client.settimeout(1)
                Reply(503, "ciq's build proxy is busy; try again").send(client)
                client.close()
                continue
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head = _read_head(client, self.head_timeout)
            if not isinstance(head, tuple):  # closed before a byte, or a broken head
                return head.send(client) if head else None
            raw, rest = head
            request = _parse(raw)
            if request is None:
                return Reply(400, "ciq's build proxy: not a proxy request").send(client)
            dialled = self._dial(request)
            if isinstance(dialled, Reply):
                logger.info("index proxy %s: %s %s:%d answered %d", self.socket_path,
                            request.method, request.host, request.port, dialled.status)
                return dialled.send(client)
            upstream, early = dialled
            with self._lock:
                if self._listener is None:  # __exit__ began while this one dialled
                    return
                self._open.add(upstream)
            if request.method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + early)
                upstream.sendall(rest)  # from a client that did not wait for the 200
            else:
                upstream.sendall(request.forwarded() + rest)
            _splice(client, upstream)
        except OSError as exc:
            logger.debug("index proxy %s: connection ended: %s", self.socket_path, exc)
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            client.close()
            if upstream is not None:
                upstream.close()
            self._slots.release()

    def _dial(self, request: Request) -> tuple[socket.socket, bytes] | Reply:
        """A connection to the request's host, directly or through the worker's own
        proxy, with any bytes that proxy sent past its answer; or why not."""
        host, port = request.host, request.port
        if (host, port) not in self.allowed:
            return Reply(403, NOT_INDEX.format(_spell(host, port)))
        direct = self.upstream is None or _is_local(host)  # a proxy sees not our loopback
        try:
            addresses = [str(a[4][0]) for a in socket.getaddrinfo(host, port,
                                                                  type=socket.SOCK_STREAM)]
        except OSError as exc:
            if direct:
                return Reply(502, f"ciq's build proxy cannot resolve {host}: {exc}")
            addresses = []  # behind a proxy the worker often has no DNS of its own
        if bad := [a for a in addresses if not may_reach(host, a)]:
            return Reply(403, NOT_INDEX.format(f"{_spell(host, port)} (it resolves to "
                                               f"{bad[0]}, a local address)"))
        if not direct:
            return self._through_upstream(request)
        error: OSError | None = None
        for address in addresses:  # the checked ones: a new lookup could answer otherwise
            try:
                return socket.create_connection((address, port), CONNECT_TIMEOUT), b""
            except OSError as exc:
                error = exc
        return Reply(502, f"ciq's build proxy cannot reach {_spell(host, port)}: {error}")

    def _through_upstream(self, request: Request) -> tuple[socket.socket, bytes] | Reply:
        assert self.upstream is not None
        name, where = _spell(*self.upstream), _spell(request.host, request.port)
        try:
            sock = socket.create_connection(self.upstream, CONNECT_TIMEOUT)
        except OSError as exc:
            return Reply(502, f"ciq's build proxy cannot reach its proxy {name}: {exc}")
        lines = (f"CONNECT {where} HTTP/1.1", f"Host: {where}", *self.credentials)
        answer: tuple[bytes, bytes] | Reply | None = None
        with suppress(OSError):
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            answer = _read_head(sock, CONNECT_TIMEOUT)
        status = answer[0].split(b"\r\n", 1)[0] if isinstance(answer, tuple) else b"no answer"
        if isinstance(answer, tuple) and re.fullmatch(rb"HTTP/1\.[01] 2\d\d( .*)?", status):
            return sock, answer[1]
        sock.close()
        return Reply(502, f"ciq's build proxy: its proxy {name} did not open {where}: "
                          f"{status.decode('latin-1')}")


def _index_host(entry: str) -> tuple[str, int] | None:
    if "=" in entry.split("://", 1)[0]:  # uv's UV_INDEX takes NAME=URL entries
        entry = entry.partition("=")[2]
    port = {"https": 443, "http": 80}.get(entry.partition("://")[0].lower())
    return _endpoint(entry, port) if port else None


def _endpoint(url: str, default_port: int | None) -> tuple[str, int] | None:
    """The host (lowercased) and port of a URL or of ``//host[:port]``, or None."""
    try:
        split = urlsplit(url)
        host, port = (split.hostname or "").lower(), split.port or default_port
    except ValueError:  # a port out of range, a bad [v6] literal
        return None
    if port is None or not (HOST_NAME.fullmatch(host) or _ip(host) is not None):
        return None
    return host, port


def _parse(raw: bytes) -> Request | None:
    lines = raw.decode("latin-1").split("\r\n")[:-2]  # the head ends with an empty line
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not (method.isascii() and method.isalpha() and method.isupper()
            and version in ("HTTP/1.0", "HTTP/1.1")
            and all("!" <= ch <= "~" for ch in target)):
        return None
    headers = tuple(line for line in lines[1:]
                    if line.split(":", 1)[0].strip().lower() not in HOP_HEADERS)
    if method == "CONNECT":  # host:port or [v6]:port and nothing else
        pair = _endpoint("//" + target, None) if re.fullmatch(r"[^/?#@]+", target) else None
        return Request(method, *pair, "", version, headers) if pair else None
    pair = _endpoint(target, 80) if target.lower().startswith("http://") else None
    if pair is None:
        return None  # origin form: a request for a server, not for a proxy
    split = urlsplit(target)  # which _endpoint found sound
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return Request(method, *pair, path, version, headers)


def _read_head(sock: socket.socket, timeout: float) -> tuple[bytes, bytes] | Reply | None:
    """A head up to its empty line and the bytes read past it; a Reply when it is too
    long, too slow or cut short; None at EOF before any byte."""
    deadline = time.monotonic() + timeout
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0 and len(data) <= HEAD_LIMIT:
        try:
            if (remaining := deadline - time.monotonic()) <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
        except TimeoutError:
            return Reply(408, "ciq's build proxy: request head not sent in time")
        if not chunk:
            return Reply(400, "ciq's build proxy: request head cut short") if data else None
        data += chunk
    if end < 0 or end + 4 > HEAD_LIMIT:
        return Reply(400, f"ciq's build proxy: request head over {HEAD_LIMIT} bytes")
    return data[:end + 4], data[end + 4:]


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides are done or none spoke for IDLE_TIMEOUT
    seconds. One side's EOF is passed on as a half-close: a client may end its request
    and still wait for the answer."""
    for sock in (a, b):
        sock.settimeout(IDLE_TIMEOUT)
    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        while selector.get_map():
            if not (events := selector.select(IDLE_TIMEOUT)):
                return
            for key, _ in events:
                source, sink = key.fileobj, key.data
                assert isinstance(source, socket.socket)
                if data := source.recv(65536):
                    sink.sendall(data)
                else:
                    selector.unregister(source)
                    sink.shutdown(socket.SHUT_WR)


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return None


def _is_special(address: str) -> bool:
    """Loopback, unspecified, or link-local (where cloud metadata services answer)."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is None or ip.is_loopback or ip.is_link_local or ip.is_unspecified


def _is_local(host: str) -> bool:
    """A host spelled as the worker's own: dialled directly, never through its proxy."""
    return host in LOOPBACK_NAMES or (_ip(host) is not None and _is_special(host))


def _spell(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
