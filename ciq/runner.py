"""Testing one commit: worktree from the mirror, the test command in a sandbox, a report.

Plain functions over the file system and git; no Redis, no Celery. The caller (the task)
holds the lease and stores the report.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pwd
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from . import sandbox
from .environments import (
    BuildError,
    Entry,
    EnvCache,
    Python,
    Recipe,
    Step,
    build_steps,
    install_step,
    installed_from,
    make_overlay,
    recipe_for,
)
from .errors import CiqError, ConfigError
from .gitrepo import SAFE_GIT_ENV, Mirror, remove_tree
from .junit import JUnitError, parse_junit
from .keys import repo_id
from .repoconfig import RepoConfig, from_checkout
from .report import Report, Summary, utcnow

logger = logging.getLogger(__name__)

#: Seconds the sandbox gets to kill the test tree after a stop request.
STOP_GRACE = 5.0
#: Seconds between two looks at the free space of the worktree's disk.
DISK_POLL = 0.25
#: Seconds to wait for the output pipe to close once the sandbox is gone.
DRAIN_GRACE = 5.0
#: Environment variables the code under test never sees (broker and backend credentials).
HIDDEN_ENV_PREFIXES = ("CIQ_", "CELERY_")


@dataclass(frozen=True)
class RunPlan:
    """What one run does; everything but the commit comes from settings."""

    repo: str
    sha: str
    branch: str | None
    run_id: str
    worker: str
    attempts: int
    data_dir: Path
    time_limit: float
    output_limit: int
    min_free_bytes: int = 0
    #: User the tests run as (see Settings.run_as); None: the worker's user.
    run_as: str | None = None
    #: The operator's settings of this repository (the commit's own ones win).
    operator: RepoConfig | None = None
    #: Cache of virtual environments on this host (see ciq.environments); None: DATA/envs.
    env_root: Path | None = None
    env_cache_size: int = 10
    #: The test ids to run (one chunk of a sharded commit); None: the whole suite.
    only: tuple[str, ...] | None = None


class Sharding(Protocol):
    """How a run may split its suite (see ciq.sharding): asked once the environment is
    ready, only for the default pytest command."""

    def wanted(self, config: RepoConfig | None) -> bool:
        """Whether to collect the tests and consider sharding (collecting costs a
        pytest start, so this is decided first, from what is known)."""

    def split(self, ids: list[str], head: Report) -> list[str] | None:
        """Plan chunks of ``ids``; the ids this run goes on to run (its own chunk), or
        None to run them all here."""


class OutputTail:
    """Keeps the first and last ``limit / 2`` bytes of a stream of any size."""

    def __init__(self, limit: int) -> None:
        self.half = limit // 2
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail.append(chunk)
            self.tail_len += len(chunk)
            while self.tail_len - len(self.tail[0]) >= self.half:
                self.tail_len -= len(self.tail.popleft())

    def text(self) -> str:
        tail = b"".join(self.tail)[-self.half :] if self.tail else b""
        omitted = self.total - len(self.head) - len(tail)
        middle = f"\n[... {omitted} bytes of output omitted ...]\n".encode() if omitted else b""
        return (bytes(self.head) + middle + tail).decode("utf-8", errors="replace")


def run_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment of the code under test: the worker's, less ciq's and Celery's."""
    env = {k: v for k, v in environ.items() if not k.startswith(HIDDEN_ENV_PREFIXES)}
    env.update(SAFE_GIT_ENV)  # git run by the tests in their checkout runs no hooks either
    env["PYTHONUNBUFFERED"] = "1"
    env["CI"] = "true"
    return env


def default_tests(checkout: Path) -> list[str]:
    """Where a person would point pytest: ``tests/`` or ``test/`` when there is one, else
    nowhere in particular (the whole checkout: tests inside the package, or the
    project's own ``testpaths``)."""
    return [d for d in ("tests", "test") if (checkout / d).is_dir()][:1]


def default_command(junit_path: Path, checkout: Path, python: str,
                    targets: list[str] | None = None) -> list[str]:
    """pytest on ``targets`` (test ids; default: :func:`default_tests`), writing JUnit."""
    return [
        python, "-m", "pytest", *(default_tests(checkout) if targets is None else targets),
        f"--junitxml={junit_path}", "-o", "junit_family=xunit1", "-p", "no:cacheprovider",
    ]  # fmt: skip


@dataclass
class Completed:
    exit_code: int
    timed_out: bool
    output: str
    seconds: float
    disk_full: bool = False


