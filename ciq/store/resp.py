"""A minimal Redis client (RESP2) for the fast paths only: `ciq enqueue` and `ciq status`.

`ciq enqueue` runs in git hooks; redis-py 8 costs about 0.2 s to import here (its
package imports redis.asyncio unconditionally), which is most of the command's time.
The fast paths need a few commands — AUTH, SELECT, HGET, HVALS, EVALSHA, EVAL — over a
plain TCP or Unix socket, so they speak the protocol themselves. Everything else, and
every URL this client does not handle (TLS, Sentinel), uses redis-py.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import RedisRefused
from .scripts import Script

#: URL schemes this client opens; others go through redis-py.
SCHEMES = ("redis", "unix")


def handles(url: str) -> bool:
    """Whether this client can open ``url`` (else redis-py must)."""
    return url.split("://", 1)[0] in SCHEMES


class RespConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    @classmethod
    def open(cls, url: str, timeout: float = 5.0) -> RespConnection:
        """Connect as redis-py would for this URL (password, username, database)."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parts.path)
            db = int(query.get("db", ["0"])[0])
        elif parts.scheme == "redis":
            sock = socket.create_connection((parts.hostname or "localhost", parts.port or 6379),
                                            timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            path = parts.path.lstrip("/")
            db = int(path or query.get("db", ["0"])[0])
        else:
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
        conn = cls(sock)
        password = unquote(parts.password) if parts.password else None
        if password is not None:
            user = unquote(parts.username) if parts.username else None
            conn.call("AUTH", *([user] if user else []), password)
        if db:
            conn.call("SELECT", db)
        return conn

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def call(self, *args: str | int | bytes) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out += [b"$%d\r\n" % len(data), data, b"\r\n"]
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self) -> Any:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by Redis")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisRefused(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.reader.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")

    def eval(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        """Run a Lua script, by its SHA1 when the server has it cached."""
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisRefused as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return self.call("EVAL", script.text, len(keys), *keys, *args)
