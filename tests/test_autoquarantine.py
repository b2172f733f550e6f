"""The automatic quarantine step of the workers' housekeeping, against a real Redis and
the real Store: reports stored as workers store them, entries read back from Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ciq import flaky
from ciq.quarantine import Policy, entry
from ciq.report import Attempt, Report, Summary, TestResult
from ciq.store import Store
from ciq.store.quarantine import Quarantine
from ciq.worker.housekeeping import auto_quarantine, quarantine_repo

from .helpers import REPO, claim

#: The day of the scripted history: yesterday, so that entries made "then" are in force
#: for Redis readers that use the real time.
T0 = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
FLAKE3, FLAKE2 = "tests/test_a.py::test_flaky_often", "tests/test_a.py::test_flaky_twice"
BROKEN, FIXED = "tests/test_b.py::test_regression", "tests/test_b.py::test_fixed_later"
OK = "tests/test_c.py::test_ok"
OWNER = "dev@example.org"


class Commits:
    """Stores one judged report per commit, as a worker does: its failing tests rerun,
    "flaky" ones passing on a rerun, "broken" ones failing every rerun."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.n = 0

    def add(self, when: datetime, **how: str) -> str:
        self.n += 1
        commit = claim(self.store, self.n)
        tests = tuple(TestResult(t, "failed" if h in ("flaky", "broken") else h, 0.2,
                                 "AssertionError" if h in ("flaky", "broken") else "")
                      for t, h in how.items())
        raw = Report(repo=REPO, commit=commit, branch="main", exit_code=1,
                     status="failed" if any(t.outcome == "failed" for t in tests) else "passed",
                     tests=tests, summary=Summary.of(list(tests)), worker="w1@host",
                     finished_at=when.isoformat(timespec="milliseconds"))
        reruns = {t: [Attempt("passed" if h == "flaky" else "failed", 0.2, "", "w2@host",
                              "alone")] * 3 for t, h in how.items() if h in ("flaky", "broken")}
        assert self.store.finish(flaky.judge(raw, reruns, info={"tests": len(reruns),
                                                                 "runs": 3, "seconds": 0.6}))
        return commit


def history(store: Store) -> Commits:
    """Given 6 commits of T0's day (oldest first): FLAKE3 flaky on 3, FLAKE2 on 2, BROKEN
    a deterministic regression from the third on, FIXED broken on two and fixed."""
    c = Commits(store)
    plan = [dict(FLAKE3="flaky", FLAKE2="flaky", BROKEN="passed", FIXED="passed"),
            dict(FLAKE3="passed", FLAKE2="passed", BROKEN="passed", FIXED="broken"),
            dict(FLAKE3="flaky", FLAKE2="passed", BROKEN="broken", FIXED="broken"),
            dict(FLAKE3="passed", FLAKE2="flaky", BROKEN="broken", FIXED="passed"),
            dict(FLAKE3="flaky", FLAKE2="passed", BROKEN="broken", FIXED="passed"),
            dict(FLAKE3="passed", FLAKE2="passed", BROKEN="broken", FIXED="passed")]
    names = {"FLAKE3": FLAKE3, "FLAKE2": FLAKE2, "BROKEN": BROKEN, "FIXED": FIXED}
    for i, tests in enumerate(plan):
        c.add(T0 + timedelta(minutes=i), **{names[k]: v for k, v in tests.items()})
    return c


def configure(store: Store, **policy: object) -> None:
    """The operator's settings of REPO, as `ciq observe --config` stores them."""
    store.set_repo_config(REPO, "ops.toml", {"url": REPO, "quarantine": policy})


def test_suggest_mode_quarantines_nothing_and_reports_the_suggestions(store: Store) -> None:
    # Given the history and no settings at all (the default mode is "suggest")
    history(store)

    # When a housekeeping pass runs
    done = auto_quarantine(store, now=T0 + timedelta(hours=1))

    # Then only the test flaky on 3 distinct commits is suggested, and nothing is muted
    changes = done[REPO]
    assert changes.mode == "suggest"
    assert [(s.test, s.flaky, s.window) for s in changes.suggested] == [(FLAKE3, 3, 6)]
    assert changes.added == [] and changes.released == []
    assert Quarantine(store).entries(REPO) == []
    assert Quarantine(store).recorded(REPO) == []


def test_auto_mode_quarantines_only_a_test_flaky_on_three_distinct_commits(
    store: Store
) -> None:
    history(store)
    configure(store, mode="auto")
    when = T0 + timedelta(hours=1)

    changes = quarantine_repo(store, REPO, now=when)

    # Then FLAKE3 is quarantined by ciq, with the reason and the default expiry; FLAKE2
    # (2 commits), the deterministic regression and the break-then-fix are not
    assert changes.added == [FLAKE3]
    entries = Quarantine(store).entries(REPO, now=when)
    assert [(e.test, e.owner, e.reason, e.auto) for e in entries] == [
        (FLAKE3, "ciq", "auto: flaky on 3 of the last 6 commits", True)]
    assert entries[0].expires_at == (when + timedelta(days=30)).isoformat(timespec="seconds")
    # And its later failures no longer decide a commit's status (the worker's rule)
    assert set(Quarantine(store).in_force(REPO, now=when)) == {FLAKE3}
    assert [(e["action"], e["test"]) for e in Quarantine(store).recorded(REPO)] == [
        ("quarantined", FLAKE3)]
    # And a second pass changes nothing
    again = quarantine_repo(store, REPO, now=when + timedelta(minutes=1))
    assert again.added == [] and again.suggested == []


