"""The observer against real repositories and a real Redis (no worker needed)."""

from __future__ import annotations

import signal
import subprocess

from ciq.settings import Settings
from ciq.store import Store

from .helpers import PASSING, run_ciq, wait_for


def observe_once(settings: Settings, repo, *args: str) -> subprocess.CompletedProcess:
    done = run_ciq(settings, "observe", str(repo.path), "--once", *args)
    assert done.returncode == 0, done.stderr
    return done


def test_first_look_tests_the_head_then_every_new_commit_oldest_first(
    settings: Settings, make_repo, store: Store
) -> None:
    repo = make_repo(PASSING)
    repo.commit({"a": "1"}, "second")
    observe_once(settings, repo)
    assert [r["commit"] for r in store.recent(str(repo.path))] == [repo.head()]
    new = [repo.commit({"a": str(i)}, f"c{i}") for i in range(3)]
    observe_once(settings, repo)
    assert [r["commit"] for r in store.recent(str(repo.path))][:3] == list(reversed(new))
    assert [r["subject"] for r in store.recent(str(repo.path), 3)] == ["c2", "c1", "c0"]


def test_latest_only_tests_the_newest_commit_of_a_poll(
    settings: Settings, make_repo, store: Store
) -> None:
    repo = make_repo(PASSING)
    observe_once(settings, repo, "--latest-only")
    for i in range(3):
        repo.commit({"a": str(i)}, f"c{i}")
    observe_once(settings, repo, "--latest-only")
    assert [r["commit"] for r in store.recent(str(repo.path))][0] == repo.head()
    assert len(store.recent(str(repo.path))) == 2


def test_a_force_push_tests_the_new_head_and_says_so(
    settings: Settings, make_repo, store: Store
) -> None:
    repo = make_repo(PASSING)
    base = repo.head()
    repo.commit({"a": "old"}, "to be rewritten")
    observe_once(settings, repo)
    repo.git("reset", "-q", "--hard", base)
    repo.commit({"a": "x"}, "rewritten 1")
    repo.commit({"a": "y"}, "rewritten 2")
    done = observe_once(settings, repo)
    assert "force-pushed" in done.stderr
    assert "enqueued 1 commits" in done.stdout
    assert store.recent(str(repo.path), 1)[0]["commit"] == repo.head()


def test_watched_branches_and_a_missing_branch(
    settings: Settings, make_repo, store: Store
) -> None:
    repo = make_repo(PASSING)
    repo.git("checkout", "-q", "-b", "feature")
    feature = repo.commit({"f": "1"}, "feature work")
    done = observe_once(settings, repo, "--branch", "main", "--branch", "feature",
                        "--branch", "gone")
    assert "no branch 'gone'" in done.stderr
    rows = {r["commit"]: r["branch"] for r in store.recent(str(repo.path))}
    assert rows[feature] == "feature" and len(rows) == 2


def test_the_daemon_stops_cleanly_on_sigterm(settings: Settings, make_repo, observer,
                                             store: Store) -> None:
    repo = make_repo(PASSING)
    proc = observer(str(repo.path), "--interval", "0.2")
    wait_for(lambda: store.position(str(repo.path), "main"), 20, "the first poll")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_the_daemon_survives_a_repository_that_disappears(
    settings: Settings, make_repo, observer, store: Store, tmp_path
) -> None:
    repo = make_repo(PASSING)
    proc = observer(str(repo.path), "--interval", "0.2")
    wait_for(lambda: store.position(str(repo.path), "main"), 20, "the first poll")
    moved = tmp_path / "moved-away"
    repo.path.rename(moved)
    wait_for(lambda: "retrying" in (tmp_path / "observer-0.log").read_text(), 10,
             "the observer to log the error")
    assert proc.poll() is None  # still running
    moved.rename(repo.path)
    sha = repo.commit({"b": "1"}, "after the outage")
    wait_for(lambda: store.position(str(repo.path), "main") == sha, 20, "the next poll")


def test_observe_a_config_file_watches_every_repository_listed(
    settings: Settings, make_repo, store: Store, tmp_path
) -> None:
    first, second = make_repo(PASSING), make_repo(PASSING)
    second.git("checkout", "-q", "-b", "release")
    release = second.commit({"r": "1"}, "on release")
    ops = tmp_path / "ops.toml"
    ops.write_text(f'[[repo]]\nurl = "{first.path}"\n\n'
                   f'[[repo]]\nurl = "{second.path}"\nbranches = ["release"]\n'
                   f'test = "python -m pytest tests -x"\n')
    done = run_ciq(settings, "observe", "--config", str(ops), "--once")
    assert done.returncode == 0, done.stderr
    assert "enqueued 2 commits" in done.stdout
    assert store.recent(str(second.path))[0]["commit"] == release
    assert store.repo_config(str(second.path))[1]["test"] == "python -m pytest tests -x"
    ops.write_text("[[repo]]\nbranches = ['main']\n")
    bad = run_ciq(settings, "observe", "--config", str(ops), "--once")
    assert bad.returncode == 1 and "'url' is required" in bad.stderr
    assert "Traceback" not in bad.stderr
    none = run_ciq(settings, "observe", "--once")
    assert none.returncode == 2 and "--config FILE" in none.stderr
