"""The box every process that code from a commit can influence runs in: a bubblewrap
(``bwrap``, what Flatpak uses) sandbox of its own user, PID, IPC, UTS, cgroup, mount and
network namespaces, described here and started by the supervisor of :mod:`.sandbox`.

What the box sees: the system's ``/usr`` and a short list of ``/etc`` files read-only;
the interpreters it needs read-only; the run's worktree and output folder (its ``HOME``,
its JUnit file, its own virtual environment) read-write; the cached environment
read-only (read-write while the run builds it); its repository's mirror read-only (git
in the checkout works) and its worktree's bookkeeping read-write; a private, size-limited
``/tmp`` and ``/dev/shm``; its own ``/proc``. Nothing else of ``CIQ_DATA_DIR`` (no other
run, no other mirror, no outbox), no ``/etc/ciq``, no home of the worker. Its network is
its own loopback only, unless the operator allows a repository the host's network; build
steps reach the package index through :mod:`.index_proxy` and nothing else. Its
environment is exactly :attr:`Box.env`, never the worker's.

This module only describes; nothing here starts a process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BoxUnavailable

#: Where the box's tools come from: the system, read-only.
SYSTEM_DIRS = ("/usr",)
#: Top-level links of a merged-/usr system (Debian 12), made again inside the box.
SYSTEM_LINKS = ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")
#: The files of /etc that programs in the box need (users, names, certificates, the
#: dynamic linker, time zones); the rest of /etc (ciq's settings, keys) stays out.
ETC_FILES = (
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "localtime", "timezone",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
    "ca-certificates.conf", "alternatives", "mime.types", "gitconfig", "protocols",
    "services", "os-release", "debian_version", "pip.conf", "xdg",
)
#: PATH inside the box after the run's own environments.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Name of the box's host (its own UTS namespace): nothing of the worker's.
HOSTNAME = "ciq-box"


def bwrap() -> str:
    """The bubblewrap executable; the error says how to install it."""
    found = shutil.which("bwrap", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if found is None:
        raise BoxUnavailable("bubblewrap (bwrap) is not installed on this worker host: "
                             "`apt install bubblewrap` (scripts/setup.sh does it)")
    return found


@dataclass(frozen=True)
class Limits:
    """What one box may use; 0: no limit."""

    memory_bytes: int = 0
    processes: int = 0
    tmp_bytes: int = 512 << 20


@dataclass
class Box:
    """One box: what it may see and write, its environment and its limits."""

    #: Working directory inside the box (a path it can see).
    cwd: Path
    #: The whole environment of the boxed command.
    env: dict[str, str]
    limits: Limits = field(default_factory=Limits)
    #: Folders and files it may read (same path inside).
    read: list[Path] = field(default_factory=list)
    #: Folders it may write (same path inside).
    write: list[Path] = field(default_factory=list)
    #: Share the host's network (the operator's ``network = true``); else loopback only.
    network: bool = False
    #: (uid, gid) the box runs as (CIQ_RUN_AS); None: the worker's own user.
    user: tuple[int, int] | None = None
    #: A copy of the allow-listed /etc files (:func:`etc_copy`), bound whole; None: each
    #: file bound on its own (a bind costs bwrap about 0.2 ms).
    etc: Path | None = None
    #: Asked every tenth of a second while the box runs: True stops it at once (its run
    #: lost its lease: another run may hold the commit now).
    cancelled: Callable[[], bool] | None = None

    def allow_read(self, *paths: Path | str) -> Box:
        self.read.extend(Path(p) for p in paths)
        return self

    def allow_write(self, *paths: Path | str) -> Box:
        self.write.extend(Path(p) for p in paths)
        return self

    def argv(self, cmd: list[str]) -> list[str]:
        """The bwrap command line that runs ``cmd`` in this box."""
        args = [bwrap(), "--unshare-all", "--unshare-user",
                *(["--share-net"] if self.network else []), "--hostname", HOSTNAME,
                "--die-with-parent", "--new-session", "--disable-userns", "--cap-drop", "ALL",
                "--clearenv"]
        for top in SYSTEM_DIRS:
            args += ["--ro-bind", top, top]
        for link in SYSTEM_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        if self.etc is not None:
            args += ["--ro-bind", str(self.etc), "/etc"]
        else:
            for name in ETC_FILES:
                if os.path.lexists(f"/etc/{name}"):
                    args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        tmp = str(self.limits.tmp_bytes)
        args += ["--proc", "/proc", "--dev", "/dev", "--size", tmp, "--tmpfs", "/tmp",
                 "--size", tmp, "--tmpfs", "/dev/shm", "--dir", "/run", "--dir", "/var/tmp"]
        for path in _outermost(self.read, self.write):
            args += ["--ro-bind", str(path), str(path)]
        for path in _outermost(self.write):
            args += ["--bind", str(path), str(path)]
        # The box's own root (a tmpfs bwrap makes, holding the mount points) read-only
        # too: what the box writes outside its folders fails instead of vanishing.
        args += ["--remount-ro", "/"]
        for key, value in self.env.items():
            args += ["--setenv", key, value]
        return [*args, "--chdir", str(self.cwd), "--", *cmd]


def _outermost(paths: list[Path], minus: list[Path] | None = None) -> list[Path]:
    """``paths`` that exist, parents before children (bwrap mounts in order), less the
    ones in ``minus`` (bound read-write instead)."""
    skip = {p.resolve() for p in (minus or [])}
    seen: dict[Path, None] = {}
    for p in paths:
        if p.exists() and p.resolve() not in skip:
            seen.setdefault(p, None)
    return sorted(seen, key=lambda p: len(p.parts))


def interpreter_home(executable: str) -> Path:
    """The installation an interpreter runs from (``/usr``, ``/opt/python3.12``, the
    prefix of a pyenv version): the folder above the ``bin/`` of its real file."""
    return Path(os.path.realpath(executable)).parent.parent


def own_interpreter() -> Path:
    """The installation of the worker's own interpreter, which builds the environments
    of repositories that name none."""
    return interpreter_home(sys.executable)


def run_env(environ: dict[str, str], home: Path) -> dict[str, str]:
    """What every box's environment starts from: a PATH, a HOME of its own, the locale
    and time zone, and what tells tests they run in a CI. Nothing else of the worker's
    (its broker URL, its secrets) is ever copied."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(home), "TMPDIR": "/tmp", "CI": "true",
           "PYTHONUNBUFFERED": "1", "LANG": environ.get("LANG") or "C.UTF-8"}
    for key in ("LC_ALL", "TZ"):
        if environ.get(key):
            env[key] = environ[key]
    return env


