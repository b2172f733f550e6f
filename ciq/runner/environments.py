"""Run environments: the per-host cache of built ones, and each run's own on top of one.

The project itself is not in the cached environment (an editable install would point at
a worktree deleted after its run; a plain one would freeze old code): each run makes a
thin virtual environment of its own on top of the cached one and installs the project
there, editable and without dependencies. What goes into an environment, and its key,
is :mod:`.recipe`'s; every command of a build runs in the run's box (:mod:`.box`, :mod:`.process`).

The cache, under one folder per worker host (shared by its workers)::

    <key>/              the environment, built in place: a venv cannot be moved, its
                        scripts name their interpreter by absolute path
    <key>/.ciq-ready    written last; an environment without it is half-built, never used
    <key>.lock          flock: exclusive to build or delete, shared while a run uses it

Least recently used entries beyond the cache size go first; an entry in use is never
deleted. No Redis, no Celery.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from uv import find_uv_bin  # the uv wheel's own binary

from ..errors import BuildError, CiqError
from ..store.keys import repo_id
from .box import Box, Rooms
from .index_proxy import IndexProxy, allowed_hosts, upstream_proxy
from .outcome import LIMIT_HIT
from .process import run_sandboxed
from .recipe import Recipe, Step, build_steps, install_step
from .runs import RunSpec, chown_tree, remove_tree

READY = ".ciq-ready"


def site_packages(env_dir: Path) -> Path:
    found = sorted(env_dir.glob("lib/python*/site-packages"))
    if not found:
        raise CiqError(f"{env_dir} has no site-packages")
    return found[0]


def installed_from(env_dir: Path, checkout: Path) -> list[str]:
    """Names of the distributions in ``env_dir`` installed from ``checkout`` (by their
    PEP 610 direct_url.json): the project itself, which the cache must not keep."""
    names = []
    for meta in site_packages(env_dir).glob("*.dist-info"):
        try:
            url = json.loads((meta / "direct_url.json").read_text()).get("url", "")
        except (OSError, ValueError):
            continue
        parsed = urlparse(url)
        if parsed.scheme == "file" and Path(unquote(parsed.path)) == checkout:
            names.append(meta.name.split("-")[0])
    return names


def make_overlay(base: Path, overlay: Path) -> None:
    """A run's own virtual environment on top of the cached one ``base``.

    Made by hand rather than by `uv venv` / `python -m venv`: a virtual environment is
    only pyvenv.cfg, the interpreter's links and an empty site-packages (PEP 405), and
    every run pays for this, so it costs a millisecond instead of a process. The layout
    is copied from ``base``, which uv made for that interpreter.
    """
    (overlay / "bin").mkdir(parents=True)
    (overlay / "pyvenv.cfg").write_bytes((base / "pyvenv.cfg").read_bytes())
    for link in (base / "bin").iterdir():
        if link.is_symlink() and link.name.startswith(("python", "pypy")):
            (overlay / "bin" / link.name).symlink_to(os.readlink(link))
    own = overlay / site_packages(base).relative_to(base)
    own.mkdir(parents=True)
    # The .pth is named to sort last, so that the project installed in the overlay comes
    # before anything of the same name in the cached environment.
    line = f"import site; site.addsitedir({str(site_packages(base))!r})\n"
    (own / "~ciq-base.pth").write_text(line)


@dataclass
class Entry:
    """A cache entry held by one run: shared lock once ready, exclusive while built."""

    path: Path
    lock_fd: int
    ready: bool
    hit: bool

    def mark_ready(self, info: dict[str, Any]) -> None:
        (self.path / READY).write_text(json.dumps(info))
        fcntl.flock(self.lock_fd, fcntl.LOCK_SH)  # let the other runs of this key in
        self.ready = True

    def release(self) -> None:
        try:
            if not self.ready:  # a failed or interrupted build: never leave it half-built
                remove_tree(self.path)
        finally:
            os.close(self.lock_fd)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class EnvCache:
    """The environments of one worker host, bounded to ``size`` entries (LRU)."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size

    def acquire(self, key: str, deadline: float) -> Entry:
        """Hold the entry of ``key``: ready (a cache hit), or locked for this run to
        build it. Waits for another run building the same key, up to ``deadline``
        (time.monotonic); never for the runs merely using it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / key
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                # No upgrade of a shared lock to an exclusive one: two runs doing that
                # at once would wait for each other.
                if _try_lock(fd, fcntl.LOCK_SH):
                    if (path / READY).is_file():
                        os.utime(path / READY)  # most recently used
                        return Entry(path, fd, ready=True, hit=True)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                if _try_lock(fd, fcntl.LOCK_EX):
                    if not (path / READY).is_file():
                        remove_tree(path)  # what a builder that died half-way left
                        return Entry(path, fd, ready=False, hit=False)
                    fcntl.flock(fd, fcntl.LOCK_UN)  # built meanwhile: take it shared
                    continue
                if time.monotonic() > deadline:
                    raise BuildError("waited until the time limit for another run "
                                     "building the same environment", timed_out=True)
                time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise

    def evict(self, keep: str) -> list[str]:
        """Delete the least recently used entries beyond the size, skipping those in use."""
        entries = []
        for ready in self.root.glob(f"*/{READY}"):
            try:
                entries.append((ready.stat().st_mtime, ready.parent.name))
            except OSError:
                continue
        entries.sort(reverse=True)
        evicted = []
        for _, key in entries[self.size:]:
            if key == keep:
                continue
            fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd, fcntl.LOCK_EX):
                os.close(fd)
                continue  # in use: it goes on a later build
            try:
                (self.root / key / READY).unlink(missing_ok=True)  # never half-deleted
                remove_tree(self.root / key)
                evicted.append(key)
            finally:
                os.close(fd)
        return evicted


#: The relay that runs in a build's box (its file, never imported by the worker).
RELAY = str(Path(__file__).with_name("relay.py"))
#: Port of the package index relay inside a build's box (its own loopback: any port).
INDEX_PORT = 3128
#: Variables of the worker's that say which package index to use: build boxes get them.
INDEX_ENV = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL",
             "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INSECURE_HOST", "SSL_CERT_FILE")


class Builder:
    """Runs the commands of environment builds in the run's box, as the tests would be:
    the environment being built and the uv cache of the repository writable, and the
    package index (nothing else) reachable through :mod:`.index_proxy`."""

    def __init__(self, spec: RunSpec, run_dir: Path, env: dict[str, str], rooms: Rooms,
                 deadline: float) -> None:
        self.spec, self.run_dir, self.rooms, self.deadline = spec, run_dir, rooms, deadline
        self.checkout = rooms.worktree
        self.uv = find_uv_bin()
        user = rooms.user
        # One cache per repository (and user): a build cannot poison another
        # repository's downloads.
        cache = spec.data_dir / "cache" / "uv" / (
            f"{repo_id(spec.repo)}-{user[0]}" if user else repo_id(spec.repo))
        cache.mkdir(parents=True, exist_ok=True)
        if user:
            os.chown(cache, *user)
        self.cache = cache
        # Bytecode is compiled at build time: a cached environment is then complete, and
        # runs that may not write to it (CIQ_RUN_AS) do not pay for compiling every time.
        self.env = {**env, **{k: os.environ[k] for k in INDEX_ENV if os.environ.get(k)},
                    "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never",
                    "UV_NO_PROGRESS": "1", "UV_COMPILE_BYTECODE": "1"}

    def run(self, steps: list[Step], venv: Path, index: bool = True,
            read: tuple[Path, ...] = ()) -> None:
        """Run ``steps`` in ``venv`` (writable); ``read``: more it may read."""
        env = {**self.env, "VIRTUAL_ENV": str(venv),
               "PATH": os.pathsep.join([str(venv / "bin"), self.env.get("PATH", "")])}
        box = self.rooms.box(env).allow_read(self.uv, *read).allow_write(venv, self.cache)
        for step in steps:
            left = self.deadline - time.monotonic()
            with self._index(box, index) as argv:
                done = run_sandboxed(argv(list(step.argv)), box, max(left, 1),
                                     self.spec.output_limit, self.run_dir,
                                     self.spec.min_free_bytes)
            if done.timed_out:
                raise BuildError(f"{step.label} hit the time limit", done.output, True)
            if done.disk_full:
                raise BuildError(f"{step.label} was stopped: the disk was nearly full",
                                 done.output)
            if done.limit:
                raise BuildError(f"{step.label} was stopped: {LIMIT_HIT[done.limit]}",
                                 done.output)
            if done.exit_code != 0:
                raise BuildError(f"{step.label} failed with exit status {done.exit_code}",
                                 done.output)

    @contextmanager
    def _index(self, box: Box, index: bool) -> Iterator[Callable[[list[str]], list[str]]]:
        """The package index for one step: a proxy of the worker's on a socket in the
        box, and a relay in the box that its HTTPS_PROXY points at."""
        if not index:
            yield lambda cmd: cmd
            return
        # A short folder of its own: a socket's path has at most 107 bytes, and a run's
        # folder may be deeper than that.
        net = Path(tempfile.mkdtemp(prefix="ciq-index-"))
        if self.rooms.user:
            os.chown(net, *self.rooms.user)
        sock = net / "index.sock"
        allowed = allowed_hosts(os.environ, self.spec.index_hosts)
        proxy_url = f"http://127.0.0.1:{INDEX_PORT}"
        box.allow_write(net).allow_read(RELAY)
        box.env.update(HTTPS_PROXY=proxy_url, HTTP_PROXY=proxy_url, https_proxy=proxy_url,
                       http_proxy=proxy_url)
        python = os.path.realpath(sys.executable)
        try:
            with IndexProxy(sock, allowed, upstream_proxy(os.environ)):
                yield lambda cmd: [python, "-I", "-S", RELAY, str(sock),
                                   str(INDEX_PORT), "--", *cmd]
        finally:
            remove_tree(net)

    def build(self, entry: Entry, recipe: Recipe) -> float:
        """Build a cache entry (held exclusively) and mark it ready; returns seconds."""
        started = time.monotonic()
        entry.path.mkdir(exist_ok=True)
        if self.rooms.user:  # untrusted setup code runs as the tests' user...
            os.chown(entry.path, *self.rooms.user)
        self.run(build_steps(recipe, entry.path, self.checkout, self.uv), entry.path)
        project = installed_from(entry.path, self.checkout)
        if project:
            self.run([Step("remove the project from the cached environment",
                           (self.uv, "pip", "uninstall", "--quiet", "--python",
                            str(entry.path / "bin" / "python"), *project))], entry.path,
                     index=False)
        if self.rooms.user:  # ...and the result is root's, so that no test can change it
            chown_tree(entry.path, (0, 0))
        seconds = round(time.monotonic() - started, 3)
        entry.mark_ready({"key": recipe.key, "python": recipe.python.version,
                          "files": recipe.digests, "built_from": self.spec.sha,
                          "seconds": seconds})
        return seconds

    def overlay(self, base: Path, installable: bool) -> Path:
        """The run's own environment on top of the cached one, with the project in it."""
        overlay = self.rooms.out / "venv"
        make_overlay(base, overlay)
        if self.rooms.user:
            chown_tree(overlay, self.rooms.user)
        if installable:
            self.run([install_step(overlay, self.checkout, self.uv)], overlay, index=False,
                     read=(base,))
        return overlay
