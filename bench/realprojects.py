"""Real open-source projects as git histories, and their test suites run by hand.

ciq must report for a real project what that project's own instructions report. This
module is the reference half of that check: it turns consecutive released sdists of a
few small pure-Python projects into a git history (one commit per release, tagged like
upstream so that setuptools-scm finds its version), and runs each commit's suite the way
a person would: a fresh ``python -m venv``, the project's own pip install steps, plain
``python -m pytest``. The counts come from pytest's JUnit XML, counted as ciq counts.

    python bench/realprojects.py byhand [--projects a,b] [--work DIR]
    python bench/realprojects.py check  [--projects a,b] [--last N] [--work DIR]

``check`` also runs every commit through ciq (a private redis-server and a real
``celery -A ciq worker``) twice: once with an empty environment cache, once from a
second clone of the history with the cache warm. ciq's per-test results must equal the
by-hand ones test by test; the table shows the setup time of first and cached runs.

The sdists come from PyPI through pip (``pip download``); nothing else is fetched.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciq.gitrepo import normalise_repo
from ciq.junit import parse_junit
from ciq.processes import stop_process

#: Seconds one pip install step may take before the run is given up.
SETUP_TIMEOUT = 600.0
#: Seconds one test suite may take; each of these takes a few.
TEST_TIMEOUT = 300.0
#: Seconds to wait for a ciq report (a first run builds its environment).
CIQ_TIMEOUT = 900.0
#: Committer of the synthetic histories (set with ``git -c``, never in a config file).
GIT_IDENTITY = ("-c", "user.name=ciq bench", "-c", "user.email=bench@ciq.invalid",
                "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false")
#: Variables of this process that would leak into the runs' fresh environments.
LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTEST_ADDOPTS",
             "PIP_REQUIRE_VIRTUALENV")


@dataclass(frozen=True)
class Project:
    """One project: its releases (oldest first) and how a person tests a checkout.

    ``install`` is a list of ``pip install`` argument lists, run in order inside the
    checkout with the fresh venv's pip, as the project's tox.ini / docs do it.
    ``pytest_args`` go before ciq's own ``--junitxml`` and ``-p no:cacheprovider``; empty
    means the project's default test path (its ``testpaths``).
    """

    name: str
    versions: tuple[str, ...]
    install: tuple[tuple[str, ...], ...]
    pytest_args: tuple[str, ...] = ()
    notes: str = ""


PROJECTS = [
    Project(
        name="itsdangerous",
        versions=("2.1.0", "2.1.1", "2.1.2", "2.2.0"),
        # tox.ini: deps = -r requirements/tests.txt, then the package itself; pytest -v.
        install=(("-r", "requirements/tests.txt"), (".",)),
        notes="src layout; pinned test deps in requirements/tests.txt (pytest, freezegun); "
              "2.1.x: setup.py/setup.cfg without pyproject.toml (setuptools legacy "
              "backend), 2.2.0: flit_core; testpaths = tests, filterwarnings = error",
    ),
    Project(
        name="pluggy",
        versions=("1.3.0", "1.4.0", "1.5.0", "1.6.0"),
        # tox.ini: extras = testing; commands = pytest.
        install=((".[testing]",),),
        notes="src layout; setuptools + setuptools-scm: the version comes from the git "
              "tag (src/pluggy/_version.py is in .gitignore, so not committed); tests in "
              "testing/ (testpaths in tox.ini [pytest]); extra 'testing' = pytest, "
              "pytest-benchmark (+ coverage from 1.6.0)",
    ),
    Project(
        name="more-itertools",
        versions=("10.2.0", "10.3.0", "10.4.0", "10.5.0"),
        # tox.ini runs `python -m unittest`; pytest collects the same TestCases (but not
        # the doctests that the modules' load_tests() adds for unittest).
        install=(("pytest",), (".",)),
        notes="flat layout (more_itertools/ at the root); flit_core; no test "
              "dependencies declared (unittest-based suite), so pytest is installed "
              "by hand",
    ),
]


def _clean_env() -> dict[str, str]:
    """This process's environment without what would make a fresh venv less fresh."""
    return {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = SETUP_TIMEOUT,
         env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> str:
    """Run ``cmd`` in its own session and return its output (stdout and stderr merged).

    Unlike subprocess.run(check=True) this stops the whole process tree — also on a
    timeout or Ctrl-C — and a failure is raised with the command's last output lines.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from None
    finally:
        stop_process(proc, grace=2)  # what the command left running in its session
    if proc.returncode not in ok:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return output


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Git on ``repo`` with the bench identity; returns stdout stripped."""
    return _run(["git", *GIT_IDENTITY, "-C", str(repo), *args], env=env).strip()


def _canonical(name: str) -> str:
    """PEP 503 name: sdists are named ``more-itertools-X`` or ``more_itertools-X``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_sdist(cache_dir: Path, name: str, version: str) -> Path | None:
    """The already downloaded sdist of ``name==version`` in ``cache_dir``, if any."""
    for path in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else ():
        stem = re.sub(r"\.(tar\.gz|zip)$", "", path.name)
        if stem == path.name or "-" not in stem:
            continue
        dist, _, ver = stem.rpartition("-")
        if _canonical(dist) == _canonical(name) and ver == version:
            return path
    return None


def fetch_sdists(project: Project, cache_dir: Path) -> list[Path]:
    """The project's sdists, oldest first, downloaded with pip unless already there.

    ``--no-binary :all:`` makes pip take the sdist (the wheel has no tests), and
    ``--no-deps`` keeps it from fetching anything else.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = []
    for version in project.versions:
        path = _find_sdist(cache_dir, project.name, version)
        if path is None:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                  ":all:", f"{project.name}=={version}", "-d", str(cache_dir)])
            path = _find_sdist(cache_dir, project.name, version)
        if path is None:
            raise RuntimeError(f"pip downloaded no sdist of {project.name}=={version}")
        found.append(path)
    return found


