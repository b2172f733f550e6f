"""Culprit finding: which commit of a range first broke a test, despite flakes.

Pure: no Redis, no processes, no clock. :class:`Search` is the state machine that
:mod:`ciq.worker.probe` and the housekeeping coordinator drive; it proposes probes
(run these tests at that commit, up to ``runs`` times, stopping at the first pass) and
consumes their outcomes. Its state is a few counts per commit, so it is deterministic
given the results, whatever their order, and it travels as JSON.

The model (a noisy ``git bisect``). The candidates are the first-parent commits after
the last commit where the tests passed, oldest first, the failing commit last. One
hypothesis per candidate, "this is the first bad commit", and one more, **flake**: none
is bad, the failure at the end was chance. At a bad commit the tests always fail (a
regression that only makes a test flakier is out of reach of any bisection); at a good
one each run fails with probability ``p``, the test's flake rate. So a pass is
decisive (the commit is good), and a failure only weighs: every hypothesis that calls
the commit good is multiplied by ``p``. The posterior is the prior times these weights.

* **How many failures make "bad".** A commit is named when its hypothesis holds at
  least :data:`CONFIDENCE` of the posterior; the hypothesis next to it ("the one after
  is the first bad") is only beaten by failures at the commit itself, each a factor
  ``p``, so about ``r = log(1 - CONFIDENCE) / log(p)`` failures are needed: 6 at the
  default ``p = 0.2`` (0.2**6 = 6e-5), 3 for a test with a long clean history. A flake can
  therefore not be pinned on an innocent commit except with probability about
  ``1 - CONFIDENCE`` per search.
* **The flake rate.** :func:`flake_prior` from the test's history: the mean of a
  Beta(1, 4) prior updated by the history, so no history gives ``p = 0.2`` (a rate only
  a badly flaky test reaches, so an upper bound for most), floored at :data:`MIN_P`.
* **The failing commit's own failures are not evidence**: the search exists *because*
  they failed (a selected sample), so the failing commit is probed again first, and one
  pass there makes the answer **flake** (every commit hypothesis needs it bad).
* **Which probes.** Each proposal adds probes one at a time, each at the commit whose
  run tells most together with those already chosen and those in flight (expected
  information gain on the posterior: entropy of the hypotheses, untestable ones merged
  as below), so k free workers get k distinct commits that split the interval into
  several sections. A probe at the likely culprit (its hypothesis holds half the
  posterior or more) gets the runs that would confirm it, in one go; any other gets
  one. At a good commit the first pass ends a probe, so extra runs cost little when
  the guess is wrong.
* **Untestable commits** (the environment does not build, collection fails) are skipped
  like ``git bisect``'s exit 125: no evidence, and their hypothesis cannot be told from
  the next testable commit's, so both are merged into one group and the answer may be a
  **range** of commits. A test that does not exist yet at a commit passes there.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Posterior probability an answer needs: a wrong single commit about once in 10,000
#: searches under the model.
CONFIDENCE = 0.9999
#: Prior probability that the failure at the end of the range was a flake after all (it
#: was confirmed by reruns, but on one machine at one moment).
PRIOR_FLAKE = 0.5
#: Flake rate assumed at least, whatever a clean history says: a history is short.
MIN_P = 0.02
#: Flake rate assumed at most: above it a test says too little to bisect on.
MAX_P = 0.5
#: Pseudo-runs and pseudo-failures of the Beta prior of :func:`flake_prior` (mean 0.2).
PRIOR_RUNS, PRIOR_FAILS = 5, 1
#: Runs one probe makes at most (it stops at the first pass).
MAX_PROBE_RUNS = 6
#: Runs a search makes at most before it answers "inconclusive".
MAX_RUNS = 80
#: Runs in flight plus new ones that a proposal weighs together (2**this outcomes).
MAX_JOINT = 6

OUTCOMES = ("passed", "failed", "untestable", "missing")
KINDS = ("culprit", "range", "flake", "inconclusive")


def flake_prior(runs: int = 0, flaky: int = 0) -> float:
    """The flake rate to assume for a test that failed ``flaky`` of its ``runs`` at good
    commits in its history: a Beta(1, 4) prior's posterior mean, in [MIN_P, MAX_P]."""
    p = (flaky + PRIOR_FAILS) / (runs + PRIOR_RUNS)
    return min(MAX_P, max(MIN_P, p))


