"""Cached run environments: what keys them, and the per-host cache shared by processes.

The cache tests use real processes and real flock(2): that is what the workers of one
host share. The end-to-end tests build real virtual environments with uv, from PyPI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ciq.repoconfig import RepoConfig
from ciq.runner.environments import READY, EnvCache, installed_from
from ciq.runner.recipe import DEPENDENCY_FILES, Python, recipe_for

from .helpers import run_ciq, wait_for, wait_report

ROOT = Path(__file__).resolve().parent.parent

PYPROJECT = """\
[build-system]
requires = ["flit_core>=3.4,<4"]
build-backend = "flit_core.buildapi"

[project]
name = "demo"
version = "{version}"
description = "a library under test"
dependencies = [{deps}]

[project.optional-dependencies]
test = ["pytest"]
"""


def pyproject(version: str = "1.0", deps: str = '"iniconfig"') -> str:
    return PYPROJECT.format(version=version, deps=deps)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def key_of(root: Path, config: RepoConfig | None = None) -> str:
    return recipe_for(root, config, Python.own()).key


def test_the_key_follows_dependencies_not_versions_or_code(tmp_path: Path):
    a = write(tmp_path / "a", {"pyproject.toml": pyproject("1.0"), "src/demo/__init__.py": ""})
    # A release bumps the version and changes code: same environment
    b = write(tmp_path / "b", {"pyproject.toml": pyproject("1.1"),
                               "src/demo/__init__.py": "X = 1\n"})
    assert key_of(a) == key_of(b)
    # So does a setup.cfg whose only change is a version, or another tool's settings
    cfg = "[metadata]\nversion = {}\n[bumpversion]\ncurrent_version = {}\n" \
          "[options]\ninstall_requires =\n    iniconfig\n"
    write(a, {"setup.cfg": cfg.format("1.0", "1.0")})
    write(b, {"setup.cfg": cfg.format("1.1", "1.1")})
    assert key_of(a) == key_of(b)
    write(b, {"setup.cfg": cfg.format("1.1", "1.1") + "    six\n"})
    assert key_of(a) != key_of(b)
    # A new dependency, a requirements file, setup steps, env or Python: another one
    c = write(tmp_path / "c", {"pyproject.toml": pyproject("1.0", '"iniconfig", "six"')})
    d = write(tmp_path / "d", {"pyproject.toml": pyproject("1.0"),
                               "requirements/tests.txt": "freezegun\n"})
    keys = {key_of(a), key_of(c), key_of(d),
            key_of(a, RepoConfig(setup=("pip install -e .",))),
            key_of(a, RepoConfig(env={"X": "1"}))}
    assert len(keys) == 5
    other = Python("/usr/bin/python3", "3.11.2", "cpython 3.11.2 /usr/bin/python3.11")
    assert recipe_for(a, None, other).key != key_of(a)
    # Files named by the repository key it instead, whole
    named = RepoConfig(deps=("constraints.txt",))
    write(a, {"constraints.txt": "iniconfig==2.0.0\n"})
    before = key_of(a, named)
    write(a, {"constraints.txt": "iniconfig==2.1.0\n", "pyproject.toml": pyproject("2.0")})
    assert key_of(a, named) != before


def test_the_recipe_reads_extras_requirements_and_build_backend(tmp_path: Path):
    root = write(tmp_path / "p", {"pyproject.toml": pyproject(), "requirements-test.txt": "x"})
    recipe = recipe_for(root, None, Python.own())
    assert recipe.installable and recipe.extras == ("test",)
    assert recipe.requirements == ("requirements-test.txt",)
    assert recipe.build_requires == ("flit_core>=3.4,<4",) and recipe.groups == ()
    write(root, {"pyproject.toml": pyproject() + '[dependency-groups]\ntest = ["six"]\n'
                                                 'docs = ["sphinx"]\n'})
    assert recipe_for(root, None, Python.own()).groups == ("test",)
    legacy = write(tmp_path / "legacy", {"setup.py": "from setuptools import setup\nsetup()"})
    recipe = recipe_for(legacy, RepoConfig(extras=()), Python.own())
    assert recipe.extras == () and recipe.build_requires[0].startswith("setuptools")
    plain = write(tmp_path / "plain", {"pyproject.toml": "[tool.black]\n", "tests/t.py": ""})
    assert not recipe_for(plain, None, Python.own()).installable
    assert "pyproject.toml" in DEPENDENCY_FILES


def test_bad_environment_settings_name_the_key_and_the_file(tmp_path: Path):
    from ciq.errors import ConfigError
    from ciq.runner.box import Box, own_interpreter, run_env
    from ciq.runner.process import run_sandboxed

    with pytest.raises(ConfigError, match=r"ciq.toml: 'deps' must be"):
        RepoConfig.parse({"deps": ["../../etc/passwd"]}, "ciq.toml")
    with pytest.raises(ConfigError, match=r"'extras' must be"):
        RepoConfig.parse({"extras": "test"}, "ciq.toml")
    with pytest.raises(ConfigError, match=r"pyproject.toml: 'python' = '1.0': no such"):
        from uv import find_uv_bin

        def probe(cmd: list[str], interpreter: Path | None) -> tuple[int, str]:
            box = Box(tmp_path, run_env({}, tmp_path)).allow_read(own_interpreter(),
                                                                   find_uv_bin())
            done = run_sandboxed(cmd, box, 60, 4096, tmp_path)
            return done.exit_code, done.output

        Python.find("1.0", find_uv_bin(), "pyproject.toml", probe)


def test_the_project_is_found_by_its_direct_url(tmp_path: Path):
    env = tmp_path / "env"
    site = env / "lib" / "python3.11" / "site-packages"
    checkout = tmp_path / "runs" / "r1" / "src"
    for name, url in (("demo-1.0", checkout.as_uri()), ("iniconfig-2.0", None),
                      ("other-1.0", (tmp_path / "elsewhere").as_uri())):
        (site / f"{name}.dist-info").mkdir(parents=True)
        if url:
            (site / f"{name}.dist-info" / "direct_url.json").write_text(json.dumps({"url": url}))
    assert installed_from(env, checkout) == ["demo"]


HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from ciq.runner.environments import EnvCache
    cache = EnvCache(__import__("pathlib").Path({cache!r}), 5)
    entry = cache.acquire({key!r}, time.monotonic() + 60)
    log = open({log!r}, "a")
    if not entry.ready:
        log.write(f"build {{os.getpid()}}\\n"); log.flush()
        (entry.path / "partial").parent.mkdir(parents=True, exist_ok=True)
        (entry.path / "partial").write_text("half")
        if {die!r}:
            os.kill(os.getpid(), 9)
        time.sleep(1.0)
        entry.mark_ready({{}})
    assert not (entry.path / "partial").exists() or (entry.path / {ready!r}).exists()
    log.write(f"use {{os.getpid()}}\\n"); log.flush()
    time.sleep({hold!r})
    entry.release()
""")


