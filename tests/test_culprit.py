"""The culprit search (:mod:`ciq.culprit`) against a simulated range: pure, seeded."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import pytest

from ciq.culprit import Answer, Probe, Search, describe, flake_prior, runs_needed

N = 32
FLAKE = 0.2


@dataclass
class Range:
    """A simulated range: ``culprit`` (None: nothing bad) and later commits always fail
    the test, earlier ones fail with probability ``flake``; ``untestable`` never build."""

    commits: tuple[str, ...]
    culprit: int | None
    untestable: frozenset[int]
    flake: float
    rng: random.Random

    def run(self, probe: Probe) -> list[str]:
        i = self.commits.index(probe.commit)
        outcomes: list[str] = []
        for _ in range(probe.runs):
            if i in self.untestable:
                return [*outcomes, "untestable"]
            bad = self.culprit is not None and i >= self.culprit
            if bad or self.rng.random() < self.flake:
                outcomes.append("failed")
            else:
                return [*outcomes, "passed"]  # a probe stops at its first pass
        return outcomes


def make_range(seed: int, culprit: int | None = -1, untestable: int = 1,
               flake: float = FLAKE) -> Range:
    rng = random.Random(seed)
    commits = tuple(f"{seed:04d}{i:02d}" + "0" * 34 for i in range(N))
    where = rng.randrange(N) if culprit == -1 else culprit
    skip = frozenset(rng.sample(range(N - 1), untestable))  # the failing commit builds
    return Range(commits, where, skip, flake, rng)


def search(r: Range, workers: int = 1) -> Search:
    """Drive a search to its answer with ``workers`` probes in flight, the oldest one
    finishing first; pending probes are taken into account as the coordinator does."""
    s = Search(r.commits, p=flake_prior())
    pending: list[Probe] = []
    for _ in range(500):
        pending += s.propose(workers - len(pending), pending)
        if not pending:
            return s
        probe = pending.pop(0)
        s.record(probe.commit, r.run(probe))
    raise AssertionError("the search did not end")


def named(r: Range, a: Answer) -> bool:
    assert r.culprit is not None
    return r.commits[r.culprit] in a.commits and a.kind in ("culprit", "range")


@pytest.mark.parametrize("workers, trials, p95_runs", [(1, 1000, 22), (3, 150, 30)])
def test_the_culprit_is_named_despite_a_20_percent_flake(workers: int, trials: int,
                                                         p95_runs: int) -> None:
    # Given 32-commit ranges, one regressing commit at a random place, a test that
    # flakes one run in five at good commits, and one untestable commit
    runs, probes, found, ranges = [], [], 0, 0
    for seed in range(trials):
        r = make_range(seed)
        # When the search runs to its end
        s = search(r, workers)
        a = s.answer()
        assert a is not None
        # Then a single commit named is always the culprit; a range contains it
        if a.kind == "culprit":
            assert a.commits == (r.commits[r.culprit],), f"seed {seed}: wrong commit"
        found += named(r, a)
        ranges += a.kind == "range"
        runs.append(s.runs)
        probes.append(s.probes)
    runs.sort()
    probes.sort()
    p95 = runs[int(0.95 * trials)]
    print(f"\n{workers} worker(s), {trials} trials: named {found / trials:.1%} "
          f"({ranges} as a range with the untestable commit), runs median "
          f"{statistics.median(runs)} p95 {p95}, probes median {statistics.median(probes)} "
          f"p95 {probes[int(0.95 * trials)]}")
    assert found >= 0.99 * trials
    assert p95 <= p95_runs


def test_a_failure_that_does_not_reproduce_is_a_flake() -> None:
    # Given a range where nothing is bad, the failure at its end having been chance
    flakes = 0
    for seed in range(200):
        r = make_range(seed, culprit=None)
        s = search(r)
        a = s.answer()
        assert a is not None
        # Then no commit is ever blamed, and a pass at the failing commit says flake
        assert a.kind == "flake", f"seed {seed}: {a}"
        flakes += 1
    assert flakes == 200


def test_the_failing_commit_is_probed_first_and_one_pass_there_is_a_flake() -> None:
    commits = tuple(f"{i:040x}" for i in range(1, 17))
    s = Search(commits)
    first = s.propose(3)
    assert first[0] == Probe(commits[-1], 1)
    assert len(first) == 3 and len({p.commit for p in first}) == 3
    s.record(commits[-1], ["passed"])
    assert s.answer() == Answer("flake", (), 1.0)
    assert s.propose(3) == []


def test_an_untestable_commit_next_to_the_culprit_makes_a_pair() -> None:
    for seed in range(50):
        # Given the culprit is untestable: no probe can tell it from the next commit
        r = make_range(seed, culprit=10, untestable=0)
        r.untestable = frozenset({10})
        a = search(r).answer()
        assert a is not None and a.kind == "range"
        assert a.commits == (r.commits[10], r.commits[11]) and a.good == r.commits[9]
        # and the same when the untestable commit is the one before the culprit
        r = make_range(seed, culprit=10, untestable=0)
        r.untestable = frozenset({9})
        a = search(r).answer()
        assert a is not None and a.kind == "range"
        assert a.commits == (r.commits[9], r.commits[10]) and a.good == r.commits[8]


def test_a_missing_test_counts_as_good_and_the_oldest_commit_can_be_the_culprit() -> None:
    commits = tuple(f"{i:040x}" for i in range(1, 9))
    s = Search(commits, p=0.02)
    assert runs_needed(0.02) == 3
    s.record(commits[-1], ["failed"])
    s.record(commits[2], ["missing"])
    s.record(commits[3], ["failed"] * 3)
    a = s.answer()
    assert a is not None and a.kind == "culprit" and a.commits == (commits[3],)
    assert a.good == commits[2]
    # the first commit of the range: the good end is the range's own, outside it
    t = Search(commits[:1], p=0.02)
    t.record(commits[0], ["failed"] * 4)
    assert t.answer() == Answer("culprit", (commits[0],), t.answer().confidence, None)


def test_the_search_is_deterministic_and_its_state_travels() -> None:
    r1, r2 = make_range(7), make_range(7)
    s1, s2 = search(r1, 2), search(r2, 2)
    assert s1.to_dict() == s2.to_dict()
    again = Search.from_dict(s1.to_dict())
    assert again.answer() == s1.answer() and again.runs == s1.runs


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        Search(())
    with pytest.raises(ValueError):
        Search(("a", "a"))
    s = Search(("a", "b"))
    with pytest.raises(ValueError):
        s.record("c", ["passed"])
    with pytest.raises(ValueError):
        s.record("a", ["maybe"])
    assert flake_prior() == pytest.approx(0.2)
    assert flake_prior(1000, 0) == pytest.approx(0.02)
    assert runs_needed(0.2) == 6


def test_out_of_runs_the_answer_is_inconclusive_with_the_best_guess() -> None:
    # a test flaking one run in two, and a confidence 40 failures in a row would reach
    s = Search(("a" * 40, "b" * 40), p=0.5, confidence=1 - 1e-12)
    s.record("a" * 40, ["failed"] * 39)
    s.record("b" * 40, ["failed"] * 41)
    a = s.answer()
    assert a is not None and a.kind == "inconclusive" and a.commits == ("a" * 40,)
    assert s.propose(2) == []


def test_the_answer_in_one_line() -> None:
    culprit = Answer("culprit", ("c" * 40,), 0.99999)
    assert describe(culprit, ["tests/test_x.py::test_y"], 7, 19, 240.0, "Ada") == (
        f"first bad commit for tests/test_x.py::test_y: {'c' * 40}, Ada, 7 probes, "
        "19 runs, 4 min")
    pair = Answer("range", ("a" * 40, "b" * 40), 0.99999, "9" * 40)
    assert describe(pair, ["t::a", "t::b"], 1, 1, 5.0).startswith(
        f"first bad commit for t::a, t::b: one of {'a' * 12}..{'b' * 12} (2 commits")
    assert "1 probe, 1 run, 5 s" in describe(Answer("flake"), ["t"], 1, 1, 5.0, "", "f" * 40)
    assert describe(Answer("inconclusive", ("d" * 40,)), ["t"], 3, 80, 60.0).startswith(
        "no first bad commit found for t; most likely dddddddddddd")