def runs_needed(p: float, confidence: float = CONFIDENCE) -> int:
    """Failures in a row at one commit that call it bad at ``confidence``: p**r small."""
    return max(1, math.ceil(math.log(1 - confidence) / math.log(p)))


@dataclass(frozen=True)
class Probe:
    """Run the tests at ``commit`` up to ``runs`` times; the first pass ends it."""

    commit: str
    runs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "runs": self.runs}


@dataclass(frozen=True)
class Answer:
    """What a search found. ``kind``: `culprit` (``commits`` holds it), `range` (the
    first bad commit is one of ``commits``: untestable ones, then a bad one), `flake`
    (the failure does not reproduce at the end: nothing bisected), `inconclusive` (out
    of runs, or the failing commit itself is untestable: ``commits`` is the best guess).
    ``good`` is the last commit known good before them (None: the range's good end)."""

    kind: str
    commits: tuple[str, ...] = ()
    confidence: float = 0.0
    good: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "commits": list(self.commits),
                "confidence": round(self.confidence, 6), "good": self.good}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Answer:
        return cls(str(data["kind"]), tuple(map(str, data["commits"])),
                   float(data["confidence"]), data.get("good"))


@dataclass
class Search:
    """The search over ``commits`` (oldest first, first-parent, good end excluded, the
    failing commit last) for tests that flake at rate ``p``."""

    commits: tuple[str, ...]
    p: float = field(default_factory=flake_prior)
    confidence: float = CONFIDENCE
    fails: dict[str, int] = field(default_factory=dict)
    good: set[str] = field(default_factory=set)
    untestable: set[str] = field(default_factory=set)
    probes: int = 0
    runs: int = 0

    def __post_init__(self) -> None:
        if not self.commits:
            raise ValueError("a culprit search needs at least the failing commit")
        if len(set(self.commits)) != len(self.commits):
            raise ValueError("a culprit search's commits repeat")
        if not 0 < self.p < 1:
            raise ValueError(f"flake rate {self.p} is not in (0, 1)")
        self.commits = tuple(self.commits)

    def to_dict(self) -> dict[str, Any]:
        """The whole state, JSON-ready (:meth:`from_dict` reads it back)."""
        return {"commits": list(self.commits), "p": self.p, "confidence": self.confidence,
                "fails": dict(sorted(self.fails.items())), "good": sorted(self.good),
                "untestable": sorted(self.untestable), "probes": self.probes,
                "runs": self.runs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Search:
        """The search written by :meth:`to_dict`; ValueError when it is not one."""
        try:
            return cls(tuple(map(str, data["commits"])), float(data["p"]),
                       float(data["confidence"]),
                       {str(c): int(n) for c, n in data["fails"].items()},
                       set(map(str, data["good"])), set(map(str, data["untestable"])),
                       int(data["probes"]), int(data["runs"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a culprit search: {exc}") from exc

    # -- evidence ------------------------------------------------------------------
    def record(self, commit: str, outcomes: Sequence[str]) -> None:
        """The outcomes of one probe's runs at ``commit``, in order (see
        :data:`OUTCOMES`); a `missing` test passes, an `untestable` commit is skipped."""
        if commit not in self.commits:
            raise ValueError(f"{commit} is not a commit of this search")
        bad = [o for o in outcomes if o not in OUTCOMES]
        if bad:
            raise ValueError(f"unknown probe outcomes {bad}: expected one of {OUTCOMES}")
        self.probes += 1
        for outcome in outcomes:
            if outcome == "untestable":
                self.untestable.add(commit)
                break  # the rest could not be run either
            self.runs += 1
            if outcome in ("passed", "missing"):
                self.good.add(commit)
            else:
                self.fails[commit] = self.fails.get(commit, 0) + 1

    # -- posterior -----------------------------------------------------------------
    def _weights(self) -> list[float]:
        """Unnormalised posterior of each hypothesis: index i < n, "commits[i] is the
        first bad one"; index n, flake. A hypothesis at i calls the commits before i good,
        so it carries p per failure there, and is ruled out by a pass at i or after."""
        n = len(self.commits)
        last_good = max((i for i, c in enumerate(self.commits) if c in self.good),
                        default=-1)
        w = [0.0] * (n + 1)
        w[n] = PRIOR_FLAKE * self.p ** sum(self.fails.values())
        weight = (1 - PRIOR_FLAKE) / n
        for i, c in enumerate(self.commits):
            # a pass at or after i contradicts "i is bad"
            w[i] = weight if i > last_good else 0.0
            weight *= self.p ** self.fails.get(c, 0)
        return w

    def _groups(self) -> list[list[int]]:
        """Hypotheses that no probe can tell apart: each run of untestable commits with
        the next testable one; the untestable tail with flake."""
        groups: list[list[int]] = []
        run: list[int] = []
        for i, c in enumerate(self.commits):
            run.append(i)
            if c not in self.untestable:
                groups.append(run)
                run = []
        groups.append([*run, len(self.commits)])
        return groups

    def posterior(self) -> list[float]:
        """The posterior of each hypothesis (the last one is flake)."""
        w = self._weights()
        total = sum(w)
        return [x / total for x in w]

    # -- answer --------------------------------------------------------------------
    def answer(self) -> Answer | None:
        """The answer once one group of hypotheses holds :attr:`confidence` of the
        posterior, or once the runs are spent; None while the search goes on."""
        post = self.posterior()
        n = len(self.commits)
        if self.commits[-1] in self.untestable:
            return self._guess(post)
        for group in self._groups():
            mass = sum(post[i] for i in group)
            if mass < self.confidence:
                continue
            if group[-1] == n:
                return Answer("flake", (), mass)
            return Answer("culprit" if len(group) == 1 else "range",
                          tuple(self.commits[i] for i in group), mass,
                          self.commits[group[0] - 1] if group[0] else None)
        if self.runs >= MAX_RUNS:
            return self._guess(post)
        return None

    def _guess(self, post: list[float]) -> Answer:
        best = max(self._groups(), key=lambda g: sum(post[i] for i in g))
        commits = tuple(self.commits[i] for i in best if i < len(self.commits))
        return Answer("inconclusive", commits, sum(post[i] for i in best),
                      self.commits[best[0] - 1] if best[0] else None)

    # -- proposals -----------------------------------------------------------------
    def propose(self, k: int, pending: Sequence[Probe] = ()) -> list[Probe]:
        """Up to ``k`` new probes (one per free worker), given the probes in flight;
        none once there is an answer. The failing commit goes first until it has been
        run again; then runs are added one at a time where they tell most."""
        if k <= 0 or self.answer() is not None:
            return []
        end = self.commits[-1]
        busy = {p.commit for p in pending}
        chosen: dict[str, int] = {}
        if end not in self.good and not self.fails.get(end) and end not in busy:
            chosen[end] = 1
        post = self.posterior()
        masses = _Masses(post, self._groups())
        testable = [i for i, c in enumerate(self.commits)
                    if c not in self.untestable and c not in self.good]
        items = [(self.commits.index(p.commit), p.runs) for p in pending
                 if p.commit in self.commits]
        items = items[-MAX_JOINT:]
        while len(chosen) < k and len(items) + len(chosen) < MAX_JOINT:
            fixed = items + [(self.commits.index(c), r) for c, r in chosen.items()]
            best, gain = None, 1e-9
            for i in testable:
                if self.commits[i] in chosen or self.commits[i] in busy:
                    continue
                g = masses.gain(self.p, [*fixed, (i, 1)])
                if g > gain:
                    best, gain = i, g
            if best is None:
                break
            chosen[self.commits[best]] = 1
        return [Probe(c, self._runs_for(c, post)) for c in chosen]

    def _runs_for(self, commit: str, post: list[float]) -> int:
        """Runs for a probe at ``commit``: when it is likely the first bad one, the
        failures that would rule out every hypothesis after it; else one (a commit
        further right is bad too but says nothing about which one is first)."""
        i = self.commits.index(commit)
        group = next(g for g in self._groups() if i in g)
        own = sum(post[j] for j in group)
        right = sum(post[group[-1] + 1:])
        if own < 0.5 or right <= 0:
            return 1
        need = math.log((1 - self.confidence) * own / right) / math.log(self.p)
        return max(1, min(MAX_PROBE_RUNS, math.ceil(need)))


class _Masses:
    """The posterior per group, for fast expected entropies: a group lies wholly on one
    side of any testable commit (it ends at one), so probes scale whole runs of groups,
    and prefix sums of m and m·log2(m) give each run's share in O(1)."""

    def __init__(self, post: list[float], groups: list[list[int]]) -> None:
        self.last: list[int] = []
        self.mass = [0.0]
        self.mlog = [0.0]
        for g in groups:
            m = sum(post[i] for i in g)
            if m > 0:  # ruled-out groups weigh nothing whatever a probe says
                self.last.append(g[-1])
                self.mass.append(self.mass[-1] + m)
                self.mlog.append(self.mlog[-1] + m * math.log2(m))

    def entropy(self) -> float:
        return -self.mlog[-1] / self.mass[-1] + math.log2(self.mass[-1])

    def gain(self, p: float, items: list[tuple[int, int]]) -> float:
        """Expected information (bits) of probes ``items`` ((commit index, runs) each; a
        probe's outcome is "some run passed" or "all failed")."""
        items = sorted(items)
        cuts = [0, *(bisect.bisect_right(self.last, j) for j, _ in items), len(self.last)]
        fail_good = [p ** r for _, r in items]
        expected = 0.0
        for mask in range(1 << len(items)):
            failed = [mask >> t & 1 for t in range(len(items))]
            total = acc = 0.0
            for s in range(len(items) + 1):
                # groups between cut s and s+1: good for items before s, bad from s on
                f = 1.0
                for t in range(len(items)):
                    if t < s:
                        f *= fail_good[t] if failed[t] else 1 - fail_good[t]
                    elif not failed[t]:
                        f = 0.0
                        break
                m = self.mass[cuts[s + 1]] - self.mass[cuts[s]]
                if f <= 0 or m <= 0:
                    continue
                e = self.mlog[cuts[s + 1]] - self.mlog[cuts[s]]
                total += f * m
                acc += f * (e + m * math.log2(f))
            if total > 0:
                expected += total * (-acc / total + math.log2(total))
        return self.entropy() - expected


def describe(answer: Answer, tests: Sequence[str], probes: int, runs: int, seconds: float,
             author: str = "", failing: str = "") -> str:
    """The answer in one line: "first bad commit for tests/test_x.py::test_y: <sha>,
    <author>, 7 probes, 19 runs, 4 min"."""
    shown = ", ".join(tests[:3]) + (f" and {len(tests) - 3} more" if len(tests) > 3 else "")
    took = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    cost = (f"{probes} probe{'s' * (probes != 1)}, {runs} run{'s' * (runs != 1)}, "
            f"{took}")
    if answer.kind == "culprit":
        who = f", {author}" if author else ""
        return f"first bad commit for {shown}: {answer.commits[0]}{who}, {cost}"
    if answer.kind == "range":
        return (f"first bad commit for {shown}: one of {answer.commits[0][:12]}.."
                f"{answer.commits[-1][:12]} ({len(answer.commits)} commits, untestable "
                f"ones in the way), {cost}")
    if answer.kind == "flake":
        at = f" at {failing[:12]}" if failing else ""
        return f"{shown}: the failure does not reproduce{at}: a flake, not bisected, {cost}"
    guess = f"; most likely {answer.commits[0][:12]}" if answer.commits else ""
    return f"no first bad commit found for {shown}{guess}, {cost}"
