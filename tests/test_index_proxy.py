"""The build proxy with real sockets and processes: a fake index served by http.server,
an IndexProxy on a Unix socket, and relay.py as a real subprocess in front of a urllib
client, as a build step in the box would be."""

from __future__ import annotations

import base64
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ciq.processes import stop_process
from ciq.runner import relay
from ciq.runner.index_proxy import (
    DEFAULT_INDEX,
    IndexProxy,
    allowed_hosts,
    may_reach,
    upstream_proxy,
)

from .helpers import free_port

RELAY = Path(relay.__file__)
PAGE = "<a href='ciq_demo-1.0-py3-none-any.whl'>ciq_demo-1.0</a>"
#: A build step: fetches a page through the relay, prints status and body, exits 7.
CLIENT = """
import sys, urllib.error, urllib.request
proxy = urllib.request.ProxyHandler({{"http": "http://127.0.0.1:{relay}"}})
try:
    answer = urllib.request.build_opener(proxy).open("{url}", timeout=10)
except urllib.error.HTTPError as error:
    answer = error
print(answer.status, answer.read().decode())
sys.exit(7)
"""


@dataclass
class FakeIndex:
    port: int
    #: The request targets it was sent, in order.
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def index() -> Iterator[FakeIndex]:
    """A package index on 127.0.0.1 that answers every GET with PAGE."""
    seen = FakeIndex(0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.paths.append(self.path)
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    seen.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def guarded() -> Iterator[socket.socket]:
    """A listening port standing in for the worker's Redis: nothing may connect to it."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield listener
    finally:
        listener.close()


def connected_to(listener: socket.socket) -> bool:
    """Whether anything connected to ``listener`` (a connection waits in its backlog)."""
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "index.sock"


def ask(path: Path, raw: bytes, end: bool = False) -> bytes:
    """Send ``raw`` to the proxy's socket (then EOF, with ``end``) and read its answer
    until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(str(path))
        try:
            client.sendall(raw)
            if end:
                client.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # it answered and closed first (a refusal): read it
            pass
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        return answer


def run_relay(path: Path, port: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    """relay.py as the box starts it, with no proxy settings of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    args = [sys.executable, "-I", "-S", str(RELAY), str(path), str(port), "--", *cmd]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        stop_process(proc, grace=1)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def client(url: str, relay_port: int) -> list[str]:
    return [sys.executable, "-I", "-c", CLIENT.format(relay=relay_port, url=url)]


def test_a_build_step_reads_the_index_through_the_relay(sock: Path, index: FakeIndex) -> None:
    # Given a proxy that allows the index, and a worker proxy that is down: a host
    # spelled as a loopback address is dialled directly, never through it.
    allowed = frozenset({("127.0.0.1", index.port)})
    with IndexProxy(sock, allowed, upstream=f"http://127.0.0.1:{free_port()}"):
        port = free_port()
        # When a build step in the "box" fetches a page through the relay
        done = run_relay(sock, port, *client(f"http://127.0.0.1:{index.port}/simple/demo/",
                                             port))
    # Then the page arrives, the index saw an origin-form request, and the relay exits
    # with the step's status
    assert done.returncode == 7, done.stderr
    assert done.stdout.strip() == f"200 {PAGE}"
    assert index.paths == ["/simple/demo/"]


def test_a_host_not_allowed_is_refused_and_never_reached(sock: Path, index: FakeIndex,
                                                         guarded: socket.socket) -> None:
    redis_port = guarded.getsockname()[1]
    with IndexProxy(sock, frozenset({("127.0.0.1", index.port)})):
        port = free_port()
        done = run_relay(sock, port, *client(f"http://127.0.0.1:{redis_port}/", port))
    assert done.returncode == 7, done.stderr
    status, body = done.stdout.split(" ", 1)
    assert status == "403"
    assert f"127.0.0.1:{redis_port}" in body and "only reaches the package index" in body
    assert not connected_to(guarded)


def test_a_tunnel_to_a_port_not_allowed_is_refused(sock: Path, index: FakeIndex,
                                                   guarded: socket.socket) -> None:
    redis_port = guarded.getsockname()[1]
    with IndexProxy(sock, frozenset({("127.0.0.1", index.port)})):
        answer = ask(sock, f"CONNECT 127.0.0.1:{redis_port} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert answer.endswith(f"127.0.0.1:{redis_port} is not part of it\n".encode())
    assert not connected_to(guarded)


def test_a_tunnel_to_the_index_carries_bytes_both_ways(sock: Path, index: FakeIndex) -> None:
    with IndexProxy(sock, frozenset({("127.0.0.1", index.port)})):
        answer = ask(sock, f"CONNECT 127.0.0.1:{index.port} HTTP/1.1\r\n\r\n"
                           "GET /simple/ HTTP/1.0\r\n\r\n".encode())
    established, _, rest = answer.partition(b"\r\n\r\n")
    assert established == b"HTTP/1.1 200 Connection established"
    assert rest.startswith(b"HTTP/1.0 200 OK") and rest.endswith(PAGE.encode())
    assert index.paths == ["/simple/"]


@pytest.mark.parametrize("line", [
    "hello",
    "GET /simple/ HTTP/1.1",  # origin form: a request for a server, not a proxy
    "GET http://127.0.0.1:{port}/simple/ HTTP/9.9",
    "GET http://127.0.0.1:{port}/a b/ HTTP/1.1",
    "GET ftp://127.0.0.1:{port}/ HTTP/1.1",
    "CONNECT 127.0.0.1 HTTP/1.1",
    "CONNECT 127.0.0.1:99999 HTTP/1.1",
    "CONNECT 127.0.0.1:{port}/x HTTP/1.1",
])
def test_a_malformed_request_is_a_400(sock: Path, index: FakeIndex, line: str) -> None:
    with IndexProxy(sock, frozenset({("127.0.0.1", index.port)})):
        answer = ask(sock, (line.format(port=index.port) + "\r\nHost: x\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert index.paths == []


def test_a_head_too_long_or_too_slow_is_refused(sock: Path, index: FakeIndex) -> None:
    start = f"GET http://127.0.0.1:{index.port}/ HTTP/1.1\r\nX-Pad: ".encode()
    with IndexProxy(sock, frozenset({("127.0.0.1", index.port)}), head_timeout=0.5):
        too_long = ask(sock, start + b"a" * (17 << 10))  # answered before the timeout
        too_slow = ask(sock, start)  # and never the end of the head
    assert too_long.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert too_slow.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert index.paths == []


def test_an_index_that_does_not_answer_is_a_502(sock: Path) -> None:
    dead = free_port()
    with IndexProxy(sock, frozenset({("127.0.0.1", dead)})):
        answer = ask(sock, f"CONNECT 127.0.0.1:{dead} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


def test_connections_over_the_cap_get_503_and_exit_closes_the_rest(sock: Path) -> None:
    held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        with IndexProxy(sock, frozenset(), max_connections=2):
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666  # the box is another user
            for conn in held:  # silent: each holds a slot while its head is awaited
                conn.settimeout(5)
                conn.connect(str(sock))
            assert ask(sock, b"").startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert not sock.exists()
        assert [conn.recv(1) for conn in held] == [b"", b""]  # closed, not timed out
    finally:
        for conn in held:
            conn.close()


def test_exit_closes_an_open_tunnel(sock: Path, index: FakeIndex) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        with IndexProxy(sock, frozenset({("127.0.0.1", index.port)})):
            conn.connect(str(sock))
            conn.sendall(f"CONNECT 127.0.0.1:{index.port} HTTP/1.1\r\n\r\n".encode())
            assert conn.recv(100) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        assert conn.recv(1) == b""


def test_a_name_that_resolves_to_loopback_is_refused(tmp_path: Path, index: FakeIndex) -> None:
    # Given a DNS trick: an allowed index name that resolves to this host's loopback,
    # played with an /etc/hosts of its own in a mount namespace (bubblewrap), where the
    # proxy runs and is asked for it
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 index.example.org\n")
    script = textwrap.dedent(f"""
        import socket, sys
        from pathlib import Path
        from ciq.runner.index_proxy import IndexProxy

        assert socket.gethostbyname("index.example.org") == "127.0.0.1"
        sock = Path({str(tmp_path / "proxy.sock")!r})
        with IndexProxy(sock, frozenset({{("index.example.org", {index.port})}})):
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(str(sock))
            conn.sendall(b"GET http://index.example.org:{index.port}/simple/ HTTP/1.1\\r\\n\\r\\n")
            sys.stdout.buffer.write(conn.recv(4096))
    """)
    done = subprocess.run(["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(hosts),
                           "/etc/hosts", "--", sys.executable, "-c", script],
                          capture_output=True, timeout=60)
    # Then it is refused, and the index never hears of it
    assert done.stdout.startswith(b"HTTP/1.1 403 Forbidden\r\n"), done.stderr
    assert b"a local address" in done.stdout
    assert index.paths == []


def test_localhost_and_loopback_addresses_spelled_in_the_list_are_reached(
        sock: Path, index: FakeIndex) -> None:
    allowed = frozenset({("localhost", index.port), ("127.0.0.1", index.port)})
    with IndexProxy(sock, allowed):
        for host in ("localhost", "LocalHost", "127.0.0.1"):
            answer = ask(sock, f"GET http://{host}:{index.port}/{host} HTTP/1.1\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.0 200 OK"), answer
    assert index.paths == ["/localhost", "/LocalHost", "/127.0.0.1"]


@pytest.mark.parametrize(("host", "address", "reached"), [
    ("pypi.org", "151.101.0.223", True),
    ("pypi.org", "127.0.0.1", False),  # an allowed name pointed at loopback
    ("pypi.org", "127.0.1.1", False),
    ("pypi.org", "::1", False),
    ("pypi.org", "::ffff:127.0.0.1", False),
    ("pypi.org", "169.254.169.254", False),  # the cloud's metadata service
    ("pypi.org", "fe80::1%eth0", False),
    ("pypi.org", "0.0.0.0", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("::1", "::1", True),
    ("localhost", "127.0.0.1", True),
])
def test_may_reach(host: str, address: str, reached: bool) -> None:
    assert may_reach(host, address) is reached


class FakeUpstream:
    """The worker's own proxy: answers one CONNECT with ``status``, then echoes in
    upper case."""

    def __init__(self, status: bytes) -> None:
        self.status = status
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://user:secret@127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                head += chunk
            self.heads.append(head)
            conn.sendall(self.status)
            while chunk := conn.recv(4096):
                conn.sendall(chunk.upper())

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize(("status", "answer"), [
    (b"HTTP/1.1 200 Connection established\r\n\r\n",
     b"HTTP/1.1 200 Connection established\r\n\r\nPING"),
    (b"HTTP/1.1 403 Forbidden\r\n\r\n", b"HTTP/1.1 502 Bad Gateway\r\n"),
])
def test_the_index_is_reached_through_the_workers_own_proxy(sock: Path, status: bytes,
                                                            answer: bytes) -> None:
    upstream = FakeUpstream(status)
    try:
        with IndexProxy(sock, frozenset({("192.0.2.10", 443)}), upstream=upstream.url):
            got = ask(sock, b"CONNECT 192.0.2.10:443 HTTP/1.1\r\n\r\nping", end=True)
    finally:
        upstream.close()
    assert got.startswith(answer), got
    token = base64.b64encode(b"user:secret").decode()
    assert upstream.heads == [b"CONNECT 192.0.2.10:443 HTTP/1.1\r\nHost: 192.0.2.10:443\r\n"
                              b"Proxy-Authorization: Basic " + token.encode() + b"\r\n\r\n"]


def test_relay_forwards_sigterm_and_reports_signals(sock: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    waits = ("import signal, sys, time, pathlib\n"
             "signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             "time.sleep(30)\n")
    args = [sys.executable, "-I", "-S", str(RELAY), str(sock), str(free_port()), "--",
            sys.executable, "-c", waits]
    proc = subprocess.Popen(args, start_new_session=True)
    try:
        for _ in range(200):
            if ready.exists():
                break
            with suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
        proc.terminate()  # to the relay only: the step must hear it through the relay
        assert proc.wait(10) == 5
    finally:
        stop_process(proc, grace=1)
    killed = run_relay(sock, free_port(), sys.executable, "-c",
                       "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == 128 + 9


def test_relay_answers_502_when_the_workers_end_is_gone(sock: Path) -> None:
    port = free_port()
    done = run_relay(sock, port, *client("http://127.0.0.1:9/simple/", port))
    assert done.returncode == 7, done.stderr
    assert done.stdout.strip() == "502 ciq relay: the worker's package index proxy is not there"


def test_relay_runs_the_command_when_its_port_is_taken(sock: Path,
                                                        guarded: socket.socket) -> None:
    done = run_relay(sock, guarded.getsockname()[1], sys.executable, "-c",
                     "print('built'); raise SystemExit(3)")
    assert (done.returncode, done.stdout) == (3, "built\n")
    assert done.stderr.count("\n") == 1 and "cannot listen on 127.0.0.1" in done.stderr


def test_allowed_hosts_default_to_the_public_index() -> None:
    assert allowed_hosts({}) == {("pypi.org", 443), ("files.pythonhosted.org", 443)}
    assert allowed_hosts({"UV_INDEX_URL": "  "}) == DEFAULT_INDEX


@pytest.mark.parametrize("name", ["UV_INDEX_URL", "UV_DEFAULT_INDEX", "PIP_INDEX_URL"])
def test_an_index_url_replaces_the_public_index(name: str) -> None:
    environ = {name: "https://User:pw@Devpi.Example:3141/root/pypi/+simple/"}
    assert allowed_hosts(environ) == {("devpi.example", 3141)}


def test_extra_indexes_are_added_with_their_ports() -> None:
    environ = {
        "UV_EXTRA_INDEX_URL": "https://a.example/simple http://b.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://c.example:8443/simple",
        "UV_INDEX": "internal=https://pkgs.example/simple/ http://[fd00::5]:3141/",
        "PIP_INDEX_URL": "http://127.0.0.1:3141/root/pypi/+simple/",
    }
    assert allowed_hosts(environ) == {
        ("a.example", 443), ("b.example", 80), ("c.example", 8443), ("pkgs.example", 443),
        ("fd00::5", 3141), ("127.0.0.1", 3141)}


def test_an_index_on_disk_needs_no_host() -> None:
    environ = {"UV_EXTRA_INDEX_URL": "/srv/wheels file:///srv/wheels",
               "UV_INDEX": "local=/srv/wheels"}
    assert allowed_hosts(environ) == DEFAULT_INDEX


def test_extra_hosts_take_443_by_default() -> None:
    found = allowed_hosts({"UV_INDEX_URL": "https://devpi/"},
                          ["mirror", "Mirror.Example:8080", "[::1]:3141"])
    assert found == {("devpi", 443), ("mirror", 443), ("mirror.example", 8080), ("::1", 3141)}


@pytest.mark.parametrize("entry", ["", "devpi:http", "devpi:99999", "bad host", "a:1:2"])
def test_a_malformed_extra_host_is_an_error(entry: str) -> None:
    with pytest.raises(ValueError, match="is not host"):
        allowed_hosts({}, [entry])


@pytest.mark.parametrize(("environ", "found"), [
    ({"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
    ({"https_proxy": "http://proxy:3128"}, "http://proxy:3128"),
    ({"HTTPS_PROXY": "socks5://proxy:1080", "ALL_PROXY": "http://all:3128"}, "http://all:3128"),
    ({"all_proxy": "http://all:3128"}, "http://all:3128"),
    ({"HTTPS_PROXY": "socks5://proxy:1080"}, None),
    ({"HTTP_PROXY": "http://plain:3128"}, None),
    ({}, None),
])
def test_upstream_proxy(environ: dict[str, str], found: str | None) -> None:
    assert upstream_proxy(environ) == found


def test_an_upstream_that_is_not_http_is_an_error(sock: Path) -> None:
    with pytest.raises(ValueError, match="not http://"):
        IndexProxy(sock, DEFAULT_INDEX, upstream="socks5://proxy:1080")
