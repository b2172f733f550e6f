"""The Docker deployment (Dockerfile, docker-compose.yml, .dockerignore), tested without a
container engine: the compose file against the Compose Specification schema, and every
command the image runs as a real process of this checkout, configured only as the image
and the compose file configure it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from ciq.processes import stop_process
from ciq.settings import Settings
from ciq.store import Store

from .helpers import PASSING, REDIS_MISSING, free_port, run_ciq, wait_for, wait_report

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The venv's console scripts (celery, ciq, check-jsonschema) stand for the image's: both
# come from `pip install` of this package.
BIN = Path(sys.executable).parent

#: What an operator puts in .env; the compose file refuses to start without the first two.
TEST_VARS = {"CIQ_REPO": "/srv/repo", "FLOWER_BASIC_AUTH": "ciq:test-password",
             "CIQ_CONCURRENCY": "1"}


# -- The compose file as Compose reads it ------------------------------------------------

class MissingVariable(Exception):
    """Raised when a ``${VAR:?message}`` of the compose file has no value."""


_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?message}`` and ``${VAR?message}`` in every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name, op, arg = m.group(2) or m.group(5), m.group(3), m.group(4)
        found = env.get(name)
        if found is None or (op is not None and op.startswith(":") and found == ""):
            if op in ("?", ":?"):
                raise MissingVariable(f"{name}: {arg}")
            return arg if op in ("-", ":-") else ""
        return found

    return _VARIABLE.sub(substitute, value)


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The services, interpolated with ``env`` (the test values by default)."""
    return interpolate(raw_compose(), TEST_VARS if env is None else env)["services"]


