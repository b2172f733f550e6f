"""The box's end of the build proxy: ``python -I -S relay.py SOCKET PORT -- COMMAND...``.

A box has a network namespace of its own, so the only way out is the Unix socket of
:mod:`.index_proxy`, bind-mounted into it. Package installers speak to an HTTP proxy on
TCP, not to a socket file: this relay listens on the box's own ``127.0.0.1:PORT``,
forwards every connection to SOCKET, and runs COMMAND (given
``HTTPS_PROXY=http://127.0.0.1:PORT``) as its child. It exits with the command's status
(128+N for a command killed by signal N) and passes SIGTERM and SIGINT on to it.

Nothing is filtered here: code in the box can reach the socket directly anyway, so the
allow-list lives outside, in the worker. Standard library only and nothing of ``ciq``,
run with ``-I -S`` from its file path, so that it starts in a few milliseconds.
"""

import signal
import socket
import subprocess
import sys
import threading

#: What a client hears when the worker's end of the proxy is gone.
GONE = b"ciq relay: the worker's package index proxy is not there\n"
UNREACHABLE = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(GONE), GONE))


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until EOF, then pass the EOF on: the other direction may
    still be carrying an answer."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):  # a reset on one side ends both directions
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _forward(client: socket.socket, path: str) -> None:
    with client:
        proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with proxy:
            try:
                proxy.connect(path)
            except OSError:
                try:
                    client.sendall(UNREACHABLE)
                except OSError:
                    pass
                return
            back = threading.Thread(target=_pump, args=(proxy, client), daemon=True)
            back.start()
            _pump(client, proxy)
            back.join()


def _serve(listener: socket.socket, path: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_forward, args=(client, path), daemon=True).start()


def _listen(port: int) -> socket.socket | None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # A relay of an earlier step may have left the port in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
    except OSError as exc:
        listener.close()
        sys.stderr.write(f"ciq relay: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                         "running the command without the package index proxy\n")
        return None
    return listener


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--" or not (argv[2].isdigit() and int(argv[2]) < 65536):
        sys.stderr.write("usage: relay.py SOCKET PORT -- COMMAND...\n")
        return 2
    path, port, cmd = argv[1], int(argv[2]), argv[4:]
    # Armed before the child exists, so that a stop request in between is not lost.
    child: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child:
            child[0].send_signal(signum)
        else:
            pending.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    listener = _listen(port)
    if listener is not None:  # listening before the command starts: no race to connect
        threading.Thread(target=_serve, args=(listener, path), daemon=True).start()
    try:
        child.append(subprocess.Popen(cmd))
    except OSError as exc:
        sys.stderr.write(f"ciq relay: cannot run {cmd[0]}: {exc.strerror}\n")
        return 127
    for signum in pending:
        child[0].send_signal(signum)
    code = child[0].wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
