"""Per-test statistics and the automatic quarantine in `ciq web`: reports stored through
the real Store, read by the real `ciq web` subprocess over HTTP."""

from __future__ import annotations

from datetime import timedelta

from ciq.quarantine import entry
from ciq.stats import release_bound, wilson
from ciq.store import Store
from ciq.store.quarantine import Quarantine
from ciq.worker.housekeeping import quarantine_repo

from .helpers import REPO, RID, XSS, Web
from .test_autoquarantine import BROKEN, FIXED, FLAKE2, FLAKE3, OWNER, T0, configure, history


def test_the_api_gives_each_tests_statistics_and_the_repositorys(web: Web,
                                                                  store: Store) -> None:
    # Given six reported commits (FLAKE3 flaky on 3, FLAKE2 on 2, a regression, a
    # break then fix) and FIXED quarantined by a person
    history(store)
    Quarantine(store).add(REPO, entry(FIXED, OWNER, "ticket #9"))

    data = web.json(f"/api/repos/{RID}/stats")

    # Then each test has its counts, its flake rate with the Wilson interval and more
    assert (data["repo"], data["window"], len(data["commits"])) == (REPO, 6, 6)
    tests = {t["id"]: t for t in data["tests"]}
    flake = tests[FLAKE3]
    assert (flake["runs"], flake["failures"], flake["flakes"]) == (6, 0, 3)
    assert flake["flake_rate"] == 0.5
    assert flake["flake_interval"] == [round(x, 4) for x in wilson(3, 6)]
    assert flake["unstable"] == 0  # a flaky run's outcome is `passed`: no flip
    assert flake["last_flaky"] == data["commits"][1]["commit"]
    assert flake["last_failing"] is None and flake["quarantine"] is None
    assert flake["duration_p50"] == 0.2 and flake["duration_p95"] == 0.2
    assert data["tests"][0]["id"] == FLAKE3  # the flakiest first
    broken = tests[BROKEN]
    assert (broken["failures"], broken["flakes"], broken["unstable"]) == (4, 0, 1)
    assert broken["last_failing"] == data["commits"][0]["commit"]
    fixed = tests[FIXED]
    assert (fixed["failures"], fixed["unstable"], fixed["clean_streak"]) == (2, 2, 3)
    assert fixed["clean_bound"] == round(release_bound(3), 4)
    assert fixed["quarantine"]["owner"] == OWNER and fixed["quarantine"]["auto"] is False
    assert tests[FLAKE2]["flakes"] == 2
    # And the repository: 4 of 6 commits flaked, each rerun cost 0.6 s
    summary = data["summary"]
    assert (summary["commits"], summary["flaky_commits"]) == (6, 4)
    assert summary["flaky_interval"] == [round(x, 4) for x in wilson(4, 6)]
    assert (summary["rerun_commits"], summary["rerun_seconds"]) == (6, 3.6)
    # And the default policy only suggests, the test flaky on 3 distinct commits
    auto = data["quarantine"]
    assert (auto["mode"], auto["flaky_commits"], auto["release_after"]) == ("suggest", 3, 30)
    assert [s["test"] for s in auto["suggestions"]] == [FLAKE3]
    assert auto["suggestions"][0]["reason"] == "auto: flaky on 3 of the last 6 commits"
    assert auto["releases"] == [] and auto["recent"] == []
    # And a smaller window is a query away; a bad one is one line and a 400
    assert web.json(f"/api/repos/{RID}/stats?n=2")["window"] == 2
    bad = web.get(f"/api/repos/{RID}/stats?n=0")
    assert bad.status == 400 and "\n" not in bad.json()["detail"]
    assert web.get("/api/repos/0123456789abcdef/stats").status == 404


def test_the_tests_page_shows_statistics_suggestions_and_automatic_changes(
    web: Web, store: Store
) -> None:
    # Given the history, auto mode, a pass that quarantined FLAKE3 and clean runs after
    commits = history(store)
    configure(store, mode="auto", release_after=3)
    made = T0 + timedelta(hours=1)
    assert quarantine_repo(store, REPO, now=made).added == [FLAKE3]
    for i in range(3):
        commits.add(made + timedelta(minutes=i + 1), **{FLAKE3: "passed", XSS: "passed"})

    page = web.get(f"/repos/{RID}/tests")

    # Then the page has the statistics table, the repository's line and the policy
    assert page.status == 200
    assert 'id="test-stats"' in page.text and 'id="repo-stats"' in page.text
    assert "Automatic quarantine: <strong>auto</strong>" in page.text
    assert "with flakes (44.4 %" in page.text  # 4 of the 9 commits
    # (the streak since it was quarantined: its clean run before does not count)
    assert "clean ×3: flake rate &lt; 63.2 %" in page.text  # 1 - 0.05 ** (1 / 3)
    assert 'id="releases"' in page.text
    assert "auto-released: 0 failures in 3 runs: flake rate below 63.2 %" in page.text
    assert "quarantined tests/test_a.py::test_flaky_often (auto: flaky on 3 of the last 6" \
        in page.text
    assert XSS not in page.text  # test ids are escaped
    # And the API agrees: the release is due, with its bound
    due = web.json(f"/api/repos/{RID}/stats")["quarantine"]["releases"]
    assert [(r["test"], r["clean_runs"]) for r in due] == [(FLAKE3, 3)]
    assert due[0]["flake_rate_bound"] == round(release_bound(3), 4)
    shown = {t["id"]: t for t in web.json(f"/api/repos/{RID}/stats")["tests"]}[FLAKE3]
    assert (shown["clean_streak"], shown["quarantine"]["clean_runs"]) == (4, 3)
    assert shown["quarantine"]["auto"] is True
    # And the repository page links to the statistics
    assert f'href="/repos/{RID}/tests#stats"' in web.get(f"/repos/{RID}").text