def _clear_tree(repo_dir: Path) -> None:
    """Remove everything but .git, so that files a release dropped are deleted too."""
    for child in repo_dir.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _unpack(sdist: Path, repo_dir: Path) -> int:
    """Unpack ``sdist`` into ``repo_dir`` without its top folder; returns its newest
    mtime, the release's date for the commit (so that the same sdists give the same
    SHAs)."""
    with tempfile.TemporaryDirectory(dir=repo_dir.parent) as tmp, \
            tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
        newest = max((m.mtime for m in tar.getmembers()), default=0)
        tops = list(Path(tmp).iterdir())
        if len(tops) != 1 or not tops[0].is_dir():
            raise RuntimeError(f"{sdist.name} has no single top-level folder")
        for child in tops[0].iterdir():
            shutil.move(child, repo_dir / child.name)
    return int(newest)


def _drop_egg_info(repo_dir: Path) -> None:
    """setuptools' build output shipped in sdists: stale metadata, not source."""
    for path in sorted(repo_dir.rglob("*.egg-info"), reverse=True):
        if ".git" not in path.relative_to(repo_dir).parts and path.is_dir():
            shutil.rmtree(path)


def build_history(project: Project, sdists: list[Path],
                  repo_dir: Path) -> list[tuple[str, str]]:
    """A git repository at ``repo_dir`` (new or empty) with one commit per release on
    ``main``, tagged ``vX.Y``; returns [(version, sha)], oldest first.

    Files the project's own .gitignore lists (e.g. setuptools-scm's generated
    ``_version.py``) stay out of the commit, as they are out of the upstream repository.
    """
    if len(sdists) != len(project.versions):
        raise ValueError(f"{project.name}: {len(sdists)} sdists for "
                         f"{len(project.versions)} versions")
    repo_dir.mkdir(parents=True, exist_ok=True)
    if any(repo_dir.iterdir()):
        raise ValueError(f"{repo_dir} is not empty")
    _git(repo_dir, "init", "-q", "-b", "main")
    history = []
    for version, sdist in zip(project.versions, sdists, strict=True):
        _clear_tree(repo_dir)
        when = f"{_unpack(sdist, repo_dir)} +0000"
        _drop_egg_info(repo_dir)
        env = {**_clean_env(), "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        _git(repo_dir, "add", "-A")
        _git(repo_dir, "commit", "-q", "--allow-empty", "-m", f"Release {version}", env=env)
        _git(repo_dir, "tag", f"v{version}", env=env)
        history.append((version, _git(repo_dir, "rev-parse", "HEAD")))
    return history


def count_junit(path: Path) -> dict[str, int]:
    """Outcomes in a JUnit XML file, counted as ciq counts them (ciq.junit): each
    <testcase> is one test; <failure> wins over <error>, which wins over <skipped>."""
    counts = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        counts["total"] += 1
        for tag, outcome in (("failure", "failed"), ("error", "errors"),
                             ("skipped", "skipped")):
            if case.find(tag) is not None:
                counts[outcome] += 1
                break
        else:
            counts["passed"] += 1
    return counts


def _set_up(project: Project, repo_dir: Path, sha: str, work_dir: Path) -> Path:
    """Check ``sha`` out and make a fresh venv with the project installed as its own
    instructions say; returns the venv's python. Logs go to ``work_dir/setup.log``."""
    checkout, venv = work_dir / "checkout", work_dir / "venv"
    env = _clean_env()
    log = [_git(repo_dir, "worktree", "add", "--detach", str(checkout), sha)]
    log.append(_run([sys.executable, "-m", "venv", str(venv)], env=env))
    python = venv / "bin" / "python"
    for args in project.install:
        log.append(_run([str(python), "-m", "pip", "install", *args], cwd=checkout, env=env))
    log.append(_run([str(python), "-m", "pip", "freeze", "--all"], cwd=checkout, env=env))
    (work_dir / "setup.log").write_text("\n".join(log))
    return python


def _tear_down(repo_dir: Path, work_dir: Path) -> None:
    """Remove the checkout and the venv; the logs and the JUnit XML stay."""
    checkout = work_dir / "checkout"
    if checkout.exists():
        _git(repo_dir, "worktree", "remove", "--force", str(checkout))
    shutil.rmtree(work_dir / "venv", ignore_errors=True)
    _git(repo_dir, "worktree", "prune")


def run_by_hand(project: Project, repo_dir: Path, sha: str, work_dir: Path) -> dict:
    """Test commit ``sha`` of ``repo_dir`` as a person would, in ``work_dir`` (new or
    empty): a git worktree, a fresh stdlib venv, the project's pip steps, plain pytest.

    Returns the JUnit counts and the seconds spent setting up and testing. A suite with
    failing tests is a result (pytest exit 1); any other pytest exit is raised.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    if any(work_dir.iterdir()):
        raise ValueError(f"{work_dir} is not empty")
    junit = work_dir / "junit.xml"
    started = time.monotonic()
    try:
        python = _set_up(project, repo_dir, sha, work_dir)
        set_up = time.monotonic()
        # xunit1 is the JUnit flavour ciq asks pytest for: it names each test's file, so
        # test ids compare one to one. It changes the report, not what runs.
        output = _run([str(python), "-m", "pytest", *project.pytest_args,
                       f"--junitxml={junit}", "-o", "junit_family=xunit1",
                       "-p", "no:cacheprovider"],
                      cwd=work_dir / "checkout", timeout=TEST_TIMEOUT, env=_clean_env(),
                      ok=(0, 1))
        tested = time.monotonic()
        (work_dir / "test.log").write_text(output)
    finally:
        _tear_down(repo_dir, work_dir)
    return {**count_junit(junit), "seconds_setup": round(set_up - started, 2),
            "seconds_test": round(tested - set_up, 2), "junit": str(junit)}


def _fresh(path: Path) -> Path:
    """``path`` emptied: a rerun with the same --work starts over, on the same SHAs."""
    if path.exists():
        shutil.rmtree(path)
    return path


def byhand(projects: list[Project], work: Path) -> list[tuple[str, str, str, dict]]:
    """Build every project's history under ``work`` and test each commit by hand;
    returns (project, version, sha, result) rows, printing each as it comes."""
    rows = []
    for project in projects:
        sdists = fetch_sdists(project, work / "sdists")
        repo = _fresh(work / "repos" / project.name)
        for version, sha in build_history(project, sdists, repo):
            result = run_by_hand(project, repo, sha,
                                 _fresh(work / "runs" / f"{project.name}-{version}"))
            rows.append((project.name, version, sha, result))
            print(_row(project.name, version, sha, result), flush=True)
    return rows


HEADER = (f"{'project':<15} {'version':<8} {'sha':<10} {'total':>6} {'passed':>6} "
          f"{'failed':>6} {'errors':>6} {'skipped':>7} {'setup s':>8} {'test s':>7}")


def _row(name: str, version: str, sha: str, r: dict) -> str:
    """One line of the by-hand table, aligned with HEADER."""
    return (f"{name:<15} {version:<8} {sha[:10]:<10} {r['total']:>6} {r['passed']:>6} "
            f"{r['failed']:>6} {r['errors']:>6} {r['skipped']:>7} "
            f"{r['seconds_setup']:>8.1f} {r['seconds_test']:>7.1f}")


def _select(names: str | None) -> list[Project]:
    """The projects named on the command line (comma-separated), all when none."""
    if not names:
        return list(PROJECTS)
    known = {p.name: p for p in PROJECTS}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown project(s): {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    return [known[n] for n in wanted]


def through_ciq(bench: Any, data_dir: Path, repo_dir: Path, shas: list[str]) -> list[dict]:
    """Enqueue each commit with ``ciq enqueue`` and collect the reports, in order."""
    repo = normalise_repo(str(repo_dir))
    for sha in shas:
        _run([sys.executable, "-m", "ciq", "enqueue", str(repo_dir), sha],
             env=bench.env(data_dir), timeout=60)
    return [bench.wait_report(repo, sha, timeout=CIQ_TIMEOUT).to_dict() for sha in shas]


def _outcomes(tests: list[dict]) -> dict[str, str]:
    return {t["id"]: t["outcome"] for t in tests}


def check(projects: list[Project], work: Path, last: int | None) -> int:
    """By hand and through ciq (cold cache, then warm), compared test by test."""
    from harness import kill_leftovers, save_results
    from spine import Bench  # the benchmarks' private redis-server and workers

    bench = Bench({"CIQ_TIME_LIMIT": "600"})
    rows: list[dict] = []
    try:
        bench.start_redis()
        host = bench.root / "host"
        bench.start_worker("real", host)
        for project in projects:
            chosen = Project(project.name, project.versions[-last:] if last
                             else project.versions, project.install, project.pytest_args)
            sdists = fetch_sdists(chosen, work / "sdists")
            repo = _fresh(work / "repos" / project.name)
            history = build_history(chosen, sdists, repo)
            again = _fresh(work / "repos" / f"{project.name}-again")
            _run(["git", "clone", "--quiet", str(repo), str(again)])
            shas = [sha for _, sha in history]
            cold = through_ciq(bench, host, repo, shas)
            warm = through_ciq(bench, host, again, shas)
            for (version, sha), first, cached in zip(history, cold, warm, strict=True):
                hand = run_by_hand(chosen, repo, sha,
                                   _fresh(work / "runs" / f"{project.name}-{version}"))
                expected = {t.id: t.outcome for t in parse_junit(Path(hand["junit"]))}
                same = all(_outcomes(r["tests"]) == expected for r in (first, cached))
                row = {"project": project.name, "version": version, "sha": sha,
                       "hand": hand, "same": same,
                       "ciq": [{"status": r["status"], "summary": r["summary"],
                                "environment": r["environment"], "timings": r["timings"],
                                "message": r["message"]} for r in (first, cached)]}
                rows.append(row)
                print(_check_row(row), flush=True)
    finally:
        for proc in reversed(bench.procs):
            stop_process(proc)
        leaks = kill_leftovers(bench.root, 5)
    saved = save_results("realprojects", {"rows": rows}, leaks)
    shutil.copy(saved, work / "results.json")
    bad = [r for r in rows if not r["same"]]
    for r in bad:
        print(f"MISMATCH {r['project']} {r['version']}: ciq {r['ciq'][0]['summary']} / "
              f"{r['ciq'][1]['summary']} vs by hand {r['hand']}; {r['ciq'][0]['message']}")
    print(f"{len(rows) - len(bad)} of {len(rows)} commits: ciq equals by hand, test by test")
    shutil.rmtree(bench.root, ignore_errors=True)
    return 1 if bad or not rows else 0


CHECK_HEADER = (f"{'project':<15} {'version':<8} {'sha':<10} {'by hand p/f/e/s':>17} "
                f"{'ciq p/f/e/s':>17} {'same':>4} {'env':>8} {'ciq setup s':>16} "
                f"{'hand setup s':>12}")


def _check_row(row: dict) -> str:
    """One line of the check table: counts, the environment, setup first vs cached."""
    h, (first, cached) = row["hand"], row["ciq"]
    s = first["summary"]
    env = first["environment"]
    how = "built" if not env.get("cache_hit") else "hit"
    setups = (f"{first['timings'].get('setup', 0):.2f} {how} / "
              f"{cached['timings'].get('setup', 0):.2f}")
    return (f"{row['project']:<15} {row['version']:<8} {row['sha'][:10]:<10} "
            f"{h['passed']:>5}/{h['failed']}/{h['errors']}/{h['skipped']:<6} "
            f"{s['passed']:>5}/{s['failed']}/{s['errors']}/{s['skipped']:<6} "
            f"{'yes' if row['same'] else 'NO':>4} {env.get('key', '-')[:8]:>8} "
            f"{setups:>16} {h['seconds_setup']:>12.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    hand = commands.add_parser("byhand", help="build the histories and test each release "
                                              "by hand (fresh venv, pip, pytest)")
    hand.add_argument("--projects", help="comma-separated names (default: all)")
    hand.add_argument("--work", type=Path, help="folder for sdists, repos and runs "
                                                "(default: a new temporary folder)")
    both = commands.add_parser("check", help="also run every commit through ciq, cold and "
                                             "cached, and compare with by hand")
    both.add_argument("--projects", help="comma-separated names (default: all)")
    both.add_argument("--last", type=int, help="only the last N releases of each")
    both.add_argument("--work", type=Path, help="folder for sdists, repos and runs")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so that the redis-server and worker are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    projects = _select(args.projects)
    work = (args.work or Path(tempfile.mkdtemp(prefix="ciq-realprojects-"))).resolve()
    print(f"work dir: {work}", flush=True)
    if args.command == "check":
        print(CHECK_HEADER, flush=True)
        return check(projects, work, args.last)
    print(HEADER, flush=True)
    started = time.monotonic()
    byhand(projects, work)
    print(f"done in {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