def test_auto_mode_leaves_a_persons_entry_and_mode_off_does_nothing(store: Store) -> None:
    history(store)
    mine = entry(FLAKE3, OWNER, "ticket #7", days=3, now=T0 + timedelta(minutes=30))
    Quarantine(store).add(REPO, mine)
    configure(store, mode="auto")
    assert quarantine_repo(store, REPO, now=T0 + timedelta(hours=1)).added == []
    assert Quarantine(store).entries(REPO)[0].owner == OWNER

    Quarantine(store).remove(REPO, FLAKE3)
    configure(store, mode="off")
    changes = quarantine_repo(store, REPO, now=T0 + timedelta(hours=1))
    assert (changes.suggested, changes.added) == ([], [])
    assert Quarantine(store).entries(REPO) == []


def test_an_auto_entry_is_released_after_its_clean_streak_a_manual_one_never(
    store: Store
) -> None:
    # Given FLAKE3 auto-quarantined an hour after the history, OK quarantined by a person
    commits = history(store)
    configure(store, mode="auto", release_after=5)
    made = T0 + timedelta(hours=1)
    assert quarantine_repo(store, REPO, now=made).added == [FLAKE3]
    Quarantine(store).add(REPO, entry(OK, OWNER, "slow on CI", now=made))

    # When both then run clean 4 times: nothing is released yet
    for i in range(4):
        commits.add(made + timedelta(minutes=i + 1), **{FLAKE3: "passed", OK: "passed"})
    assert quarantine_repo(store, REPO, now=made + timedelta(hours=1)).released == []

    # And after the fifth clean run, only the automatic entry is released, with the bound
    commits.add(made + timedelta(minutes=10), **{FLAKE3: "passed", OK: "passed"})
    changes = quarantine_repo(store, REPO, now=made + timedelta(hours=1))
    assert [(r.test, r.clean) for r in changes.released] == [(FLAKE3, 5)]
    assert changes.released[0].bound == pytest.approx(1 - 0.05 ** (1 / 5))
    assert [e.test for e in Quarantine(store).entries(REPO)] == [OK]
    last = Quarantine(store).recorded(REPO)[0]
    assert (last["action"], last["test"]) == ("released", FLAKE3)
    assert last["reason"] == ("auto-released: 0 failures in 5 runs: flake rate below "
                              "45.1 % (95% confidence)")
    # And its old flakes, followed by the clean streak, do not quarantine it again
    assert quarantine_repo(store, REPO, now=made + timedelta(hours=2)).added == []
    # And the person's entry stays however long the streak
    for i in range(6):
        commits.add(made + timedelta(minutes=20 + i), **{FLAKE3: "passed", OK: "passed"})
    quarantine_repo(store, REPO, now=made + timedelta(hours=3))
    assert [e.test for e in Quarantine(store).entries(REPO)] == [OK]


def test_a_failure_while_quarantined_resets_the_streak(store: Store) -> None:
    commits = history(store)
    configure(store, mode="auto", release_after=3)
    made = T0 + timedelta(hours=1)
    quarantine_repo(store, REPO, now=made)
    # Quarantined failures are not rerun: they are stored as plain failures
    for i, how in enumerate(["passed", "passed", "failed", "passed", "passed"]):
        commits.add(made + timedelta(minutes=i + 1), **{FLAKE3: how})
    assert quarantine_repo(store, REPO, now=made + timedelta(hours=1)).released == []
    commits.add(made + timedelta(minutes=9), **{FLAKE3: "passed"})
    assert [r.test for r in quarantine_repo(store, REPO, now=made + timedelta(hours=1)
                                            ).released] == [FLAKE3]


def test_bad_stored_settings_touch_nothing(store: Store) -> None:
    history(store)
    configure(store, mode="sometimes")
    assert quarantine_repo(store, REPO, now=T0 + timedelta(hours=1)).mode == "off"
    assert Quarantine(store).entries(REPO) == []
    assert Policy().mode == "suggest"


def test_a_pass_looks_at_a_bounded_number_of_repositories(store: Store) -> None:
    # Given three repositories with a report each
    for i, repo in enumerate(["/srv/git/a", "/srv/git/b", "/srv/git/c"]):
        commit = claim(store, f"r{i}", repo=repo)
        assert store.finish(Report(repo=repo, commit=commit, branch="main", status="passed"))

    # Then a pass takes at most `limit` of them, each in the default (suggest) mode
    done = auto_quarantine(store, now=T0, limit=2)
    assert len(done) == 2 and {c.mode for c in done.values()} == {"suggest"}
    assert len(auto_quarantine(store, now=T0, limit=5)) == 3