def holder(tmp_path: Path, key: str, die: bool = False, hold: float = 0.3) -> subprocess.Popen:
    code = HOLDER.format(root=str(ROOT), cache=str(tmp_path / "cache"), key=key,
                         log=str(tmp_path / "log"), die=die, ready=READY, hold=hold)
    return subprocess.Popen([sys.executable, "-c", code])


def test_concurrent_runs_build_an_environment_once(tmp_path: Path):
    procs = [holder(tmp_path, "k1") for _ in range(4)]
    assert [p.wait(timeout=30) for p in procs] == [0] * 4
    lines = (tmp_path / "log").read_text().split()
    assert lines.count("build") == 1 and lines.count("use") == 4


def test_a_half_built_environment_is_never_used(tmp_path: Path):
    dead = holder(tmp_path, "k2", die=True)
    assert dead.wait(timeout=30) == -signal.SIGKILL
    assert (tmp_path / "cache" / "k2" / "partial").exists()  # what the builder left
    # The next run builds it again from scratch rather than use the half-built one
    assert holder(tmp_path, "k2").wait(timeout=30) == 0
    assert (tmp_path / "log").read_text().split().count("build") == 2
    assert (tmp_path / "cache" / "k2" / READY).exists()


def test_the_least_recently_used_go_first_but_never_one_in_use(tmp_path: Path):
    cache = EnvCache(tmp_path / "cache", size=2)
    for key in ("a", "b", "c"):
        entry = cache.acquire(key, time.monotonic() + 5)
        entry.path.mkdir()
        entry.mark_ready({})
        entry.release()
        time.sleep(0.05)
    used = cache.acquire("a", time.monotonic() + 5)  # a is the newest now, b the oldest
    assert used.hit
    assert cache.evict(keep="c") == ["b"]
    # Held by a run in another process, an old entry stays until that run is over
    busy = holder(tmp_path, "c", hold=3)
    wait_for(lambda: "use" in (tmp_path / "log").read_text()
             if (tmp_path / "log").exists() else False, 10, "the holder")
    os.utime(tmp_path / "cache" / "a" / READY, (1, 1))
    os.utime(tmp_path / "cache" / "c" / READY, (2, 2))
    small = EnvCache(tmp_path / "cache", size=0)
    assert small.evict(keep="none") == []  # a is held by this process, c by the other
    used.release()
    assert small.evict(keep="none") == ["a"]
    assert busy.wait(timeout=10) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == ["c"]


# -- end to end: a real worker builds real environments ------------------------------


