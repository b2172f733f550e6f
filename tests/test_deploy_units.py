"""The systemd and cron deployment (deploy/) and the production Celery configuration
(worker_config/production.py): the unit files parsed and checked by ``systemd-analyze``,
each command they run run for real from this checkout, the cron job run against a
private Redis, and real workers with the production module and with ``--autoscale``."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciq.celery import create_app
from ciq.processes import stop_process
from ciq.repoconfig import operator_file
from ciq.settings import Settings
from ciq.store import Store

from .helpers import (
    PASSING,
    alive,
    children,
    ciq_env,
    free_port,
    run_ciq,
    wait_for,
    wait_report,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ENV_EXAMPLE = DEPLOY / "ciq.env.example"
CRON_FILE = DEPLOY / "cron" / "ciq-observe"
#: Where the units and the cron job expect ciq's virtual environment; this venv's bin
#: (celery and ciq, from `pip install` of this package) stands for it here.
VENV_BIN = "/opt/ciq/venv/bin"
BIN = Path(sys.executable).parent


# -- Reading the files ------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values, in order]}} (keys may repeat;
    a trailing backslash continues a line; # and ; start comments)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(path: Path) -> dict[str, str]:
    """The [Service] section, last value of each key (as systemd reads single values)."""
    return {k: v[-1] for k, v in parse_unit(path)["Service"].items()}


def seconds(span: str) -> float:
    """A systemd time span ("1020", "17min", "1h 30s") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit]
    return total


def specifiers(text: str) -> str:
    """systemd's specifiers as they expand for instance 1 on this host."""
    return text.replace("%%", "\0").replace("%i", "1").replace("%I", "1") \
        .replace("%H", socket.gethostname()).replace("\0", "%")


def env_file(path: Path) -> dict[str, str]:
    """NAME=value lines as systemd's EnvironmentFile= reads them (quotes stripped)."""
    values = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        name, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


_ASSIGNMENT = re.compile(r"^#?(CIQ_[A-Z_]+)=(.*)$")


def example_assignments() -> list[tuple[str, str, bool]]:
    """(name, value, commented) of every ``[#]CIQ_X=value`` line of ciq.env.example."""
    found = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = _ASSIGNMENT.match(line)
        if m:
            found.append((m.group(1), m.group(2).strip('"'), line.startswith("#")))
    return found


def command(argv: list[str]) -> list[str]:
    """A unit's command with this checkout's venv for /opt/ciq/venv."""
    assert argv[0].startswith(VENV_BIN + "/"), f"{argv[0]} is not ciq's venv"
    program = argv[0].rsplit("/", 1)[1]
    assert program in ("celery", "ciq"), f"{argv[0]}: neither celery nor ciq"
    return [sys.executable, "-m", program, *argv[1:]]


def cron_job() -> tuple[list[str], str, str]:
    """The schedule fields, user and command of the cron file's one job line."""
    jobs = []
    for line in CRON_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 6)
        jobs.append((fields[:5], fields[5], fields[6]))
    assert len(jobs) == 1, jobs
    return jobs[0]


def cron_variables() -> dict[str, str]:
    return dict(line.split("=", 1) for line in CRON_FILE.read_text().splitlines()
                if re.match(r"^[A-Z_]+=", line))


# -- Unit files -----------------------------------------------------------------------

