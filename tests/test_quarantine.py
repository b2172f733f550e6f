"""Quarantine: what it does to a report (a pure function), where entries are kept (a
real redis-server) and `ciq quarantine` as an operator types it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ciq.errors import BadInput, NotFound
from ciq.junit import to_junit
from ciq.quarantine import MAX_DAYS, Entry, apply, entry, until
from ciq.report import Report, Summary, TestResult
from ciq.settings import Settings
from ciq.store import Store, keys
from ciq.store.quarantine import Quarantine, muted

from .helpers import (
    REPO,
    assert_one_line_error,
    claim,
    finish,
    free_port,
    run_ciq,
    wait_report,
)

RED = "tests/test_a.py::test_flaky"
OTHER = "tests/test_a.py::test_other"
OK = "tests/test_a.py::test_ok"
OWNER = "dev@example.org"


def report(outcomes: dict[str, str], status: str | None = None, **fields) -> Report:
    tests = tuple(TestResult(i, o, 0.1, "boom" if o != "passed" else "")
                  for i, o in outcomes.items())
    summary = Summary.of(list(tests))
    bad = summary.failed + summary.errors
    defaults = {"exit_code": 1 if bad else 0,
                "message": f"{bad} of {summary.total} tests failed" if bad else ""}
    return Report(repo=REPO, commit="a" * 40, status=status or ("failed" if bad else "passed"),
                  summary=summary, tests=tests, **{**defaults, **fields})


def held(*tests: str, days: int = 30) -> dict[str, Entry]:
    return {t: entry(t, OWNER, "flaky on CI", days) for t in tests}


# -- the pure function --------------------------------------------------------------------

def test_only_quarantined_failures_make_a_passed_report_that_keeps_the_outcomes() -> None:
    # Given a report whose two failing tests (one failed, one error) are both quarantined
    found = report({OK: "passed", RED: "failed", OTHER: "error"})

    # When the quarantine applies
    out = apply(found, held(RED, OTHER))

    # Then it passed, says why, and keeps every test's real outcome and the summary
    assert out.status == "passed"
    assert out.message == "passed, 2 quarantined failures"
    assert [t.outcome for t in out.tests] == ["passed", "failed", "error"]
    assert out.summary == found.summary
    assert set(out.quarantined) == {RED, OTHER}
    assert out.quarantined[RED]["owner"] == OWNER and out.quarantined[RED]["reason"]
    # And applying it again changes nothing more
    assert apply(out, held(RED, OTHER)) == out


def test_one_quarantined_failure_is_singular() -> None:
    out = apply(report({OK: "passed", RED: "failed"}), held(RED))
    assert (out.status, out.message) == ("passed", "passed, 1 quarantined failure")


def test_a_failure_that_is_not_quarantined_still_fails_and_the_others_are_counted_apart(
) -> None:
    out = apply(report({OK: "passed", RED: "failed", OTHER: "failed"}), held(RED))
    assert out.status == "failed"
    assert out.message == "1 of 3 tests failed, and 1 quarantined failure"
    assert set(out.quarantined) == {RED}
    assert apply(out, held(RED)) == out


def test_quarantined_tests_that_pass_are_marked_and_nothing_else_changes() -> None:
    found = report({OK: "passed", RED: "passed"})
    out = apply(found, held(RED, "tests/test_gone.py::test_gone"))
    assert (out.status, out.message) == ("passed", "")
    assert set(out.quarantined) == {RED}  # only tests of this report


@pytest.mark.parametrize("status, message", [
    ("error", "test collection failed or the run was interrupted (pytest exit 2)"),
    ("timeout", "the test run was killed at the time limit"),
    ("error", "chunk 2 of 2 did not report 1 of its 3 tests (t): exit 3"),
])
def test_a_run_error_or_timeout_is_never_muted(status: str, message: str) -> None:
    found = report({OK: "passed", RED: "failed"}, status=status, message=message)
    out = apply(found, held(RED))
    assert (out.status, out.message) == (status, message)
    assert set(out.quarantined) == {RED}


def test_a_failed_run_with_tests_that_did_not_run_or_an_odd_exit_stays_failed() -> None:
    # Fail fast stopped the run: the tests that did not run may fail
    stopped = report({OK: "passed", RED: "failed"}, not_run=("tests/test_b.py::test_b",),
                     message="stopped at the first failing chunk (fail_fast); 1 tests did "
                             "not run")
    out = apply(stopped, held(RED))
    assert out.status == "failed"
    assert out.message.endswith("did not run; 1 quarantined failure")
    # A custom command that exited 3 after its tests failed: something else failed too
    odd = report({OK: "passed", RED: "failed"}, exit_code=3,
                 message="the test command exited with status 3")
    out = apply(odd, held(RED))
    assert out.status == "failed"
    assert out.message == "the test command exited with status 3; 1 quarantined failure"


def test_a_failed_run_without_failing_tests_is_left_alone() -> None:
    found = report({OK: "passed"}, status="failed", exit_code=1,
                   message="the test command exited with status 1")
    assert apply(found, held(OK)).replace(quarantined={}) == found


def test_a_merged_report_muted_in_its_chunks_fails_once_the_entry_is_gone() -> None:
    # A chunk's report was muted when it was stored, the entry was removed before merging
    merged = report({OK: "passed", RED: "failed"}, status="passed", message="",
                    exit_code=None, shards={"count": 2, "chunks": []})
    out = apply(merged, {})
    assert (out.status, out.message) == ("failed", "1 of 2 tests failed")
    # With the entry still in force it passes, saying so
    out = apply(merged, held(RED))
    assert (out.status, out.message) == ("passed", "passed, 1 quarantined failure")


def test_expired_entries_are_not_in_force() -> None:
    now = datetime.now(UTC)
    old = entry(RED, OWNER, "flaky", 1, now=now - timedelta(days=2))
    assert not old.in_force() and not old.prunable()
    assert old.to_dict()["state"] == "expired"
    assert entry(RED, OWNER, "flaky", 1, now=now - timedelta(days=40)).prunable()
    fresh = entry(RED, OWNER, "flaky")
    assert fresh.in_force() and fresh.to_dict()["state"] == "in force"
    assert until(fresh.expires_at) == "in 29d"
    assert until(old.expires_at) == "expired 1d ago"


@pytest.mark.parametrize("test, owner, reason, days, word", [
    ("", OWNER, "r", 30, "empty"),
    (" tests/x.py::t", OWNER, "r", 30, "spaces"),
    ("x" * 1001, OWNER, "r", 30, "1000 characters"),
    ("tests/x.py::t\x1b[31m", OWNER, "r", 30, "printable"),
    (RED, "nobody", "r", 30, "e-mail"),
    (RED, "a@b, c@d", "r", 30, "e-mail"),
    (RED, OWNER, "   ", 30, "reason"),
    (RED, OWNER, "r" * 501, 30, "500"),
    (RED, OWNER, "r", 0, "days"),
    (RED, OWNER, "r", MAX_DAYS + 1, "days"),
])
def test_bad_entries_say_what_is_wrong(test, owner, reason, days, word) -> None:
    with pytest.raises(BadInput, match=word):
        entry(test, owner, reason, days)


def test_junit_marks_quarantined_tests_with_a_property() -> None:
    xml = to_junit(apply(report({OK: "passed", RED: "failed"}), held(RED)))
    assert 'name="ciq.quarantined"' in xml and f"{OWNER} until" in xml
    assert xml.count("<properties>") == 1


def test_old_reports_without_the_field_still_load() -> None:
    data = report({RED: "failed"}).to_dict()
    del data["quarantined"]
    assert Report.from_dict(data).quarantined == {}
    out = apply(report({RED: "failed"}), held(RED))
    assert Report.from_dict(json.loads(json.dumps(out.to_dict()))) == out


# -- the store -------------------------------------------------------------------------

def test_entries_are_added_listed_renewed_and_removed(store: Store) -> None:
    # Given a repository ciq knows
    finish(store, claim(store, 1))
    q = Quarantine(store)

    # When a test is quarantined, then quarantined again
    assert q.add(REPO, entry(RED, OWNER, "flaky", 10)) is True
    assert q.add(REPO, entry(RED, "qa@example.org", "still flaky", 20)) is False

    # Then one entry is listed, the newer one, and it is in force
    [listed] = q.entries(REPO)
    assert (listed.test, listed.owner, listed.reason) == (RED, "qa@example.org", "still flaky")
    assert set(q.in_force(REPO)) == {RED}
    assert q.everywhere() == {REPO: [listed]}

    # And removing it twice: the second time says it is not quarantined
    assert q.remove(REPO, RED).owner == "qa@example.org"
    with pytest.raises(NotFound, match="not quarantined"):
        q.remove(REPO, RED)
    assert q.entries(REPO) == [] and q.everywhere() == {}


def test_a_repository_ciq_does_not_know_has_no_quarantine(store: Store) -> None:
    with pytest.raises(NotFound, match="ciq has no commits of /srv/git/nothing"):
        Quarantine(store).add("/srv/git/nothing", entry(RED, OWNER, "flaky"))


def test_expired_entries_are_listed_as_expired_then_pruned(store: Store) -> None:
    finish(store, claim(store, 1))
    q = Quarantine(store)
    now = datetime.now(UTC)
    q.add(REPO, entry(RED, OWNER, "expired yesterday", 1, now=now - timedelta(days=2)))
    q.add(REPO, entry(OTHER, OWNER, "expired long ago", 1, now=now - timedelta(days=60)))
    q.add(REPO, entry(OK, OWNER, "in force"))

    # An expired entry is not in force, but listed as such; one expired long ago is gone
    assert set(q.in_force(REPO)) == {OK}
    listed = {e.test: e.to_dict()["state"] for e in q.entries(REPO)}
    assert listed == {RED: "expired", OK: "in force"}
    assert not store.client.hexists(keys.quarantine(keys.repo_id(REPO)), OTHER)


def test_a_repository_has_a_bounded_quarantine(store: Store, monkeypatch) -> None:
    import ciq.store.quarantine as stored

    finish(store, claim(store, 1))
    monkeypatch.setattr(stored, "MAX_ENTRIES", 2)
    q = Quarantine(store)
    q.add(REPO, entry(RED, OWNER, "a"))
    q.add(REPO, entry(OTHER, OWNER, "b"))
    with pytest.raises(BadInput, match="2 quarantined tests already"):
        q.add(REPO, entry(OK, OWNER, "c"))
    assert q.add(REPO, entry(RED, OWNER, "renewing one is fine")) is False


def test_muted_applies_the_entries_in_force_and_shrugs_at_a_redis_away(store: Store) -> None:
    finish(store, claim(store, 1))
    Quarantine(store).add(REPO, entry(RED, OWNER, "flaky"))
    red = report({OK: "passed", RED: "failed"})
    assert muted(store, red).status == "passed"
    away = Store.from_url(f"redis://127.0.0.1:{free_port()}/0")
    assert muted(away, red) == red


# -- `ciq quarantine` ------------------------------------------------------------------

def test_cli_add_list_and_remove(settings: Settings, store: Store) -> None:
    finish(store, claim(store, 1))
    # Add
    done = run_ciq(settings, "quarantine", "add", REPO, RED, "--owner", OWNER,
                   "--reason", "flaky on CI, see #12", "--days", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ciq: quarantined {RED} in {REPO} until ")
    # List, as text and as JSON, for the repository and for all
    shown = run_ciq(settings, "quarantine", "list", REPO)
    assert shown.returncode == 0, shown.stderr
    assert RED in shown.stdout and "in 6d" in shown.stdout and "flaky on CI" in shown.stdout
    assert OWNER in shown.stdout
    rows = json.loads(run_ciq(settings, "quarantine", "list", "--json").stdout)
    assert [(r["repo"], r["test"], r["owner"], r["state"]) for r in rows] == [
        (REPO, RED, OWNER, "in force")]
    assert rows[0]["reason"] == "flaky on CI, see #12" and "@" in rows[0]["added_by"]
    expires = datetime.fromisoformat(rows[0]["expires_at"])
    assert timedelta(days=6.9) < expires - datetime.fromisoformat(rows[0]["added_at"]) \
        <= timedelta(days=7)
    # Renew, with the default of 30 days
    again = run_ciq(settings, "quarantine", "add", REPO, RED, "--owner", OWNER,
                    "--reason", "still")
    assert again.stdout.startswith("ciq: renewed the quarantine of")
    # Remove
    gone = run_ciq(settings, "quarantine", "remove", REPO, RED)
    assert gone.returncode == 0 and "released" in gone.stdout, gone.stderr
    assert run_ciq(settings, "quarantine", "list").stdout.strip() == "no quarantined tests"
    assert json.loads(run_ciq(settings, "quarantine", "list", REPO, "--json").stdout) == []


def test_cli_lists_expired_entries_as_expired(settings: Settings, store: Store) -> None:
    finish(store, claim(store, 1))
    Quarantine(store).add(REPO, entry(RED, OWNER, "flaky", 1,
                                      now=datetime.now(UTC) - timedelta(days=3)))
    shown = run_ciq(settings, "quarantine", "list", REPO).stdout
    assert "expired 2d ago" in shown
    rows = json.loads(run_ciq(settings, "quarantine", "list", REPO, "--json").stdout)
    assert rows[0]["state"] == "expired"


@pytest.mark.parametrize("args, words", [
    (["add", REPO, RED, "--owner", "nobody", "--reason", "r"], ["owner", "e-mail"]),
    (["add", REPO, RED, "--owner", OWNER, "--reason", ""], ["reason"]),
    (["add", REPO, RED, "--owner", OWNER, "--reason", "r", "--days", "0"], ["days"]),
    (["add", REPO, RED, "--owner", OWNER, "--reason", "r", "--days", "366"], ["days"]),
    (["add", REPO, RED, "--owner", OWNER, "--reason", "r", "--days", "x"], ["--days"]),
    (["add", REPO, RED, "--reason", "r"], ["--owner"]),
    (["add", REPO, "x" * 1001, "--owner", OWNER, "--reason", "r"], ["1000"]),
    (["add", REPO, "t\x07", "--owner", OWNER, "--reason", "r"], ["printable"]),
    (["add", "/srv/git/unknown", RED, "--owner", OWNER, "--reason", "r"],
     ["/srv/git/unknown", "no such directory"]),
    (["remove", REPO, RED], ["not quarantined"]),
    (["remove", REPO, ""], ["empty"]),
    (["list", "/srv/git/unknown"], ["no such directory"]),
])
def test_cli_bad_input_is_one_line(settings: Settings, store: Store, args, words) -> None:
    finish(store, claim(store, 1))
    assert_one_line_error(run_ciq(settings, "quarantine", *args), *words)


def test_cli_a_repository_ciq_never_saw_is_refused(settings: Settings, make_repo) -> None:
    path = str(make_repo({"tests/test_a.py": "def test_a(): pass\n"}).path)
    for args in (["add", path, RED, "--owner", OWNER, "--reason", "r"], ["remove", path, RED],
                 ["list", path]):
        assert_one_line_error(run_ciq(settings, "quarantine", *args),
                              f"ciq has no commits of {path}")


def test_cli_report_marks_the_quarantined_failure(settings: Settings, store: Store) -> None:
    commit = claim(store, 1)
    Quarantine(store).add(REPO, entry(RED, OWNER, "flaky on CI"))
    shown = apply(report({OK: "passed", RED: "failed"}).replace(commit=commit),
                  Quarantine(store).in_force(REPO))
    assert store.finish(shown)
    text = run_ciq(settings, "report", REPO, commit[:12]).stdout
    assert text.startswith("PASSED") and "passed, 1 quarantined failure" in text
    assert f"FAILED (quarantined) {RED}" in text and "flaky on CI" in text


# -- end to end: real workers --------------------------------------------------------------

def enqueue(settings: Settings, path: str) -> str:
    done = run_ciq(settings, "enqueue", path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def quarantine_cli(settings: Settings, path: str, test: str) -> None:
    done = run_ciq(settings, "quarantine", "add", path, test, "--owner", OWNER,
                   "--reason", "fails on purpose")
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_quarantined_failing_test_leaves_its_commit_passed_and_others_still_fail(
    make_repo, worker, store: Store, settings: Settings
) -> None:
    # Given a repository with an always-failing test, its head enqueued (no worker yet)
    repo = make_repo({"tests/test_a.py": "def test_ok():\n    assert True\n\n"
                                         "def test_flaky():\n    assert False, 'always'\n"})
    path = str(repo.path)
    first = enqueue(settings, path)

    # When an operator quarantines that test, and a later commit adds another failing one
    quarantine_cli(settings, path, RED)
    repo.commit({"tests/test_b.py": "def test_new():\n    assert 1 == 2\n"}, "add red b")
    second = enqueue(settings, path)
    worker()

    # Then the first commit passed, saying so, and the test's outcome is still `failed`
    muted = wait_report(store, path, first, 180)
    assert muted.status == "passed", muted.message
    assert muted.message == "passed, 1 quarantined failure"
    outcomes = {t.id: t.outcome for t in muted.tests}
    assert outcomes == {OK: "passed", RED: "failed"}
    assert set(muted.quarantined) == {RED}
    assert muted.summary.failed == 1
    shown = json.loads(run_ciq(settings, "report", path, first, "--json").stdout)
    assert shown["status"] == "passed" and RED in shown["quarantined"]
    # And so do the commit's listing and `ciq status`
    assert store.commit(path, first)["status"] == "passed"
    # And the commit with a failure that is not quarantined still fails
    red = wait_report(store, path, second, 120)
    assert red.status == "failed"
    assert red.message == "1 of 3 tests failed, and 1 quarantined failure"
    assert {t.id: t.outcome for t in red.tests}["tests/test_b.py::test_new"] == "failed"
    assert store.branch_state(path)["main"]["status"] == "failed"


@pytest.mark.slow
def test_a_quarantined_failure_does_not_stop_a_fail_fast_sharded_run(
    make_repo, worker, store: Store, settings: Settings
) -> None:
    # Given a fail-fast sharded repository whose longest test (the first chunk) fails
    red = "tests/test_red.py::test_red"
    files = {"tests/test_red.py": "import time\n\ndef test_red():\n    time.sleep(0.3)\n"
                                  "    assert False\n",
             **{f"tests/test_s{i}.py": f"def test_{i}():\n    assert True\n" for i in range(3)},
             "ciq.toml": 'shard = "always"\nfail_fast = true\n'}
    repo = make_repo(files)
    path = str(repo.path)
    store.client.hset(keys.durations(keys.repo_id(path)), mapping={
        red: 30, **{f"tests/test_s{i}.py::test_{i}": 3 for i in range(3)}})
    sha = enqueue(settings, path)

    # When the failing test is quarantined before a worker takes the commit
    quarantine_cli(settings, path, red)
    worker("w1")

    # Then every chunk ran (no fail-fast stop) and the merged report passed
    report = wait_report(store, path, sha, 180)
    assert report.shards["count"] >= 2, report.shards
    assert report.status == "passed", report.message
    assert report.message == "passed, 1 quarantined failure"
    assert report.not_run == ()
    assert {t.id: t.outcome for t in report.tests}[red] == "failed"
    assert len(report.tests) == 4 and set(report.quarantined) == {red}
