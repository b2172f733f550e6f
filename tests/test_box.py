"""Hostile commits against the box, run by real `celery -A ciq worker` processes with a
secret in their environment: each probe is a test inside the commit, trying what an
attacker who can push would try. The commit's report says whether the box held (every
probe asserts the attack failed), and the host is checked from outside afterwards."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest

from ciq.dispatch import Sender
from ciq.runner.runs import remove_tree
from ciq.settings import Settings
from ciq.store import Store

from .helpers import PASSING, wait_for, wait_report

pytestmark = pytest.mark.slow

SECRET = "s3cret-webhook-key-of-the-worker"


def _probes(data: str, port: int, marker: str, host_tmp: str) -> str:
    return textwrap.dedent(f'''
        import os, socket, subprocess, sys, time
        import pytest

        DATA = {data!r}

        def test_no_route_to_the_broker():
            for host in ("127.0.0.1", "localhost"):
                with pytest.raises(OSError):
                    socket.create_connection((host, {port}), timeout=2)

        def test_no_secret_in_any_process():
            assert not [k for k in os.environ if k.startswith(("CIQ_", "CELERY_"))]
            for name in os.listdir("/proc"):
                if name.isdigit():
                    for part in ("environ", "cmdline"):
                        try:
                            blob = open(f"/proc/{{name}}/{{part}}", "rb").read()
                        except OSError:
                            continue
                        assert {SECRET!r}.encode() not in blob
                        assert b"celery" not in blob

        def test_no_worker_process_is_visible():
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            assert len(pids) < 10, pids

        def test_nothing_of_the_data_dir_but_this_run():
            assert not os.path.exists(os.path.join(DATA, "outbox"))
            runs = os.listdir(os.path.join(DATA, "runs"))
            assert len(runs) == 1 and os.getcwd().startswith(os.path.join(DATA, "runs", runs[0]))
            for path in (os.path.join(DATA, "evil"), os.path.join(DATA, "runs", "evil"),
                         os.path.join(DATA, "outbox", "evil"), "/etc/ciq-evil", "/usr/evil"):
                with pytest.raises(OSError):
                    open(path, "w").write("x")

        def test_the_mirror_is_read_only_and_git_works():
            top = subprocess.run(["git", "rev-parse", "--git-common-dir"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert os.path.isdir(os.path.join(top, "objects"))
            with pytest.raises(OSError):
                open(os.path.join(top, "evil"), "w").write("x")
            mirrors = os.listdir(os.path.dirname(top))
            assert [m for m in mirrors if m.endswith(".git")] == [os.path.basename(top)]

        def test_home_is_the_runs_own():
            home = os.environ["HOME"]
            assert home.startswith(DATA) and "runs" in home
            open(os.path.join(home, ".bashrc"), "w").write("mine")
            with pytest.raises(OSError):
                open("/root/.evil", "w").write("x")

        def test_a_link_in_the_checkout_leads_nowhere():
            for link in ("leak-outbox", "leak-etc"):
                assert os.path.islink(link)
                with pytest.raises(OSError):
                    os.listdir(link) if link == "leak-outbox" else open(link).read()

        def test_tmp_is_private_and_small():
            assert not os.path.exists({host_tmp!r})
            with pytest.raises(OSError):
                with open("/tmp/fill", "wb") as fh:
                    for _ in range(256):
                        fh.write(b"x" * (1 << 20))

        def test_a_daemon_is_left_behind():
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-c",
                                              "import time; time.sleep(600)", {marker!r}])
                os._exit(0)
            time.sleep(0.2)
    ''')


def _left_running(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture
def host_dirs(tmp_path: Path):
    """A data folder where a real one would be (not under /tmp, which the box has its
    own of), and a file in the host's /tmp."""
    data = Path("/var/tmp") / f"ciq-box-{uuid.uuid4().hex[:12]}"
    host_tmp = Path("/tmp") / f"ciq-host-file-{uuid.uuid4().hex[:12]}"
    host_tmp.write_text("the host's")
    yield data, host_tmp
    host_tmp.unlink()
    remove_tree(data)


def test_every_probe_of_a_hostile_commit_finds_the_box_holding(
    make_repo, worker, store: Store, settings: Settings, redis_server, host_dirs
):
    # Given a worker with a secret, and a commit full of attacks
    data, host_tmp = host_dirs
    marker = f"ciq-left-behind-{uuid.uuid4().hex}"
    repo = make_repo(PASSING)
    (repo.path / "leak-outbox").symlink_to(data / "outbox")
    (repo.path / "leak-etc").symlink_to("/etc/ciq/ciq.env")
    probes = _probes(str(data), redis_server.port, marker, str(host_tmp))
    sha = repo.commit({"tests/test_probes.py": probes}, "probes")
    worker(data_dir=data, CIQ_WEBHOOK_SECRET=SECRET, CIQ_TMP_MB="64")
    Sender.for_store(settings, store).submit(str(repo.path), sha, "main")
    report = wait_report(store, str(repo.path), sha, timeout=120)
    # Then every probe passed: each attack failed inside the box
    failed = {t.id: t.message[:300] for t in report.tests if t.outcome != "passed"}
    assert report.status == "passed" and report.summary.passed == 10, (failed, report.message,
                                                                       report.output[-2000:])
    # And from outside: nothing written where it should not be, nothing left running
    assert not (data / "evil").exists() and not (data / "runs" / "evil").exists()
    assert host_tmp.read_text() == "the host's"
    wait_for(lambda: not _left_running(marker), 10, "the daemon to die with its run")