def test_the_units_are_the_three_services():
    assert [u.name for u in UNITS] == [
        "ciq-observer.service", "ciq-web.service", "ciq-worker@.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_unit_runs_as_ciq_from_the_env_file_and_restarts_on_failure(unit: Path):
    s = service(unit)
    assert s["EnvironmentFile"] == "/etc/ciq/ciq.env"
    assert (s["User"], s["Group"]) == ("ciq", "ciq")
    assert s["Restart"] in ("on-failure", "always") and seconds(s["RestartSec"]) >= 1
    assert s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes"
    assert s["ProtectSystem"] in ("full", "strict")
    assert "WantedBy" in parse_unit(unit)["Install"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_exec_start_is_a_real_command_of_this_package(unit: Path, tmp_path: Path):
    # The command line exactly as written (options included: click refuses an unknown
    # one before --help answers), with the example env file's settings.
    argv = shlex.split(specifiers(service(unit)["ExecStart"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIQ_", "CELERY_"))}
    env.update(env_file(ENV_EXAMPLE))
    done = subprocess.run([*command(argv), "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_worker_lets_the_longest_run_finish_on_stop():
    s = service(DEPLOY / "systemd" / "ciq-worker@.service")
    default = Settings()
    # A warm shutdown (SIGTERM) to the main process only: the pool and the tests go on.
    assert s["KillSignal"] == "SIGTERM" and s["KillMode"] == "mixed"
    # And systemd waits longer than a run can last: past ciq's limit and Celery's hard
    # limit, the backstop that ends any run.
    assert seconds(s["TimeoutStopSec"]) > default.hard_time_limit > default.time_limit
    assert "--hostname=ciq%i@%H" in s["ExecStart"]  # one node name per instance


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed on this machine: the units were only "
                    "parsed (apt-get install systemd to check them)")
    files = []
    for unit in UNITS:
        name = unit.name.replace("@.", "@1.")  # a template is verified as an instance
        target = tmp_path / name
        target.write_text(unit.read_text().replace(VENV_BIN, str(BIN)))
        files.append(str(target))
    done = subprocess.run([exe, "verify", "--man=no", *files], capture_output=True,
                          text=True, timeout=120)
    # Unknown keys and bad values are only warnings for systemd: none is accepted here.
    assert done.returncode == 0 and done.stdout + done.stderr == "", \
        done.stdout + done.stderr


# -- The env file ------------------------------------------------------------------------

def test_the_env_example_sets_every_setting_once_and_nothing_else():
    names = [name for name, _, _ in example_assignments()]
    assert sorted(names) == sorted(Settings.ENV.values())


def test_the_env_example_comments_out_the_defaults_and_sets_valid_values():
    defaults = Settings.from_env({})
    by_var = {var: name for name, var in Settings.ENV.items()}
    for var, value, commented in example_assignments():
        if commented:  # "#CIQ_X=value": the default, as from_env reads it
            got = getattr(Settings.from_env({var: value}), by_var[var])
            assert got == getattr(defaults, by_var[var]), var
    settings = Settings.from_env(env_file(ENV_EXAMPLE))
    assert settings.celery_config == "worker_config.production"
    assert settings.data_dir == Path("/var/lib/ciq")


def test_sh_reads_the_env_example_as_systemd_does(tmp_path: Path):
    # The cron job sources the file the units read: both must see the same values.
    script = f"set -a; . {shlex.quote(str(ENV_EXAMPLE))}; env"
    out = subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    from_sh = dict(line.split("=", 1) for line in out.splitlines()
                   if line.startswith("CIQ_"))
    assert from_sh == env_file(ENV_EXAMPLE)


def test_the_repos_example_is_a_valid_operator_file():
    repos = operator_file(DEPLOY / "repos.toml.example")
    assert len(repos) >= 3
    assert any(len(r.branches) > 1 for r in repos)


# -- Cron ------------------------------------------------------------------------------

def test_the_cron_job_polls_once_a_minute_as_ciq_under_flock():
    schedule, user, line = cron_job()
    assert schedule == ["*"] * 5 and user == "ciq"
    argv = shlex.split(line)
    assert argv[:2] == ["flock", "-n"]
    assert "ciq observe --once --config /etc/ciq/repos.toml" in line
    assert ". /etc/ciq/ciq.env" in line
    assert "%" not in line  # cron would turn it into a newline
    assert CRON_FILE.read_text().endswith("\n")  # cron ignores an unterminated last line


def _cron_command(tmp_path: Path, env_path: Path, repos_path: Path, lock: Path) -> str:
    _, _, line = cron_job()
    return (line.replace("/etc/ciq/ciq.env", str(env_path))
            .replace("/etc/ciq/repos.toml", str(repos_path))
            .replace("/var/lib/ciq/observe.lock", str(lock))
            .replace(VENV_BIN, str(BIN)))


def test_the_cron_job_enqueues_the_head_of_a_real_repository(
    make_repo, settings: Settings, store: Store, tmp_path: Path
):
    # Given the cron line, its env file pointing at a private Redis and a repos file
    repo = make_repo(PASSING)
    env_path = tmp_path / "ciq.env"
    env_path.write_text(f"CIQ_BROKER_URL={settings.broker_url}\n"
                        f"CIQ_DATA_DIR={settings.data_dir}\n")
    repos_path = tmp_path / "repos.toml"
    repos_path.write_text(f'[[repo]]\nurl = "{repo.path}"\nbranches = ["main"]\n')
    lock = tmp_path / "observe.lock"
    line = _cron_command(tmp_path, env_path, repos_path, lock)
    # cron's own environment: its file's variables, HOME, LOGNAME; no CIQ_* of ours
    cron_env = {**cron_variables(), "HOME": str(tmp_path), "LOGNAME": "ciq"}

    # When cron runs it
    done = subprocess.run([cron_env["SHELL"], "-c", line], env=cron_env, capture_output=True,
                          text=True, timeout=60)

    # Then it exits 0, silent (cron mails any output), and the head is enqueued
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    commit = store.commit(str(repo.path), repo.head())
    assert commit["branch"] == "main"
    assert store.client.llen(settings.queue) == 1

    # And while a poll holds the lock, the next minute's run skips (exit 1, no output)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = repo.commit({"x": "1"}, "second")
        skipped = subprocess.run([cron_env["SHELL"], "-c", line], env=cron_env,
                                 capture_output=True, text=True, timeout=60)
    assert (skipped.returncode, skipped.stdout, skipped.stderr) == (1, "", "")
    assert store.commit(str(repo.path), second) == {}


def test_a_failing_cron_poll_prints_its_log_for_cron_to_mail(
    make_repo, settings: Settings, tmp_path: Path
):
    # Given a Redis that is not there
    repo = make_repo(PASSING)
    env_path = tmp_path / "ciq.env"
    env_path.write_text(f"CIQ_BROKER_URL=redis://127.0.0.1:{free_port()}/0\n"
                        f"CIQ_DATA_DIR={settings.data_dir}\n")
    repos_path = tmp_path / "repos.toml"
    repos_path.write_text(f'[[repo]]\nurl = "{repo.path}"\n')
    line = _cron_command(tmp_path, env_path, repos_path, tmp_path / "observe.lock")
    cron_env = {**cron_variables(), "HOME": str(tmp_path), "LOGNAME": "ciq"}
    # When cron runs the job, then it fails loudly: the reason on stdout, which cron mails
    done = subprocess.run([cron_env["SHELL"], "-c", line], env=cron_env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "cannot reach Redis" in done.stdout, done


# -- The production Celery configuration -----------------------------------------------

def test_a_config_module_that_cannot_be_imported_stops_the_worker_naming_the_variable(
    settings: Settings, tmp_path: Path
):
    env = ciq_env(settings, CIQ_CELERY_CONFIG="worker_config.nope")
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "ciq", "worker", "--help"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "CIQ_CELERY_CONFIG='worker_config.nope' cannot be imported" in done.stderr


def test_ciq_settings_win_over_the_config_module_and_its_transport_options_are_kept():
    settings = Settings(celery_config="worker_config.production", time_limit=100, queue="q1")
    conf = create_app(settings).conf
    assert (conf.task_time_limit, conf.task_soft_time_limit) == (190, 160)
    assert conf.task_default_queue == "q1" and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options == {
        "health_check_interval": 25, "socket_keepalive": True, "visibility_timeout": 790}
    assert conf.result_expires is None and conf.task_acks_late is True
    assert conf.accept_content == ["json"]  # inherited from celeryconfig


@pytest.mark.slow
def test_a_worker_with_the_production_module_tests_a_commit(
    worker, make_repo, settings: Settings, store: Store
):
    # Given a worker started with CIQ_CELERY_CONFIG=worker_config.production
    w = worker(CIQ_CELERY_CONFIG="worker_config.production")
    repo = make_repo(PASSING)

    # When a commit is enqueued, then it is tested
    assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    assert wait_report(store, str(repo.path), repo.head()).status == "passed"

    # And the running worker has the module's values (asked over remote control)
    app = create_app(settings)
    node = f"{w.name}@{socket.gethostname()}"
    replies = app.control.inspect(destination=[node], timeout=5).conf(with_defaults=False)
    conf = replies[node]
    assert conf["worker_max_memory_per_child"] == 512 * 1024
    assert conf["broker_transport_options"]["socket_keepalive"] is True
    assert conf["task_time_limit"] == settings.hard_time_limit
    app.close()


# -- Autoscaling ---------------------------------------------------------------------------

def sleeping_test(log: Path, seconds_: float) -> str:
    """A test that logs "start|end <sha> <time>" around a sleep."""
    return f"""\
import subprocess, time

SHA = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()

def test_sleeps():
    with open({str(log)!r}, "a") as fh:
        fh.write(f"start {{SHA}} {{time.time()}}\\n")
    time.sleep({seconds_})
    with open({str(log)!r}, "a") as fh:
        fh.write(f"end {{SHA}} {{time.time()}}\\n")
"""


def most_at_once(log: Path) -> int:
    """The largest number of runs in ``log`` that were going on at the same time."""
    deltas = sorted((float(t), 1 if kind == "start" else -1)
                    for kind, _, t in (line.split() for line in log.read_text().splitlines()))
    peak = now = 0
    for _, delta in deltas:
        now += delta
        peak = max(peak, now)
    return peak


@pytest.fixture
def autoscaled(settings: Settings, tmp_path: Path) -> Iterator[object]:
    """Start real `celery -A ciq worker --autoscale=MAX,MIN` processes (stopped after)."""
    started: list[subprocess.Popen] = []

    def start(name: str, autoscale: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"worker-{name}.log"
        # AUTOSCALE_KEEPALIVE: seconds idle before Celery shrinks the pool (30 by default)
        shared = tmp_path / "shared"  # where the tests log their starts and ends
        shared.mkdir(exist_ok=True)
        env = ciq_env(settings, AUTOSCALE_KEEPALIVE="2", CIQ_BOX_SHARED=str(shared))
        env["CIQ_DATA_DIR"] = str(tmp_path / f"data-{name}")
        cmd = [sys.executable, "-m", "celery", "-A", "ciq", "worker", "--loglevel=INFO",
               f"--autoscale={autoscale}", f"--hostname={name}@%h", "--without-mingle",
               "--without-gossip"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        wait_for(lambda: " ready." in log.read_text() or proc.poll() is not None, 30,
                 f"worker {name}")
        assert proc.poll() is None, log.read_text()[-3000:]
        return proc, log

    yield start
    for proc in started:
        stop_process(proc)


@pytest.mark.slow
def test_autoscale_grows_and_shrinks_the_pool_and_housekeeping_still_reruns(
    autoscaled, make_repo, settings: Settings, store: Store, tmp_path: Path
):
    # Given an autoscaled worker (1 to 3 pool processes) and three commits of 4 s each
    events = tmp_path / "shared" / "events"
    proc, log = autoscaled("a1", "3,1")
    assert len(children(proc.pid)) == 1
    repos = [make_repo({"tests/test_s.py": sleeping_test(events, 4)}) for _ in range(3)]

    # When they are enqueued together
    for r in repos:
        assert run_ciq(settings, "enqueue", str(r.path)).returncode == 0

    # Then the pool grows and runs them at the same time, and shrinks when idle again
    for r in repos:
        assert wait_report(store, str(r.path), r.head(), timeout=90).status == "passed"
    assert most_at_once(events) >= 2
    assert "Scaling up" in log.read_text()
    wait_for(lambda: "Scaling down" in log.read_text(), 30, "the pool to shrink")

    # And when the autoscaled worker dies mid-run (SIGKILL, pool and tests too), the
    # Housekeeping bootstep of another autoscaled worker reruns the commit in seconds,
    # long before the broker's visibility timeout would hand the message back
    slow = make_repo({"tests/test_s.py": sleeping_test(events, 3)})
    assert run_ciq(settings, "enqueue", str(slow.path)).returncode == 0
    wait_for(lambda: f"start {slow.head()}" in events.read_text(), 60, "the run to start")
    os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: not alive(proc.pid), 10, "the worker to die")
    died = time.monotonic()
    autoscaled("a2", "3,1")
    report = wait_report(store, str(slow.path), slow.head(), timeout=60)
    assert report.status == "passed" and report.attempts == 2
    assert time.monotonic() - died < 30 < settings.visibility_timeout


# -- CIQ_RUN_AS under the unit's capability bounding set -----------------------------------

def run_as_capabilities() -> list[str]:
    """The CapabilityBoundingSet= that the worker unit's CIQ_RUN_AS drop-in gives."""
    text = (DEPLOY / "systemd" / "ciq-worker@.service").read_text()
    m = re.search(r"^#\s+CapabilityBoundingSet=(.+)$", text, re.MULTILINE)
    assert m, "the CIQ_RUN_AS drop-in of ciq-worker@.service names no capabilities"
    return m.group(1).split()


RUN_AS_TEST = """\
import os, pwd

def test_runs_as_nobody():
    assert pwd.getpwuid(os.geteuid()).pw_name == "nobody"
"""


@pytest.mark.slow
def test_run_as_works_with_the_capabilities_the_unit_leaves_a_root_worker(
    system_venv: Path, worker, make_repo, store: Store, settings: Settings, tmp_path: Path
):
    import tempfile

    if os.geteuid() != 0:
        pytest.fail("this test needs root, as CIQ_RUN_AS does")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv is missing: apt-get install -y util-linux")
    # Given a root worker bounded as the drop-in bounds it (CapabilityBoundingSet= and
    # NoNewPrivileges=yes, played by setpriv), its tests run as nobody
    caps = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in run_as_capabilities())
    wrapper = tmp_path / "bounded-python"
    wrapper.write_text(f"#!/bin/sh\nexec setpriv --nnp --bounding-set -all,{caps} "
                       f"{system_venv / 'bin' / 'python'} \"$@\"\n")
    wrapper.chmod(0o755)
    data = Path(tempfile.mkdtemp(prefix="ciq-runas-"))
    data.chmod(0o711)
    try:
        repo = make_repo({"tests/test_who.py": RUN_AS_TEST})
        w = worker(python=str(wrapper), data_dir=data, CIQ_RUN_AS="nobody",
                   CIQ_ENV_DIR=str(data / "envs"))
        status = Path(f"/proc/{w.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status
        bounding = re.search(r"CapBnd:\s+([0-9a-f]+)", status)
        assert bounding and bin(int(bounding.group(1), 16)).count("1") == len(caps.split(","))

        # When a commit is enqueued, then its tests ran as nobody and passed
        assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
        report = wait_report(store, str(repo.path), repo.head(), timeout=90)
        assert report.status == "passed", report.output
    finally:
        shutil.rmtree(data, ignore_errors=True)