def run_sandboxed(
    cmd: list[str], cwd: Path, env: dict[str, str], time_limit: float, output_limit: int,
    pgid_file: Path, min_free_bytes: int = 0, user: tuple[int, int] | None = None,
) -> Completed:
    """Run ``cmd`` under the sandbox supervisor, killing its whole tree at the time limit
    or when the free space of the disk under ``cwd`` falls below ``min_free_bytes``."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", sandbox.__file__,
         *(["--user", f"{user[0]}:{user[1]}"] if user else []), str(pgid_file), "--", *cmd],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        close_fds=True,
        # Its own session: a signal to the worker's process group (kill -9 of a whole
        # worker, Ctrl-C) must leave the supervisor alive to kill the test tree.
        start_new_session=True,
    )
    out = OutputTail(output_limit)
    stream = cast(io.BufferedReader, proc.stdout)

    def drain() -> None:
        while chunk := stream.read1(65536):
            out.feed(chunk)

    reader = threading.Thread(target=drain, name="ciq-output", daemon=True)
    reader.start()
    timed_out = threading.Event()
    exited = threading.Event()

    def time_is_up() -> None:
        # A timer rather than Popen.wait(timeout): that one polls with sleeps of up to
        # 50 ms, which every run would pay after its tests finish.
        timed_out.set()
        proc.send_signal(sandbox.STOP)
        if not exited.wait(STOP_GRACE):
            proc.kill()

    disk_full = threading.Event()

    def watch_disk() -> None:
        while not exited.wait(DISK_POLL):
            st = os.statvfs(cwd)
            if st.f_bavail * st.f_frsize < min_free_bytes:
                disk_full.set()
                proc.send_signal(sandbox.STOP)
                return

    timer = threading.Timer(time_limit, time_is_up)
    timer.daemon = True
    timer.start()
    if min_free_bytes:
        threading.Thread(target=watch_disk, name="ciq-disk", daemon=True).start()
    try:
        proc.wait()
    finally:
        exited.set()
        timer.cancel()
        if proc.returncode is None:  # interrupted (e.g. Celery's soft time limit)
            proc.send_signal(sandbox.STOP)
            proc.wait()
    if proc.returncode == -signal.SIGKILL:
        # The supervisor itself was killed (by the tests?): kill its group ourselves.
        kill_recorded_group(pgid_file)
    reader.join(DRAIN_GRACE)
    stream.close()
    return Completed(proc.returncode, timed_out.is_set(), out.text(),
                     time.monotonic() - started, disk_full.is_set())


def kill_recorded_group(pgid_file: Path) -> None:
    try:
        pgid = int(pgid_file.read_text())
    except (OSError, ValueError):
        return
    if pgid > 1:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()[19].decode()


def _runs_dir(data_dir: Path) -> Path:
    return data_dir / "runs"


def _hand_over(run_dir: Path, user: tuple[int, int], data_dir: Path) -> None:
    """Give a run's checkout and output folder to the user the tests run as, and keep
    the rest of the data folder out of its reach: it may pass through ``data_dir`` and
    ``runs/`` (0711) but list neither, read the mirrors (0755, root's) but not change
    them, and not enter the outbox (0700)."""
    for folder, mode in ((data_dir, 0o711), (_runs_dir(data_dir), 0o711),
                         (data_dir / "mirrors", 0o755), (data_dir / "outbox", 0o700)):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(mode)
    run_dir.chmod(0o755)  # root's: run.json and pgid stay the worker's own
    for top in (run_dir / "src", run_dir / "out"):
        os.lchown(top, *user)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), *user)


def mirror_for(data_dir: Path, repo: str) -> Mirror:
    return Mirror(data_dir / "mirrors", repo, repo_id(repo))


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    repo: str
    sha: str


def sweep_stale_runs(data_dir: Path, host: str) -> list[DeadRun]:
    """Clean the runs of this host whose worker process is gone: kill the test tree that
    may still run and delete the worktree. Returns the runs cleaned, so that the caller
    can free their leases at once rather than wait for them to expire."""
    cleaned: list[DeadRun] = []
    runs = _runs_dir(data_dir)
    if not runs.is_dir():
        return cleaned
    for record_path in runs.glob("*/run.json"):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("host") != host:
            continue
        if _proc_start(record["pid"]) == record.get("pid_start"):
            continue  # its worker process is alive
        kill_recorded_group(record_path.parent / "pgid")
        remove_tree(record_path.parent)
        try:
            mirror_for(data_dir, record["repo"]).prune_worktrees()
        except CiqError:
            pass
        logger.warning("runner: cleaned up run %s of a dead worker process", record["run_id"])
        cleaned.append(DeadRun(record["run_id"], record["repo"], record["sha"]))
    return cleaned


def _status(done: Completed, tests_found: bool, junit_error: str | None, summary: Summary,
            pytest_codes: bool = True) -> tuple[str, str]:
    """A run's status and one-line message. Exit statuses 2, 4 and 5 mean something only
    for pytest itself (``pytest_codes``); any other command fails or passes."""
    if done.timed_out:
        return "timeout", "the test run was killed at the time limit"
    if done.disk_full:
        return "error", ("the test run was stopped: the disk of its checkout was nearly full "
                         "(does a test fill the disk? see CIQ_MIN_FREE_MB)")
    code = done.exit_code
    if code == 0:
        return "passed", ""
    if code == 1 and (summary.failed or summary.errors):
        return "failed", f"{summary.failed + summary.errors} of {summary.total} tests failed"
    if code == 1:
        return "failed", "the test command exited with status 1"
    if code in (126, 127):
        return "error", f"the test command could not be run (exit status {code})"
    if not pytest_codes and 0 < code < 128:
        return "failed", f"the test command exited with status {code}"
    if code == 2:
        return "error", "test collection failed or the run was interrupted (pytest exit 2)"
    if code == 4:
        return "error", "pytest could not start: bad usage or missing test path (exit 4)"
    if code == 5:
        return "error", ("no tests were collected (pytest exit 5); set `test` in ciq.toml "
                         "or [tool.ciq] to say how this project is tested")
    if code < 0 or code > 128:
        sig = -code if code < 0 else code - 128
        return "error", f"the test command was killed by signal {sig}"
    return "error", f"the test command exited with status {code}" + (
        f"; {junit_error}" if junit_error and not tests_found else ""
    )


def run_commit(plan: RunPlan, sharding: Sharding | None = None) -> Report:
    """Check the commit out into a fresh worktree, run its tests, and report.

    With ``sharding``, a suite run with the default command may be split: the report is
    then that of this run's own chunk (the caller stores it as a chunk result).

    The caller calls :func:`clean_up` afterwards (this function does only on errors).
    """
    started_at, t0 = utcnow(), time.monotonic()
    base = dict(
        repo=plan.repo, commit=plan.sha, branch=plan.branch, started_at=started_at,
        worker=plan.worker, attempts=plan.attempts, run_id=plan.run_id,
    )  # fmt: skip

    def finish(status: str, message: str = "", **more: object) -> Report:
        return Report(
            status=status, message=message, finished_at=utcnow(),
            duration=round(time.monotonic() - t0, 3), **base, **more,  # type: ignore[arg-type]
        )  # fmt: skip

    run_dir = _runs_dir(plan.data_dir) / plan.run_id
    mirror = mirror_for(plan.data_dir, plan.repo)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": plan.run_id, "repo": plan.repo, "sha": plan.sha, "host": os.uname().nodename,
        "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
    }  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(record))
    worktree = run_dir / "src"
    timings: dict[str, float] = {}
    try:
        try:
            mirror.ensure_commit(plan.sha)
            mirror.add_worktree(worktree, plan.sha)
        except CiqError as exc:
            return finish("error", f"could not check out {plan.sha[:12]}: {exc}")
        timings["checkout"] = round(time.monotonic() - t0, 3)
        try:
            own = from_checkout(worktree)
        except ConfigError as exc:
            return finish("error", f"bad ciq settings in this commit: {exc}")
        config = own.over(plan.operator) if own else plan.operator
        out = run_dir / "out"
        (out / "home").mkdir(parents=True)
        junit_path = out / "junit.xml"
        env = run_environment(dict(os.environ))
        if config:
            env.update(config.env)
        time_limit = plan.time_limit
        if config and config.timeout:
            time_limit = min(config.timeout, plan.time_limit)
        user = None
        if plan.run_as:
            if os.geteuid() != 0:
                return finish("error", "CIQ_RUN_AS needs a worker running as root")
            pw = pwd.getpwnam(plan.run_as)
            user = (pw.pw_uid, pw.pw_gid)
            _hand_over(run_dir, user, plan.data_dir)
            env.update(HOME=str(out / "home"), USER=plan.run_as, LOGNAME=plan.run_as)
        test = config.test if config else None
        setup0 = time.monotonic()
        builder = _Builder(plan, run_dir, worktree, env, user, deadline=t0 + time_limit)
        try:
            python = Python.find(config.python, builder.uv, config.source) if (
                config and config.python) else Python.own()
            recipe = recipe_for(worktree, config, python)
        except ConfigError as exc:
            return finish("error", f"bad ciq settings: {exc}")
        cache = EnvCache(plan.env_root or plan.data_dir / "envs", plan.env_cache_size)
        try:
            entry = cache.acquire(recipe.key, t0 + time_limit)
        except BuildError as exc:
            return finish("timeout", str(exc))
        try:
            environment: dict[str, object] = {
                "key": recipe.key, "cache_hit": entry.hit, "python": python.version}
            try:
                if not entry.ready:
                    environment["build_seconds"] = builder.build(entry, recipe)
                    cache.evict(keep=recipe.key)
                install = recipe.installable and not (config and config.install is False)
                overlay = builder.overlay(entry.path, install)
            except BuildError as exc:
                return finish("timeout" if exc.timed_out else "error", _with_tail(exc),
                              output=exc.output, environment=environment)
            timings["setup"] = round(time.monotonic() - setup0, 3)
            env["VIRTUAL_ENV"] = str(overlay)
            env["PATH"] = os.pathsep.join(
                [str(overlay / "bin"), str(entry.path / "bin"), env.get("PATH", "")])
            only = plan.only
            if only is None and sharding is not None and not test and sharding.wanted(config):
                collect0 = time.monotonic()
                ids = _collect(plan, worktree, run_dir, env, user, overlay, t0 + time_limit)
                timings["collect"] = round(time.monotonic() - collect0, 3)
                if ids and len(ids) >= 2:
                    shown = shlex.join(["python", "-m", "pytest", *default_tests(worktree)])
                    head = finish("passed", command=shown, environment=environment,
                                  timings=dict(timings))
                    mine = sharding.split(ids, head)
                    only = tuple(mine) if mine is not None else None
            return _run_tests(plan, finish, worktree, run_dir, env, user, test, junit_path,
                              overlay, t0 + time_limit, timings, environment, only)
        finally:
            entry.release()
    except BaseException:
        clean_up(plan)
        raise


def _with_tail(exc: BuildError, lines: int = 12, chars: int = 1500) -> str:
    """The failing step and the end of its output, for a message read at a glance."""
    tail = "\n".join(exc.output.rstrip().splitlines()[-lines:])[-chars:]
    return f"{exc}\n{tail}" if tail else str(exc)


class _Builder:
    """Runs the commands of environment builds in the sandbox, as the tests would be."""

    def __init__(self, plan: RunPlan, run_dir: Path, checkout: Path, env: dict[str, str],
                 user: tuple[int, int] | None, deadline: float) -> None:
        from uv import find_uv_bin  # the uv wheel's own binary

        self.plan, self.run_dir, self.checkout, self.user = plan, run_dir, checkout, user
        self.deadline = deadline
        self.uv = find_uv_bin()
        cache = plan.data_dir / "cache" / (f"uv-{user[0]}" if user else "uv")
        cache.mkdir(parents=True, exist_ok=True)
        if user:
            os.chown(cache, *user)
        # Bytecode is compiled at build time: a cached environment is then complete, and
        # runs that may not write to it (CIQ_RUN_AS) do not pay for compiling every time.
        self.env = {**env, "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never",
                    "UV_NO_PROGRESS": "1", "UV_COMPILE_BYTECODE": "1"}

    def run(self, steps: list[Step], venv: Path) -> None:
        env = {**self.env, "VIRTUAL_ENV": str(venv),
               "PATH": os.pathsep.join([str(venv / "bin"), self.env.get("PATH", "")])}
        for step in steps:
            left = self.deadline - time.monotonic()
            done = run_sandboxed(
                list(step.argv), self.checkout, env, max(left, 1), self.plan.output_limit,
                self.run_dir / "pgid", self.plan.min_free_bytes, self.user,
            )  # fmt: skip
            if done.timed_out:
                raise BuildError(f"{step.label} hit the time limit", done.output, True)
            if done.disk_full:
                raise BuildError(f"{step.label} was stopped: the disk was nearly full",
                                 done.output)
            if done.exit_code != 0:
                raise BuildError(f"{step.label} failed with exit status {done.exit_code}",
                                 done.output)

    def build(self, entry: Entry, recipe: Recipe) -> float:
        """Build a cache entry (held exclusively) and mark it ready; returns seconds."""
        started = time.monotonic()
        if self.user:  # untrusted setup code runs as the tests' user...
            entry.path.mkdir()
            os.chown(entry.path, *self.user)
        self.run(build_steps(recipe, entry.path, self.checkout, self.uv), entry.path)
        project = installed_from(entry.path, self.checkout)
        if project:
            self.run([Step("remove the project from the cached environment",
                           (self.uv, "pip", "uninstall", "--quiet", "--python",
                            str(entry.path / "bin" / "python"), *project))], entry.path)
        if self.user:  # ...and the result is root's, so that no test can change it
            for root, dirs, files in os.walk(entry.path):
                os.lchown(root, 0, 0)
                for name in files + dirs:
                    os.lchown(os.path.join(root, name), 0, 0)
        seconds = round(time.monotonic() - started, 3)
        entry.mark_ready({"key": recipe.key, "python": recipe.python.version,
                          "files": recipe.digests, "built_from": self.plan.sha,
                          "seconds": seconds})
        return seconds

    def overlay(self, base: Path, installable: bool) -> Path:
        """The run's own environment on top of the cached one, with the project in it."""
        overlay = self.run_dir / "out" / "venv"
        make_overlay(base, overlay)
        if self.user:
            for root, dirs, files in os.walk(overlay):
                os.lchown(root, *self.user)
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), *self.user)
        if installable:
            self.run([install_step(overlay, self.checkout, self.uv)], overlay)
        return overlay