LIBRARY = {
    "src/demo/__init__.py": "import iniconfig\n\ndef answer():\n    return 42\n",
    "tests/test_demo.py": textwrap.dedent("""
        import importlib.metadata, os, sys, tomllib
        import demo

        def test_answer():
            assert demo.answer() == 42

        def test_installed_from_this_checkout():
            assert demo.__file__.startswith(os.getcwd())
            with open("pyproject.toml", "rb") as fh:
                version = tomllib.load(fh)["project"]["version"]
            assert importlib.metadata.version("demo") == version

        def test_runs_in_its_own_environment():
            assert sys.prefix == os.environ["VIRTUAL_ENV"]
            import celery  # noqa: F401  (the worker's packages must not leak in)
    """),
}


@pytest.mark.slow
def test_a_library_gets_its_dependencies_once_and_its_own_code_every_time(
    worker, make_repo, store, settings
):
    # Given a src/ layout library with a dependency and a test extra
    repo = make_repo({**LIBRARY, "pyproject.toml": pyproject("1.0")})
    worker()

    def run(sha: str) -> dict:
        assert run_ciq(settings, "enqueue", str(repo.path), sha).returncode == 0
        return wait_report(store, str(repo.path), sha, timeout=240).to_dict()

    first = run(repo.head())
    # The worker's own packages are not in the run's environment
    assert first["summary"]["failed"] == 1, first["output"][-3000:]
    assert "No module named 'celery'" in first["output"]
    assert first["environment"]["cache_hit"] is False
    assert first["environment"]["build_seconds"] > 0
    assert first["timings"]["setup"] >= first["environment"]["build_seconds"]
    key = first["environment"]["key"]
    # The project itself is not kept in the cached environment
    site = next((settings.env_root / key).glob("lib/python*/site-packages"))
    assert not list(site.glob("demo-*.dist-info")) and list(site.glob("iniconfig-*"))

    # When a release changes code and version, not dependencies: a cache hit
    test = LIBRARY["tests/test_demo.py"].replace("    import celery  # noqa: F401  "
                                                 "(the worker's packages must not leak in)\n",
                                                 "")
    sha = repo.commit({"tests/test_demo.py": test, "pyproject.toml": pyproject("1.1"),
                       "src/demo/__init__.py": LIBRARY["src/demo/__init__.py"]
                       .replace("42", "6 * 7")}, "release 1.1")
    second = run(sha)
    assert second["status"] == "passed", second["output"][-3000:]
    assert second["summary"]["passed"] == 3
    assert second["environment"] == {"key": key, "cache_hit": True,
                                     "python": first["environment"]["python"]}
    assert second["timings"]["setup"] < first["environment"]["build_seconds"]

    # When a dependency is added: a new environment, and it has the new dependency
    sha = repo.commit({"pyproject.toml": pyproject("1.1", '"iniconfig", "six"'),
                       "tests/test_six.py": "import six\n\ndef test_six():\n    assert six\n"})
    third = run(sha)
    assert third["status"] == "passed", third["output"][-3000:]
    assert third["environment"]["key"] != key and not third["environment"]["cache_hit"]
    assert third["summary"]["passed"] == 4

    # Told not to install the project, a run imports it from the checkout: no metadata
    sha = repo.commit({"ciq.toml": "install = false\n"})
    fourth = run(sha)
    assert fourth["environment"]["cache_hit"] and fourth["summary"]["passed"] == 3
    assert "PackageNotFoundError" in fourth["output"]

    # The report says how the run was made, on the command line too
    shown = run_ciq(settings, "report", str(repo.path), sha[:10]).stdout
    assert "command: python -m pytest tests" in shown
    assert f"environment: Python {third['environment']['python']}" in shown


@pytest.mark.slow
def test_setup_failures_and_a_missing_python_are_error_reports(
    worker, make_repo, store, settings
):
    repo = make_repo({"tests/test_ok.py": "def test_ok():\n    pass\n",
                      "requirements-test.txt": "ciq-no-such-package-exists==0.0.1\n"})
    worker()
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    report = wait_report(store, str(repo.path), repo.head(), timeout=120)
    assert report.status == "error"
    first_line, tail = report.message.split("\n", 1)
    assert first_line.startswith("install the dependencies failed with exit status")
    assert "ciq-no-such-package-exists" in tail  # the tail of its output, in the message
    # Nothing half-built is left behind in the cache
    assert not [p for p in settings.env_root.iterdir() if p.is_dir()
                and not (p / READY).exists()]

    sha = repo.commit({"requirements-test.txt": "", "ciq.toml": 'python = "2.6"\n'})
    assert run_ciq(settings, "enqueue", str(repo.path), sha).returncode == 0
    report = wait_report(store, str(repo.path), sha, timeout=60)
    assert report.status == "error"
    assert report.message.startswith("bad ciq settings: ciq.toml: 'python' = '2.6'")

    sha = repo.commit({"ciq.toml": 'setup = ["true", "echo preparing; exit 3"]\n'})
    assert run_ciq(settings, "enqueue", str(repo.path), sha).returncode == 0
    report = wait_report(store, str(repo.path), sha, timeout=60)
    assert report.status == "error"
    assert report.message == ("setup step 2 (`echo preparing; exit 3`) failed with exit "
                              "status 3\npreparing")
