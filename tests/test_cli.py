"""The `ciq` command as a user types it: clear one-line errors, readable output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ciq.report import Report, Summary, TestResult
from ciq.settings import Settings
from ciq.store import Store

from .helpers import PASSING, assert_one_line_error, free_port, run_ciq


def test_enqueue_a_path_that_is_not_there(settings: Settings) -> None:
    assert_one_line_error(run_ciq(settings, "enqueue", "/no/such/repo"), "no such directory")


def test_enqueue_a_folder_that_is_not_a_repository(settings: Settings, tmp_path: Path) -> None:
    assert_one_line_error(run_ciq(settings, "enqueue", str(tmp_path)), "not a git repository")


def test_enqueue_an_unknown_commit(settings: Settings, make_repo) -> None:
    repo = make_repo(PASSING)
    done = run_ciq(settings, "enqueue", str(repo.path), "0123456789abcdef0123456789abcdef01234567")
    assert_one_line_error(done, "not a commit")


def test_a_revision_shaped_like_an_option_never_reaches_git(
    settings: Settings, make_repo, tmp_path: Path
) -> None:
    repo = make_repo(PASSING)
    pwned = tmp_path / "pwned"
    for rev in (f"--output={pwned}", "--upload-pack=touch " + str(pwned)):
        assert_one_line_error(run_ciq(settings, "enqueue", str(repo.path), "--", rev),
                              "not a valid revision")
    assert not pwned.exists()


def test_a_repository_shaped_like_an_option(settings: Settings) -> None:
    assert_one_line_error(run_ciq(settings, "enqueue", "--", "--upload-pack=x"),
                          "not a repository")


def test_observe_once_on_a_folder_that_is_not_a_repository(
    settings: Settings, tmp_path: Path
) -> None:
    done = run_ciq(settings, "observe", str(tmp_path), "--once")
    assert_one_line_error(done, str(tmp_path), "git fetch failed")


def test_observe_once_enqueues_the_head(settings: Settings, make_repo, store: Store) -> None:
    repo = make_repo(PASSING)
    done = run_ciq(settings, "observe", str(repo.path), "--once")
    assert done.returncode == 0, done.stderr
    assert "enqueued 1 commits" in done.stdout
    assert store.commit(str(repo.path), repo.head())["subject"] == "initial"
    again = run_ciq(settings, "observe", str(repo.path), "--once")
    assert "enqueued 0 commits" in again.stdout


def test_report_of_a_bad_or_unknown_sha(settings: Settings, make_repo) -> None:
    repo = make_repo(PASSING)
    assert_one_line_error(run_ciq(settings, "report", str(repo.path), "xyz!"),
                          "not a commit id")
    assert_one_line_error(run_ciq(settings, "report", str(repo.path), "abcdef"),
                          "has no commits")
    done = run_ciq(settings, "report", str(repo.path), "abcd", "--json", "--junit")
    assert_one_line_error(done, "choose one")


def test_unreachable_redis_is_one_line(settings: Settings) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gone = Settings(broker_url=dead, result_backend=dead, data_dir=settings.data_dir)
    assert_one_line_error(run_ciq(gone, "status"), "cannot reach Redis")


def test_a_bad_setting_is_one_line(settings: Settings) -> None:
    bad = Settings(broker_url=settings.broker_url, result_backend=settings.result_backend,
                   data_dir=settings.data_dir)
    import subprocess
    import sys

    from .helpers import ciq_env

    done = subprocess.run([sys.executable, "-m", "ciq", "status"],
                          env=ciq_env(bad, CIQ_TIME_LIMIT="forever"), capture_output=True,
                          text=True)
    assert_one_line_error(done, "CIQ_TIME_LIMIT")


@pytest.fixture
def reported(store: Store, make_repo) -> tuple[str, str]:
    repo = make_repo(PASSING)
    sha = repo.head()
    store.claim(str(repo.path), sha, "main", {"subject": "add <b>bold</b> \x1b[31mred",
                                              "author": "Dev"})
    tests = (TestResult("tests/test_a.py::test_ok", "passed", 0.01),
             TestResult("tests/test_a.py::test_bad", "failed", 0.02, "AssertionError: nope"))
    store.finish(Report(repo=str(repo.path), commit=sha, status="failed", branch="main",
                        tests=tests, summary=Summary.of(list(tests)), duration=1.5,
                        worker="w1@host", output="\x1b]0;evil title\x07 tail"))
    return str(repo.path), sha


def test_status_table_and_json(settings: Settings, reported: tuple[str, str]) -> None:
    repo, sha = reported
    table = run_ciq(settings, "status", repo)
    assert table.returncode == 0
    row = table.stdout.splitlines()[2]
    assert row.split()[:6] == [sha[:12], "main", "failed", "1", "1", "1.5s"]
    assert "\x1b" not in table.stdout  # no escape sequences from a commit message
    rows = json.loads(run_ciq(settings, "status", "--json").stdout)
    assert rows[0]["commit"] == sha and rows[0]["summary"]["failed"] == 1


def on_a_terminal(settings: Settings, *args: str) -> str:
    """What `ciq ARGS` prints to a real terminal (a pseudo-terminal), as it would there."""
    import pty
    import subprocess
    import sys

    from .helpers import ciq_env

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ciq", *args], env=ciq_env(settings),
                                stdout=follower, stderr=follower, close_fds=True)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) in (0, 1)
    finally:
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_colour_and_a_pipe_plain_text(settings: Settings, reported) -> None:
    repo, sha = reported
    table = on_a_terminal(settings, "status", repo)
    assert "\x1b[31mfailed" in table  # the status in red
    assert "\x1b[31mred" not in table  # but not the commit's own escape sequence
    text = on_a_terminal(settings, "report", repo, sha)
    assert "\x1b[31m\x1b[1mFAILED\x1b[0m" in text and "evil title" in text
    assert "\x1b]0;" not in text
    piped = run_ciq(settings, "status", repo).stdout + run_ciq(settings, "report", repo,
                                                                sha).stdout
    assert "\x1b" not in piped


def test_report_text_shows_the_failure_first(settings: Settings, reported) -> None:
    repo, sha = reported
    done = run_ciq(settings, "report", repo, sha[:7])
    assert done.returncode == 0
    assert done.stdout.startswith("FAILED  " + sha)
    assert "FAILED tests/test_a.py::test_bad" in done.stdout
    assert "AssertionError: nope" in done.stdout
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    as_json = json.loads(run_ciq(settings, "report", repo, sha, "--json").stdout)
    assert as_json["status"] == "failed" and as_json["summary"]["total"] == 2


def test_enqueue_records_the_branch_and_the_subject(settings: Settings, make_repo,
                                                      store: Store) -> None:
    repo = make_repo(PASSING, message="first line\n\nbody")
    repo.git("checkout", "-q", "-b", "topic")
    by_sha = repo.commit({"x": "0"}, "named by its sha")
    topic = repo.commit({"x": "1"}, "on topic")
    for rev, branch in ((by_sha[:10], ""), (None, "topic"), ("main", "main")):
        done = run_ciq(settings, "enqueue", str(repo.path), *([rev] if rev else []))
        assert done.returncode == 0, done.stderr
        sha = done.stdout.strip()
        assert store.commit(str(repo.path), sha)["branch"] == branch
    assert store.commit(str(repo.path), topic)["subject"] == "on topic"
    again = run_ciq(settings, "enqueue", str(repo.path), "main")
    assert again.returncode == 0 and "enqueued before" in again.stderr


def test_enqueue_with_a_separate_broker_goes_through_redis_py(
    settings: Settings, make_repo, store: Store
) -> None:
    # Given a broker in another database of the server than the results backend
    broker = settings.broker_url.rsplit("/", 1)[0] + "/1"
    split = Settings(broker_url=broker, result_backend=settings.result_backend,
                     data_dir=settings.data_dir)
    repo = make_repo(PASSING)
    done = run_ciq(split, "enqueue", str(repo.path))
    assert done.returncode == 0, done.stderr
    # Then the message is in the broker's database and the claim is marked sent
    import redis

    assert redis.Redis.from_url(broker).llen("ciq") == 1
    assert store.client.llen("ciq") == 0 and store.unsent(older_than=0) == []


def test_prune_deletes_only_old_final_reports(settings: Settings, store: Store,
                                              reported: tuple[str, str]) -> None:
    repo, sha = reported
    store.claim(repo, "f" * 40, "main", {})  # queued: never pruned
    assert "pruned 0 reports" in run_ciq(settings, "prune", "--older-than", "1").stdout
    done = run_ciq(settings, "prune", "--older-than", "0", "--dry-run")
    assert "would prune 1 reports" in done.stdout and store.report(repo, sha) is not None
    assert "pruned 1 reports" in run_ciq(settings, "prune", "--older-than", "0").stdout
    assert store.report(repo, sha) is None
    assert [r["commit"] for r in store.recent(repo)] == ["f" * 40]
    assert_one_line_error(run_ciq(settings, "prune", "--older-than", "-1"), "-1")


@pytest.mark.slow
def test_up_once_runs_the_sample_and_stops_everything(settings: Settings, tmp_path: Path
                                                      ) -> None:
    import subprocess
    import sys

    from .helpers import ciq_env

    # Given no broker configured: `ciq up` must start a private Redis of its own
    env = {k: v for k, v in ciq_env(settings).items()
           if k not in ("CIQ_BROKER_URL", "CIQ_RESULT_BACKEND")}
    env["CIQ_DATA_DIR"] = str(tmp_path / "up")
    done = subprocess.run([sys.executable, "-m", "ciq", "up", "--once"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "private Redis at redis://127.0.0.1:" in done.stdout
    assert "PASSED" in done.stdout and "5 passed, 0 failed, 0 errors, 1 skipped" in done.stdout
    # And nothing it started is left running
    marker = str(tmp_path / "up").encode()
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            seen = Path(f"/proc/{pid}/environ").read_bytes() + Path(
                f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in seen and int(pid) != os.getpid():
            leftovers.append(pid)
    assert leftovers == []
    assert_one_line_error(subprocess.run([sys.executable, "-m", "ciq", "up", str(tmp_path)],
                                         env=env, capture_output=True, text=True, timeout=60),
                          "not a git repository")


@pytest.mark.slow
def test_up_serves_the_web_ui_until_ctrl_c(settings: Settings, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    from ciq.processes import stop_process

    from .helpers import ciq_env, wait_for

    env = {k: v for k, v in ciq_env(settings).items()
           if k not in ("CIQ_BROKER_URL", "CIQ_RESULT_BACKEND")}
    env["CIQ_DATA_DIR"] = str(tmp_path / "up")
    log = tmp_path / "up.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ciq", "up"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The sample's report lands, and the web UI it names shows it
        wait_for(lambda: "PASSED" in log.read_text(), 120, "the sample's report")
        url = log.read_text().split("reports on the web at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as page:
            html = page.read().decode()
        assert "sample" in html and "passed" in html
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        stop_process(proc)
    # And the web server went with it
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