def test_limits_end_a_run_with_a_clear_report_and_the_worker_goes_on(
    make_repo, worker, store: Store, settings: Settings
):
    repo = make_repo(PASSING)
    bomb = repo.commit({"tests/test_ok.py": textwrap.dedent("""
        import os

        def test_fork_bomb():
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
    """)}, "fork bomb")
    hog = repo.commit({"tests/test_ok.py": textwrap.dedent("""
        def test_memory_hog():
            blocks = [bytearray(64 << 20) for _ in range(64)]
            assert blocks
    """)}, "memory hog")
    fine = repo.commit(PASSING, "fine again")
    worker(CIQ_PROCESS_LIMIT="64", CIQ_MEMORY_LIMIT_MB="512")
    sender = Sender.for_store(settings, store)
    for sha in (bomb, hog, fine):
        sender.submit(str(repo.path), sha, "main")
    r = wait_report(store, str(repo.path), bomb, timeout=120)
    assert (r.status, "process limit" in r.message) == ("error", True), r.message
    r = wait_report(store, str(repo.path), hog, timeout=120)
    assert (r.status, "memory limit" in r.message) == ("error", True), (r.message, r.output)
    assert wait_report(store, str(repo.path), fine, timeout=120).status == "passed"


def test_junk_results_and_a_huge_test_name_give_a_clear_report(
    make_repo, worker, store: Store, settings: Settings
):
    repo = make_repo(PASSING)
    junk = repo.commit({"ciq.toml": 'test = "python make_junit.py"\n', "make_junit.py": (
        "import os\n"
        "with open(os.environ['JUNIT_XML'], 'w') as fh:\n"
        "    fh.write('<testsuite>')\n"
        "    for i in range(1_000_000):\n"
        "        fh.write(f'<testcase classname=\"t\" name=\"t{i}\"/>')\n"
        "    fh.write('</testsuite>')\n")}, "a million rows")
    long_name = repo.commit({"ciq.toml": "", "tests/test_ok.py": textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("x", ["y" * 10_000_000], ids=lambda v: v)
        def test_long(x):
            assert x
    """)}, "a 10 MB test name")
    worker()
    sender = Sender.for_store(settings, store)
    for sha in (junk, long_name):
        sender.submit(str(repo.path), sha, "main")
    r = wait_report(store, str(repo.path), junk, timeout=180)
    assert r.status == "error" and "more than 100000 test cases" in r.message, r.message
    r = wait_report(store, str(repo.path), long_name, timeout=180)
    assert r.status == "passed" and r.summary.passed == 1, (r.message, r.output[-1500:])
    assert len(r.tests[0].id) <= 1000


def test_a_commit_cannot_run_code_outside_its_box(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    # Given an "interpreter" that would leave a mark and read the worker's secret
    evil = tmp_path / "evil-python"
    mark = tmp_path / "evil-ran"
    evil.write_text(f"#!/bin/sh\nenv > {mark}\necho 3.11.0\n")
    evil.chmod(0o755)
    repo = make_repo(PASSING)
    named = repo.commit({"ciq.toml": f'python = "{evil}"\n'}, "python is a script")
    preload = repo.commit({"ciq.toml": '[env]\nLD_PRELOAD = "./evil.so"\n',
                           "evil.so": "not a library"}, "LD_PRELOAD from the commit")
    worker(CIQ_WEBHOOK_SECRET=SECRET)
    sender = Sender.for_store(settings, store)
    for sha in (named, preload):
        sender.submit(str(repo.path), sha, "main")
    r = wait_report(store, str(repo.path), named, timeout=120)
    # Then the script never ran outside (nor inside: its folder is no Python's)
    assert r.status == "error" and "'python'" in r.message, r.message
    assert not mark.exists()
    # And the commit's LD_PRELOAD reaches its tests only: the run goes on as usual
    r = wait_report(store, str(repo.path), preload, timeout=120)
    assert r.status == "passed", (r.message, r.output[-1500:])


SETUP_PROBE = '''\
import os, socket, sys, urllib.request
port = int(sys.argv[1])
for host in ("127.0.0.1", "localhost"):
    try:
        socket.create_connection((host, port), timeout=2).close()
        sys.exit(f"reached the broker at {host}:{port}")
    except OSError:
        pass
proxy = os.environ["HTTPS_PROXY"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
try:
    opener.open(f"http://127.0.0.1:{port}/", timeout=5)
    sys.exit("the build proxy let a setup step reach the broker")
except urllib.error.HTTPError as exc:
    assert exc.code == 403, exc.code
print("setup probe: the broker is out of reach")
'''


def test_a_setup_step_gets_the_package_index_and_not_the_broker(
    make_repo, worker, store: Store, settings: Settings, redis_server
):
    repo = make_repo({**PASSING, "probe_setup.py": SETUP_PROBE, "ciq.toml": (
        f'setup = ["python probe_setup.py {redis_server.port}", "pip --version"]\n')})
    worker()
    Sender.for_store(settings, store).submit(str(repo.path), repo.head(), "main")
    r = wait_report(store, str(repo.path), repo.head(), timeout=180)
    assert r.status == "passed", (r.message, r.output[-2000:])