def _run_tests(
    plan: RunPlan, finish: Callable[..., Report], worktree: Path, run_dir: Path,
    env: dict[str, str], user: tuple[int, int] | None, test: str | None, junit_path: Path,
    overlay: Path, deadline: float, timings: dict[str, float],
    environment: dict[str, object], only: tuple[str, ...] | None = None,
) -> Report:
    """Run the test command in the run's environment and make the report of it; with
    ``only``, pytest runs just those test ids (a chunk of a sharded commit)."""
    if test:
        cmd = ["/bin/sh", "-c", test]
        shown = test
        # Any pytest the command starts writes JUnit where ciq reads it; other tools
        # may write JUnit XML to $JUNIT_XML.
        env["JUNIT_XML"] = str(junit_path)
        env["PYTEST_ADDOPTS"] = (f"--junitxml={junit_path} -o junit_family=xunit1 "
                                 + env.get("PYTEST_ADDOPTS", "")).strip()
    else:
        cmd = default_command(junit_path, worktree, str(overlay / "bin" / "python"),
                              list(only) if only is not None else None)
        shown = shlex.join(["python", "-m", "pytest", *default_tests(worktree)])
        if only is not None:
            shown = f"{shown} ({len(only)} tests of a sharded run)"
        _src_on_path(worktree, env)
    done = run_sandboxed(
        cmd, worktree, env, max(deadline - time.monotonic(), 1), plan.output_limit,
        run_dir / "pgid", plan.min_free_bytes, user,
    )  # fmt: skip
    timings["test"] = round(done.seconds, 3)
    junit_error = None
    tests: list = []
    try:
        tests = parse_junit(junit_path)
    except JUnitError as exc:
        junit_error = str(exc)
    summary = Summary.of(tests)
    status, message = _status(done, bool(tests), junit_error, summary,
                              pytest_codes=cmd[0] != "/bin/sh")
    return finish(
        status, message, summary=summary, tests=tuple(tests), output=done.output,
        command=shown, exit_code=done.exit_code, timings=timings, environment=environment,
    )  # fmt: skip


