"""The pure statistics of ciq.stats and the automatic quarantine's policy: intervals
checked against published values, suggestions and releases on scripted histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ciq.errors import ConfigError
from ciq.quarantine import Entry, Policy, auto_entry, entry
from ciq.repoconfig import RepoConfig, policy_of
from ciq.report import Attempt, Report, Summary, TestResult
from ciq.stats import (
    bound_text,
    flips,
    per_test,
    percentile,
    release_bound,
    releases,
    repo_stats,
    suggestions,
    wilson,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
FLAKE, OK, BROKEN = "t.py::test_flake", "t.py::test_ok", "t.py::test_broken"


def result(test: str, how: str, duration: float = 0.1) -> TestResult:
    """A test as a judged report holds it: "flaky" failed then passed when rerun,
    "confirmed" failed every rerun; else the plain outcome."""
    if how == "flaky":
        runs = (Attempt("failed", duration, "boom"), Attempt("passed", duration, "", kind="alone"))
        return TestResult(test, "passed", duration, "flaky: failed 1 of 2 runs", runs, "flaky")
    if how == "confirmed":
        runs = (Attempt("failed", duration), Attempt("failed", duration, kind="alone"))
        return TestResult(test, "failed", duration, "boom", runs, "confirmed")
    return TestResult(test, how, duration)


def history(*commits: dict[str, str], seconds: float = 0.0) -> list[Report]:
    """Reports newest first, from one {test: how} per commit given oldest first; commit
    i finished i minutes after NOW - 1 day."""
    reports = []
    for i, tests in enumerate(commits):
        results = tuple(result(t, how) for t, how in tests.items())
        flaky = any(how == "flaky" for how in tests.values())
        bad = any(r.outcome in ("failed", "error") for r in results)
        status = "failed" if bad else "flaky" if flaky else "passed"
        finished = NOW - timedelta(days=1) + timedelta(minutes=i)
        reports.append(Report(repo="/r", commit=f"{i:040x}", status=status, tests=results,
                              summary=Summary.of(list(results)),
                              finished_at=finished.isoformat(),
                              deflake={"tests": 1, "runs": 3, "seconds": seconds}
                              if flaky or bad else {}))
    return reports[::-1]


@pytest.mark.parametrize(("hits", "n", "low", "high"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion",
    # table I, method 3 (the Wilson score interval without continuity correction).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_the_wilson_interval_matches_published_values(hits: int, n: int, low: float,
                                                      high: float) -> None:
    got = wilson(hits, n)
    assert got == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_the_wilson_interval_knows_nothing_without_runs_and_stays_in_bounds() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(5, 5)[1] == 1.0 and wilson(0, 5)[0] == 0.0
    low, high = wilson(1, 5)
    assert low < 0.2 < high


def test_the_release_bound_is_the_exact_one_and_close_to_the_rule_of_three() -> None:
    assert release_bound(30) == pytest.approx(1 - 0.05 ** (1 / 30))
    assert release_bound(30) == pytest.approx(0.0950, abs=1e-4)
    for n in (30, 100, 1000):
        assert release_bound(n) == pytest.approx(3 / n, rel=0.1)
    assert release_bound(0) == 1.0
    assert bound_text(30) == ("0 failures in 30 runs: flake rate below 9.5 % "
                              "(95% confidence)")


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0 and percentile([], 50) is None


def test_flips_skip_what_did_not_run() -> None:
    assert flips(["passed", None, "failed", "skipped", "passed"]) == 2
    assert flips(["failed", "error", "failed"]) == 0


def test_per_test_statistics_count_runs_failures_and_flakes() -> None:
    # Given (oldest first) a flake, a break, a clean run, a skip, another flake
    reports = history({FLAKE: "flaky", OK: "passed"}, {FLAKE: "confirmed", OK: "passed"},
                      {FLAKE: "passed", OK: "passed"}, {FLAKE: "skipped", OK: "passed"},
                      {FLAKE: "flaky", OK: "passed"}, seconds=1.5)
    held = {FLAKE: auto_entry(FLAKE, 2, 5, now=NOW - timedelta(hours=1))}
    stats = {s.id: s for s in per_test(reports, held, now=NOW)}
    flake = stats[FLAKE]
    assert (flake.runs, flake.failures, flake.flakes) == (4, 1, 2)
    assert flake.flake_rate == 0.5 and flake.interval == wilson(2, 4)
    assert flake.last_flaky == reports[0].commit and flake.last_failing == reports[3].commit
    assert flake.unstable == 2 and flake.streak == 0
    assert flake.quarantine is not None and flake.quarantine["auto"] is True
    assert flake.to_dict()["flake_interval"] == [round(x, 4) for x in wilson(2, 4)]
    ok = stats[OK]
    assert (ok.runs, ok.flakes, ok.streak, ok.quarantine) == (5, 0, 5, None)
    assert ok.to_dict()["clean_bound"] == round(release_bound(5), 4)
    assert ok.p50 == pytest.approx(0.1) and ok.p95 == pytest.approx(0.1)
    # And per repository: 2 of 5 commits flaked, 3 were rerun at 1.5 s each
    summary = repo_stats(reports)
    assert (summary["flaky_commits"], summary["flaky_share"]) == (2, 0.4)
    assert (summary["rerun_commits"], summary["rerun_seconds"]) == (3, 4.5)
    assert summary["flaky_interval"] == [round(x, 4) for x in wilson(2, 5)]


def test_only_same_commit_flakes_on_enough_distinct_commits_are_suggested() -> None:
    policy = Policy(flaky_commits=3)
    # A test flaky on 3 commits, one on 2, a deterministic regression, a break then fix
    reports = history(
        {FLAKE: "flaky", "two": "flaky", BROKEN: "passed", "fixed": "passed"},
        {FLAKE: "passed", "two": "passed", BROKEN: "confirmed", "fixed": "confirmed"},
        {FLAKE: "flaky", "two": "flaky", BROKEN: "confirmed", "fixed": "confirmed"},
        {FLAKE: "flaky", "two": "passed", BROKEN: "confirmed", "fixed": "passed"},
    )
    got = suggestions(reports, policy, {}, NOW)
    assert [(s.test, s.flaky, s.window) for s in got] == [(FLAKE, 3, 4)]
    assert got[0].reason == "auto: flaky on 3 of the last 4 commits"
    # Not when it is quarantined already, nor in mode "off", nor outside the window
    held = {FLAKE: entry(FLAKE, "dev@example.org", "known", now=NOW)}
    assert suggestions(reports, policy, held, NOW) == []
    assert suggestions(reports, Policy(mode="off"), {}, NOW) == []
    assert suggestions(reports, Policy(flaky_commits=3, window=3), {}, NOW) == []


def test_old_flakes_followed_by_a_long_clean_streak_are_not_suggested() -> None:
    reports = history(*[{FLAKE: "flaky"}] * 3, *[{FLAKE: "passed"}] * 5)
    assert suggestions(reports, Policy(release_after=6), {}, NOW) != []
    assert suggestions(reports, Policy(release_after=5), {}, NOW) == []


def test_an_automatic_entry_is_released_after_its_clean_streak_a_manual_one_never() -> None:
    policy = Policy(release_after=3)
    made = NOW - timedelta(days=2)  # before every report of `history`
    held = {FLAKE: auto_entry(FLAKE, 3, 50, now=made),
            OK: entry(OK, "dev@example.org", "mine", now=made)}
    clean = history(*[{FLAKE: "passed", OK: "passed"}] * 3)
    got = releases(clean, policy, held, NOW)
    assert [(r.test, r.clean) for r in got] == [(FLAKE, 3)]
    assert got[0].bound == pytest.approx(1 - 0.05 ** (1 / 3))
    assert got[0].reason == "auto-released: " + bound_text(3)
    assert got[0].to_dict()["flake_rate_bound"] == round(got[0].bound, 4)
    # A failure or a flake in the streak holds it; runs before the entry do not count
    assert releases(history({FLAKE: "passed"}, {FLAKE: "flaky"}, {FLAKE: "passed"},
                            {FLAKE: "passed"}), policy, held, NOW) == []
    late = {FLAKE: auto_entry(FLAKE, 3, 50, now=NOW - timedelta(days=1, minutes=-1))}
    assert releases(clean, policy, late, NOW) == []  # 1 clean run since, not 3
    assert releases(clean, Policy(mode="off", release_after=3), held, NOW) == []


def test_an_automatic_entry_says_why_and_is_told_apart_from_a_persons() -> None:
    made = auto_entry(FLAKE, 3, 50, days=30, now=NOW)
    assert (made.owner, made.reason) == ("ciq", "auto: flaky on 3 of the last 50 commits")
    assert made.auto and made.expires_at == (NOW + timedelta(days=30)).isoformat(
        timespec="seconds")
    again = Entry.from_stored(FLAKE, made.stored())
    assert again.auto and again.to_dict(NOW)["auto"] is True
    assert not entry(FLAKE, "dev@example.org", "flaky", now=NOW).auto


def test_the_policy_comes_from_the_operators_file_only_and_is_checked() -> None:
    assert policy_of(None) == Policy(mode="suggest", flaky_commits=3, window=50,
                                     release_after=30, days=30)
    data = {"url": "/r", "quarantine": {"mode": "auto", "flaky_commits": 2,
                                        "release_after": 40}}
    config = RepoConfig.parse(data, "ops.toml [[repo]] #1")
    assert config.quarantine == Policy(mode="auto", flaky_commits=2, release_after=40)
    assert policy_of(("ops.toml", config.to_dict())) == config.quarantine
    assert RepoConfig().over(config).quarantine == config.quarantine
    bad = [({"mode": "always"}, "'quarantine.mode' must be one of suggest, auto, off"),
           ({"flaky_commits": 0}, "'quarantine.flaky_commits'"),
           ({"release_after": True}, "'quarantine.release_after'"),
           ({"window": 2, "flaky_commits": 3}, "must not exceed 'quarantine.window'"),
           ({"after": 3}, "unknown key 'quarantine.after'")]
    for table, said in bad:
        with pytest.raises(ConfigError, match=said) as caught:
            RepoConfig.parse({"quarantine": table}, "ops.toml")
        assert "\n" not in str(caught.value) and str(caught.value).startswith("ops.toml: ")
    with pytest.raises(ConfigError, match="only in the operator's settings file"):
        RepoConfig.parse({"quarantine": {"mode": "auto"}}, "ciq.toml", from_commit=True)
