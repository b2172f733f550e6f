"""Testing one commit, in two steps: :func:`prepare` checks it out into a fresh worktree,
reads its settings and makes its environment ready; :func:`run_tests` runs its test
command there and makes the report. Between the two the caller may :func:`collect` the
tests and decide to run only some of them (a chunk of a sharded run): the runner never
calls back to find out.

Plain functions over the file system and git; no Redis, no Celery. The caller holds the
lease, stores the report and cleans the run's folder up (:func:`.runs.clean_up`).
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from uv import find_uv_bin  # the uv wheel's own binary

from ..errors import BoxUnavailable, BuildError, CiqError, ConfigError, JUnitError
from ..junit import parse_junit
from ..ordering import likely
from ..repoconfig import RepoConfig, from_checkout
from ..report import Report, Summary, TestResult, utcnow
from . import runs
from .box import (
    SYSTEM_PATH,
    Box,
    Rooms,
    bwrap,
    etc_copy,
    git_admin_of,
    interpreter_home,
    own_interpreter,
)
from .environments import Builder, EnvCache
from .live import LIVE_FILE, tail
from .outcome import (
    SELECTION_PLUGIN,
    build_failure,
    chunk_targets,
    collected_count,
    collected_ids,
    default_command,
    default_tests,
    not_to_plan,
    verdict,
)
from .plugin import order_file, order_out, read_box_file, selection_folder, with_selection
from .process import run_environment, run_sandboxed
from .recipe import Probe, Python, recipe_for
from .runs import RunSpec

__all__ = ["Checkout", "RunSpec", "collect", "prepare", "run_tests"]

#: Seconds the probe of an interpreter a commit names may take.
PROBE_SECONDS = 60.0
#: Bytes of a collection's list of test ids read (about 200,000 ids).
MAX_COLLECTED_BYTES = 32 << 20
#: Bytes at the end of a collection's output read for pytest's count of the tests.
SUMMARY_BYTES = 64 << 10

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Start:
    """When a run started, and the report fields it shares with every report it makes."""

    spec: RunSpec
    started_at: str = field(default_factory=utcnow)
    t0: float = field(default_factory=time.monotonic)

    def report(self, status: str, message: str = "", **more: object) -> Report:
        s = self.spec
        return Report(
            repo=s.repo, commit=s.sha, branch=s.branch, started_at=self.started_at,
            worker=s.worker, attempts=s.attempts, run_id=s.run_id, status=status,
            message=message, finished_at=utcnow(),
            duration=round(time.monotonic() - self.t0, 3), **more,  # type: ignore[arg-type]
        )  # fmt: skip


@dataclass
class Checkout:
    """A commit checked out, its settings read and its environment ready."""

    start: _Start
    run_dir: Path
    worktree: Path
    #: The commit's own settings over the operator's.
    config: RepoConfig | None
    #: The environment of the tests (and of their collection).
    env: dict[str, str]
    #: What the run's boxes may see.
    rooms: Rooms
    #: The run's own virtual environment, on top of the cached one.
    overlay: Path
    #: The cached environment under it (read-only in the tests' box).
    base: Path
    #: time.monotonic() of the time limit.
    deadline: float
    timings: dict[str, float]
    environment: dict[str, object]
    #: The likely failures of the collection (:func:`collect`), in the order to run them:
    #: the first chunks of a sharded run.
    likely: list[str] = field(default_factory=list)

    @property
    def spec(self) -> RunSpec:
        return self.start.spec

    @property
    def custom_command(self) -> str | None:
        """The repository's own `test` command; None: ciq's default (pytest)."""
        return self.config.test if self.config else None

    @property
    def shown_command(self) -> str:
        """The default command as a report shows it."""
        return shlex.join(["python", "-m", "pytest", *default_tests(self.worktree)])

    def head(self) -> Report:
        """The report so far (checkout, setup, collection): the head of a sharded run's
        merged report."""
        return self.start.report("passed", command=self.shown_command,
                                 environment=dict(self.environment), timings=dict(self.timings))

    def box(self, env: dict[str, str]) -> Box:
        """The box of the tests and of their collection."""
        return self.rooms.tests(env, [self.base])

    def left(self) -> float:
        """Seconds left before the time limit (at least one, to report what happened)."""
        return max(self.deadline - time.monotonic(), 1)


@contextmanager
def prepare(spec: RunSpec) -> Iterator[Checkout | Report]:
    """Check the commit out and make its environment ready; yields the
    :class:`Checkout`, or the `error` / `timeout` report of why it could not be. The
    cached environment stays held (shared) until the block ends."""
    start = _Start(spec)
    try:
        bwrap()
    except BoxUnavailable as exc:  # before anything of the commit is on the disk
        yield start.report("error", str(exc))
        return
    run_dir = runs.start(spec.data_dir, spec.run_id, spec.repo, spec.sha)
    worktree = run_dir / "src"
    mirror = runs.mirror_for(spec.data_dir, spec.repo)
    try:
        mirror.ensure_commit(spec.sha)
        mirror.add_worktree(worktree, spec.sha)
    except CiqError as exc:
        yield start.report("error", f"could not check out {spec.sha[:12]}: {exc}")
        return
    timings = {"checkout": round(time.monotonic() - start.t0, 3)}
    try:
        own = from_checkout(worktree)
    except ConfigError as exc:
        yield start.report("error", f"bad ciq settings in this commit: {exc}")
        return
    config = own.over(spec.operator) if own else spec.operator
    out = run_dir / "out"
    home = out / "home"
    home.mkdir(parents=True)
    env = run_environment(dict(os.environ), home)
    if config:
        env.update(config.env)  # inside the box only: never the supervisor's
    time_limit = min(config.timeout, spec.time_limit) if config and config.timeout else (
        spec.time_limit)
    deadline = start.t0 + time_limit
    user = None
    if spec.run_as:
        if os.geteuid() != 0:
            yield start.report("error", "CIQ_RUN_AS needs a worker running as root")
            return
        pw = pwd.getpwnam(spec.run_as)
        user = (pw.pw_uid, pw.pw_gid)
        runs.hand_over(run_dir, user, spec.data_dir)
        env.update(USER=spec.run_as, LOGNAME=spec.run_as)
    git = git_admin_of(worktree, spec.data_dir / "mirrors")
    rooms = Rooms(worktree, out, git[0] if git else None, git[1] if git else None,
                  (own_interpreter(),), spec.limits, bool(config and config.network), user,
                  spec.shared, etc_copy(spec.data_dir / "box"), spec.cancelled)
    setup0 = time.monotonic()
    try:
        python = Python.own()
        if config and config.python:
            python = Python.find(config.python, find_uv_bin(), config.source,
                                 _prober(rooms, env, run_dir, spec))
            rooms = rooms.with_interpreter(interpreter_home(python.executable))
        recipe = recipe_for(worktree, config, python)
    except ConfigError as exc:
        yield start.report("error", f"bad ciq settings: {exc}")
        return
    builder = Builder(spec, run_dir, env, rooms, deadline)
    cache = EnvCache(spec.env_root or spec.data_dir / "envs", spec.env_cache_size)
    try:
        entry = cache.acquire(recipe.key, deadline)
    except BuildError as exc:
        yield start.report("timeout", str(exc))
        return
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
            yield start.report("timeout" if exc.timed_out else "error", build_failure(exc),
                               output=exc.output, environment=environment)
            return
        timings["setup"] = round(time.monotonic() - setup0, 3)
        env["VIRTUAL_ENV"] = str(overlay)
        env["PATH"] = os.pathsep.join(
            [str(overlay / "bin"), str(entry.path / "bin"), env.get("PATH", "")])
        yield Checkout(start, run_dir, worktree, config, env, rooms, overlay, entry.path,
                       deadline, timings, environment)
    finally:
        entry.release()


def collect(ready: Checkout) -> list[str] | None:
    """The test ids pytest collects with the default command; None when they are not to
    be planned from: the collection failed or had errors (the run of the whole suite
    that follows then reports why), or its list of ids does not hold what pytest itself
    counted (a plan of it could lose tests; the whole suite is always right)."""
    collect0 = time.monotonic()
    spec = ready.spec
    folder = selection_folder(ready.run_dir)
    env = with_selection(_src_on_path(ready.worktree, ready.env), folder)
    # Both go to files, not through the output pipe: that one keeps only the head and
    # tail of what it carries, and a plan made of a cut list would drop tests. The ids
    # come from the plugin (pytest's own node ids, any characters); pytest's count of
    # them ends its output.
    listing, log = ready.rooms.out / "collected.json", ready.rooms.out / "collect.txt"
    cmd = ["/bin/sh", "-c", 'out=$1; shift; exec "$@" >"$out"', "sh", str(log),
           str(ready.overlay / "bin" / "python"), "-m", "pytest", "--collect-only", "-q",
           "-p", "no:cacheprovider", "-p", SELECTION_PLUGIN, f"--ciq-collected={listing}",
           *default_tests(ready.worktree)]
    hints, found = _order_hints(ready, folder), ready.rooms.out / "order-out.json"
    if hints is not None:
        cmd += [f"--ciq-order={hints}", f"--ciq-order-out={found}"]
    done = run_sandboxed(cmd, ready.box(env).allow_read(folder), ready.left(),
                         spec.output_limit, ready.run_dir, spec.min_free_bytes)
    ready.timings["collect"] = round(time.monotonic() - collect0, 3)
    if done.exit_code != 0 or done.timed_out:
        return None
    summary = read_box_file(log, SUMMARY_BYTES, tail=True)
    ids = collected_ids(read_box_file(listing, MAX_COLLECTED_BYTES))
    why = not_to_plan(ids, collected_count(summary) if summary is not None else None)
    if why is not None or ids is None:
        logger.warning("run %s: not sharding %s, running it whole: %s", spec.run_id,
                       spec.sha[:12], why)
        return None
    got = order_out(found) if hints is not None else None
    if got is not None and (h := spec.order_hints):
        ready.likely = likely(ids, set(h.failed), got[0], got[1], set(h.flaky), h.durations)
    return ids


def _order_hints(ready: Checkout, folder: Path) -> Path | None:
    """The plugin's file of ordering hints (likely failures first, :mod:`ciq.ordering`),
    written into its ``folder``; None when the run has no hints or the repository says
    ``order = "none"``."""
    spec = ready.spec
    if spec.order_hints is None or (ready.config and ready.config.order == "none"):
        return None
    return order_file(folder, spec.order_hints, runs.mirror_for(spec.data_dir, spec.repo).path,
                      spec.sha, ready.worktree)


def run_tests(ready: Checkout, only: list[str] | None = None, live: bool = True,
              in_order: bool = False) -> Report:
    """Run the test command in the run's environment and make the report of it; with
    ``only``, pytest runs just those test ids (a chunk of a sharded commit, a rerun;
    ``in_order``: in that order): they go to the in-box plugin in a file, pytest's
    command line names only their files."""
    env = dict(ready.env)
    junit_path = ready.run_dir / "out" / "junit.xml"
    test = ready.custom_command
    read: list[Path] = []
    if test:
        cmd = ["/bin/sh", "-c", test]
        shown = test
        # Any pytest the command starts writes JUnit where ciq reads it; other tools
        # may write JUnit XML to $JUNIT_XML.
        env["JUNIT_XML"] = str(junit_path)
        env["PYTEST_ADDOPTS"] = (f"--junitxml={junit_path} -o junit_family=xunit1 "
                                 + env.get("PYTEST_ADDOPTS", "")).strip()
    else:
        python = str(ready.overlay / "bin" / "python")
        env = _src_on_path(ready.worktree, env)
        shown = ready.shown_command
        folder = selection_folder(ready.run_dir, only)
        env, read = with_selection(env, folder), [folder]
        stream = ready.rooms.out / LIVE_FILE if live and ready.spec.live else None
        # A chunk or a rerun runs in the order it was given; a whole run, likely
        # failures first.
        hints = _order_hints(ready, folder) if only is None else None
        cmd = default_command(junit_path, ready.worktree, python,
                              None if only is None else chunk_targets(ready.worktree, only),
                              None if only is None else folder / "chunk.json", stream,
                              in_order, hints)
        if only is not None:
            shown = f"{shown} ({len(only)} tests of a sharded run)"
    spec = ready.spec
    follow = spec.live if live and not test else None
    with tail(ready.rooms.out / LIVE_FILE, follow, ready.start.t0) as seen:
        done = run_sandboxed(cmd, ready.box(env).allow_read(*read), ready.left(),
                             spec.output_limit, ready.run_dir, spec.min_free_bytes)
    timings = {**ready.timings, "test": round(done.seconds, 3), **seen.timings}
    junit_error = None
    tests: list[TestResult] = []
    try:
        tests = parse_junit(junit_path)
    except JUnitError as exc:
        junit_error = str(exc)
    summary = Summary.of(tests)
    status, message = verdict(done, bool(tests), junit_error, summary,
                              pytest_codes=cmd[0] != "/bin/sh")
    return ready.start.report(
        status, message, summary=summary, tests=tuple(tests), output=done.output,
        command=shown, exit_code=done.exit_code, timings=timings,
        environment=ready.environment,
    )  # fmt: skip


def _prober(rooms: Rooms, env: dict[str, str], run_dir: Path, spec: RunSpec) -> Probe:
    """How to ask about an interpreter a commit names: in a box of its own with no
    network, a minute at most, the interpreter's installation read-only."""

    def probe(cmd: list[str], interpreter: Path | None) -> tuple[int, str]:
        box = rooms.box(env).allow_read(find_uv_bin())
        if interpreter is not None:
            home = interpreter_home(str(interpreter))
            if not _may_bind(home, spec.data_dir):
                return 1, ""
            box.allow_read(home)
        box.env["PATH"] = os.pathsep.join([str(own_interpreter() / "bin"), SYSTEM_PATH])
        done = run_sandboxed(cmd, box, PROBE_SECONDS, spec.output_limit, run_dir)
        return (1 if done.timed_out else done.exit_code), done.output

    return probe


def _may_bind(home: Path, data_dir: Path) -> bool:
    """Whether the installation of an interpreter a commit names may go into its box: a
    folder that looks like a Python installation (``lib/python*`` or ``lib/pypy*``),
    not ``/``, nothing of ciq's data and no configuration folder."""
    data = data_dir.resolve()
    if home == Path("/") or home == data or data in home.parents or home in data.parents:
        return False
    if home.parts[1:2] in (("etc",), ("proc",), ("sys",), ("dev",)):
        return False
    lib = home / "lib"
    return lib.is_dir() and any(p.name.startswith(("python", "pypy")) for p in lib.iterdir())


def _src_on_path(worktree: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``src/`` first on the path when the project has a src/ layout (it then
    imports from the checkout)."""
    if not (worktree / "src").is_dir():
        return env
    path = os.pathsep.join(p for p in (str(worktree / "src"), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path}