def _src_on_path(worktree: Path, env: dict[str, str]) -> None:
    if (worktree / "src").is_dir():  # a src/ layout imports from the checkout
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(worktree / "src"), env.get("PYTHONPATH")) if p)


def _collect(plan: RunPlan, worktree: Path, run_dir: Path, env: dict[str, str],
             user: tuple[int, int] | None, overlay: Path, deadline: float) -> list[str] | None:
    """The test ids pytest collects with the default command, or None when collection
    fails (the unsharded run that follows then reports why)."""
    env = dict(env)
    _src_on_path(worktree, env)
    cmd = [str(overlay / "bin" / "python"), "-m", "pytest", "--collect-only", "-q",
           "-p", "no:cacheprovider", *default_tests(worktree)]
    done = run_sandboxed(cmd, worktree, env, max(deadline - time.monotonic(), 1),
                         plan.output_limit, run_dir / "pgid", plan.min_free_bytes, user)
    if done.exit_code != 0 or done.timed_out:
        return None
    ids = []
    for line in done.output.splitlines():
        if not line.strip():
            break  # then the summary ("N tests collected") and any warnings
        if "::" in line and not line[0].isspace():
            ids.append(line.strip())
    return ids


def clean_up(plan: RunPlan) -> None:
    """Delete a run's folder and worktree; called once its report is stored, since a
    report delayed by clean-up is feedback delayed."""
    remove_tree(_runs_dir(plan.data_dir) / plan.run_id)
    try:
        mirror_for(plan.data_dir, plan.repo).prune_worktrees()
    except CiqError as exc:
        logger.warning("runner: could not prune worktrees of %s: %s", plan.repo, exc)