def ours(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the image of our Dockerfile."""
    return {name: s for name, s in found.items() if "build" in s}


def words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    given = service.get("environment") or {}
    if isinstance(given, list):
        given = dict(item.split("=", 1) for item in given)
    return {k: str(v) for k, v in given.items()}


def healthcheck(service: dict[str, Any]) -> list[str]:
    """The service's healthcheck as the argv Docker runs (CMD-SHELL goes through sh -c)."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    assert kind == "CMD", test
    return rest


def seconds(duration: str) -> float:
    """A Compose duration ("16m", "1m30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * unit[u] for n, u in parts)


# -- The Dockerfile ----------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, rest = (pending + text).partition(" ")
        found.append((keyword.upper(), rest.strip()))
        pending = ""
    return found


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile():
        if keyword == "ENV":
            parts = shlex.split(rest)
            if "=" in parts[0]:
                env.update(p.partition("=")[::2] for p in parts)
            else:  # the old `ENV KEY value` form
                env[parts[0]] = " ".join(parts[1:])
    return env


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the image, both in the exec (JSON) form."""
    argv: list[str] = []
    for keyword in ("ENTRYPOINT", "CMD"):
        given = [rest for k, rest in dockerfile() if k == keyword]
        if given:
            argv += json.loads(given[-1])
    return argv


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context: the last matching
    pattern wins, ``!`` re-includes, a pattern matching a folder covers what is in it.
    (Close enough to Docker's rules for the patterns of our own file.)"""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parents = [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if any(fnmatch(p, pattern) for p in parents):
            result = not negate
    return result


# -- Processes ---------------------------------------------------------------------------

def plain_env(settings: Settings) -> dict[str, str]:
    """This process's environment without any CIQ_* or FLOWER_* from outside, the venv's
    scripts first on PATH (as the image's are) and the test's Redis as broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "FLOWER_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["CIQ_BROKER_URL"] = settings.broker_url
    return env


def container_env(service: dict[str, Any], settings: Settings) -> dict[str, str]:
    """The environment of the service's container: the image's ENV, the compose file's
    environment, and only what must differ on this machine."""
    env = plain_env(settings)
    env.update(image_env())
    env.update(service_env(service))
    env.update(
        CIQ_BROKER_URL=settings.broker_url,
        CIQ_DATA_DIR=str(settings.data_dir),
        # The session's cache of run environments: the first test of its kind builds it.
        CIQ_ENV_DIR=str(settings.env_root),
        # Docker sets HOSTNAME to the container's host name, which Celery's node name uses.
        HOSTNAME=socket.gethostname(),
    )
    return env


def entry_point_check(argv: list[str], env: dict[str, str],
                      cwd: Path) -> subprocess.CompletedProcess:
    """Run ``argv --help``: 0 only if the command and sub-command exist and every option
    given is one they take (click rejects an unknown option before printing help)."""
    assert argv[0] in ("celery", "ciq"), f"{argv}: not a command of this package"
    if argv[0] == "celery":
        assert argv[1:3] == ["-A", "ciq"], f"{argv}: not ciq's Celery app"
    return subprocess.run([*argv, "--help"], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def start(argv: list[str], env: dict[str, str], cwd: Path,
          log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# -- The compose file --------------------------------------------------------------------

def test_the_compose_file_follows_the_compose_specification() -> None:
    done = check_jsonschema(COMPOSE_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    # `version:` is obsolete in the Compose Specification; Compose warns about it.
    assert "version" not in raw_compose()


def _unknown_service_key(compose: dict[str, Any]) -> None:
    compose["services"]["worker"]["replicas"] = 4  # belongs under deploy:


def _bad_dependency_condition(compose: dict[str, Any]) -> None:
    compose["services"]["worker"]["depends_on"]["redis"]["condition"] = "healthy"


@pytest.mark.parametrize(("breaks", "culprit"), [(_unknown_service_key, "replicas"),
                                                 (_bad_dependency_condition, "healthy")])
def test_the_schema_check_fails_a_broken_compose_file(
    tmp_path: Path, breaks: Callable[[dict[str, Any]], None], culprit: str
) -> None:
    # The negative control: the validation above could have failed.
    compose = raw_compose()
    breaks(compose)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    done = check_jsonschema(broken)
    assert done.returncode != 0
    assert culprit in done.stdout + done.stderr


def test_the_services_commands_are_entry_points_of_this_package(
    settings: Settings, tmp_path: Path
) -> None:
    built = ours(services())
    assert set(built) == {"worker", "observer", "flower", "web"}
    env = plain_env(settings)
    for name, service in built.items():
        commands = [words(service.get("command") or image_command())]
        if "healthcheck" in service:
            check = healthcheck(service)
            if check[0] == "/bin/sh":
                commands.append(shlex.split(check[2]))
        for argv in commands:
            if argv[0] in ("celery", "ciq"):
                done = entry_point_check(argv, env, tmp_path)
                assert done.returncode == 0, f"{name}: {shlex.join(argv)}\n{done.stderr}"


@pytest.mark.parametrize("argv", [["celery", "-A", "ciq", "no-such-command"],
                                  ["ciq", "no-such-command"],
                                  ["celery", "-A", "ciq", "worker", "--concurency=2"]])
def test_the_entry_point_check_fails_a_command_that_is_not_there(
    settings: Settings, tmp_path: Path, argv: list[str]
) -> None:
    assert entry_point_check(argv, plain_env(settings), tmp_path).returncode != 0


def test_the_compose_file_has_no_default_secret_nor_default_repository() -> None:
    for missing in ("FLOWER_BASIC_AUTH", "CIQ_REPO"):
        env = {k: v for k, v in TEST_VARS.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            services(env)
        with pytest.raises(MissingVariable, match=missing):
            services({**env, missing: ""})


def test_the_workers_scale_shut_down_warm_and_reach_the_redis_service() -> None:
    found = services()
    worker = found["worker"]
    # `docker compose up --scale worker=N` fails on a fixed name or host port.
    assert not {"container_name", "hostname", "ports"} & set(worker)
    # A warm shutdown outlasts the longest run, the report included.
    limit = float(service_env(worker).get("CIQ_TIME_LIMIT", Settings().time_limit))
    assert seconds(worker["stop_grace_period"]) >= limit + 60
    for name, service in ours(found).items():
        assert service_env(service)["CIQ_BROKER_URL"] == "redis://redis:6379/0", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_the_compose_file_keeps_data_in_named_volumes_and_ports_on_localhost() -> None:
    compose = interpolate(raw_compose(), TEST_VARS)
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name
        if name != "observer":  # it serves nothing a healthcheck could ask
            assert "healthcheck" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is open to the network"
    assert "/data" in [v.split(":")[1] for v in compose["services"]["redis"]["volumes"]]
    # Mirrors, outbox and run environments outlive the containers (Flower keeps nothing).
    data_dir = image_env()["CIQ_DATA_DIR"]
    for name in ("worker", "observer"):
        mounts = [v.split(":")[1] for v in compose["services"][name]["volumes"]]
        assert data_dir in mounts, name


def test_the_redis_command_persists_and_never_evicts(tmp_path: Path) -> None:
    argv = words(services()["redis"]["command"])
    exe = shutil.which(argv[0])
    if exe is None:
        pytest.fail(REDIS_MISSING)
    port = free_port()
    # The compose file's options, then this machine's: later options win in redis-server.
    proc = subprocess.Popen(
        [exe, *argv[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    client = redis.Redis(port=port)
    try:
        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return proc.poll() is not None

        wait_for(answers, 10, "redis-server with the compose file's options")
        assert proc.poll() is None
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()
        stop_process(proc)


# -- The Dockerfile ----------------------------------------------------------------------

def test_the_dockerfile_runs_this_package_as_a_user_that_is_not_root(
    settings: Settings, tmp_path: Path
) -> None:
    steps = dockerfile()
    keywords = [k for k, _ in steps]
    assert [rest for k, rest in steps if k == "FROM"][-1].split()[0] == "python:3.11-slim"
    # Not root: the last USER names another user, and nothing runs after it as root.
    users = [rest for k, rest in steps if k == "USER"]
    assert users, "the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "RUN" not in keywords[keywords.index("USER"):]
    assert image_env()["CIQ_DATA_DIR"] == "/var/lib/ciq"
    runs = [segment.strip() for k, rest in steps if k == "RUN" for segment in rest.split("&&")]
    assert any(r.startswith("apt-get install") and "--no-install-recommends" in r
               and "git" in r.split() for r in runs)
    # This package is installed from the sources copied last, not from an index.
    last_copy = max(i for i, (k, _) in enumerate(steps) if k == "COPY")
    installs = [segment.split() for k, rest in steps[last_copy:] if k == "RUN"
                for segment in rest.split("&&") if "pip install" in segment]
    assert any(args[-1] == "." for args in installs), installs
    done = entry_point_check(image_command(), plain_env(settings), tmp_path)
    assert done.returncode == 0, done.stderr


def test_the_build_context_holds_every_package_and_no_secret() -> None:
    copied = {src.rstrip("/") for k, rest in dockerfile() if k == "COPY"
              for src in rest.split()[:-1] if not src.startswith("--")}
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    # Subpackages (ciq.web, ciq.store...) come with their top-level folder.
    tops = {pattern.rstrip("*").split(".")[0] for pattern in find["include"]}
    for needed in ["pyproject.toml", "README.md", *sorted(tops)]:
        assert needed in copied, f"the Dockerfile does not copy {needed}"
    for source in copied:
        assert (ROOT / source).exists(), source
        inside = f"{source}/__init__.py" if (ROOT / source).is_dir() else source
        assert not dockerignored(inside), f".dockerignore leaves {inside} out"
    for secret in (".env", ".git/config", ".venv/bin/python", "tests/conftest.py",
                   "ciq/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(secret), f".dockerignore lets {secret} into the image"


# -- The commands, run ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_images_commands_test_commits_in_a_plain_environment(
    settings: Settings, store: Store, make_repo, tmp_path: Path
) -> None:
    # Given a worker started with the compose file's command and environment
    repo = make_repo(PASSING)
    found = services({**TEST_VARS, "CIQ_REPO": str(repo.path)})
    env = container_env(found["worker"], settings)
    log = tmp_path / "worker.log"
    worker = start(words(found["worker"]["command"]), env, tmp_path, log)
    try:
        wait_for(lambda: " ready." in log.read_text() or worker.poll() is not None, 60,
                 "the worker to start")
        assert worker.poll() is None, log.read_text()[-3000:]

        # Then its healthcheck passes, and fails for a node that is not there
        check = healthcheck(found["worker"])
        done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        elsewhere = {**env, "HOSTNAME": "no-such-host"}
        assert subprocess.run(check, env=elsewhere, capture_output=True,
                              timeout=60).returncode != 0

        # When a commit is enqueued, then it passes
        done = run_ciq(settings, "enqueue", str(repo.path))
        assert done.returncode == 0, done.stderr
        report = wait_report(store, str(repo.path), done.stdout.strip(), timeout=240)
        assert report.status == "passed", report.message

        # When the observer's command polls once after a new commit, then that passes too
        sha = repo.commit({"tests/test_more.py": "def test_more():\n    assert 1 + 1 == 2\n"})
        observer = words(found["observer"]["command"])
        done = subprocess.run([*observer, "--once"], env=container_env(found["observer"], settings),
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "enqueued 1 commits" in done.stdout
        report = wait_report(store, str(repo.path), sha, timeout=120)
        assert report.status == "passed", report.message
        assert report.summary.passed == 2
    finally:
        stop_process(worker)


@pytest.mark.slow
def test_flower_asks_for_the_password_from_the_environment(
    settings: Settings, tmp_path: Path
) -> None:
    # Given Flower started with the compose file's command and environment, moved from the
    # container's port and interfaces to a free port of this (shared) machine's loopback
    flower = services()["flower"]
    port = free_port()
    moved = {"--port=5555": f"--port={port}", "--address=0.0.0.0": "--address=127.0.0.1"}
    argv = [moved.get(word, word) for word in words(flower["command"])]
    assert argv != words(flower["command"])
    check = [word.replace(":5555/", f":{port}/") for word in healthcheck(flower)]
    env = container_env(flower, settings)
    proc = start(argv, env, tmp_path, tmp_path / "flower.log")
    try:
        # When its healthcheck passes
        def healthy() -> bool:
            done = subprocess.run(check, env=env, capture_output=True, timeout=30)
            return done.returncode == 0 or proc.poll() is not None

        wait_for(healthy, 60, "Flower's healthcheck", interval=0.5)
        assert proc.poll() is None, (tmp_path / "flower.log").read_text()[-3000:]

        # Then its pages want the password of FLOWER_BASIC_AUTH
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/workers", timeout=10)
        denied.value.close()
        assert denied.value.code == 401
        token = base64.b64encode(TEST_VARS["FLOWER_BASIC_AUTH"].encode()).decode()
        request = urllib.request.Request(f"{url}/workers",
                                         headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as page:
            assert page.status == 200
        # And /metrics does not, as the compose file warns
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as page:
            assert page.status == 200
    finally:
        stop_process(proc)