@dataclass(frozen=True)
class Rooms:
    """What the boxes of one run may see, and how each kind of box is made of it."""

    worktree: Path
    #: The run's output folder: HOME, JUnit XML, its own virtual environment.
    out: Path
    #: Its repository's mirror (read) and the worktree's bookkeeping in it (write).
    mirror: Path | None
    git_admin: Path | None
    #: Installations of the interpreters the run uses.
    interpreters: tuple[Path, ...]
    limits: Limits
    #: The operator lets this repository's tests use the host's network.
    network: bool = False
    user: tuple[int, int] | None = None
    #: A host folder every box may write (CIQ_BOX_SHARED).
    shared: Path | None = None
    #: The boxes' /etc (:func:`etc_copy`); None: the allow-listed files one by one.
    etc: Path | None = None
    #: True once the run lost its lease (see :attr:`Box.cancelled`).
    cancelled: Callable[[], bool] | None = None

    def box(self, env: dict[str, str], cwd: Path | None = None) -> Box:
        """A box with the run's own folders and interpreters in it and no network."""
        box = Box(cwd or self.worktree, env, self.limits, user=self.user, etc=self.etc,
                  cancelled=self.cancelled)
        box.allow_read(*self.interpreters)
        if self.mirror and self.git_admin:
            box.allow_read(self.mirror).allow_write(self.git_admin)
        box.allow_write(self.worktree, self.out)
        if self.shared is not None:
            box.allow_write(self.shared)
        return box

    def tests(self, env: dict[str, str], environments: list[Path]) -> Box:
        """The box of the tests and their collection: the cached environment read-only,
        the network only if the operator allows it."""
        box = self.box(env).allow_read(*environments)
        box.network = self.network
        return box

    def with_interpreter(self, home: Path) -> Rooms:
        if home in self.interpreters:
            return self
        return Rooms(self.worktree, self.out, self.mirror, self.git_admin,
                     (*self.interpreters, home), self.limits, self.network, self.user,
                     self.shared, self.etc, self.cancelled)


def git_admin_of(worktree: Path, mirrors: Path) -> tuple[Path, Path] | None:
    """The mirror of a worktree and the worktree's folder in it, from the ``.git`` file
    git wrote at checkout (before any code of the commit ran); None when it points
    anywhere but into ``mirrors``."""
    try:
        line = (worktree / ".git").read_text().strip()
    except OSError:
        return None
    if not line.startswith("gitdir: "):
        return None
    admin = Path(line.removeprefix("gitdir: ")).resolve()
    mirror = admin.parent.parent
    if mirror.parent != mirrors.resolve() or admin.parent.name != "worktrees":
        return None
    return mirror, admin


def etc_copy(root: Path) -> Path:
    """A copy of the allow-listed /etc files (:data:`ETC_FILES`) under ``root``, made
    again when one of them changed (by modification time, a folder's and its
    subfolders'): the box binds one folder instead of twenty files. Copies of other
    versions stay (a few KiB each); concurrent workers make the same copy at most once
    each, the first rename wins."""
    parts = []
    for name in ETC_FILES:
        path = Path("/etc", name)
        if path.exists():
            parts.append(f"{name}:{path.stat().st_mtime_ns}")
            if path.is_dir():
                parts += [f"{d.name}:{d.stat().st_mtime_ns}" for d in path.iterdir()
                          if d.is_dir() and not d.is_symlink()]
    target = root / f"etc-{hashlib.sha256(';'.join(parts).encode()).hexdigest()[:16]}"
    if target.is_dir():
        return target
    tmp = root / f".etc-{os.getpid()}-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tmp.chmod(0o755)
    for name in ETC_FILES:
        path = Path("/etc", name)
        if path.is_dir() and not path.is_symlink():
            # /etc/ssl/private holds the host's TLS keys: never in a box.
            shutil.copytree(path, tmp / name, symlinks=True,
                            ignore=shutil.ignore_patterns("private"))
        elif path.exists():
            shutil.copy2(path, tmp / name, follow_symlinks=False)
    try:
        tmp.rename(target)
    except OSError:  # another worker's copy is there already
        shutil.rmtree(tmp, ignore_errors=True)
    return target
