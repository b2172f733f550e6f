"""The coordinator of culprit searches: a housekeeping step, one worker of the cluster
at a time (a lock), each pass bounded.

A pass (:func:`coordinate`)

1. looks at the newest reported commits of each repository (:data:`SCAN`): a commit of
   the default branch whose report has **confirmed** failures (:mod:`ciq.flaky`), and
   whose first-parent history back to the last commit where those tests passed holds
   commits that did not run them (not tested yet, `--latest-only`, a coalesced push,
   a run that errored), gets a search over that range (:class:`ciq.culprit.Search`);
2. for each search going on: feeds the probes' results to the state machine, sends
   again a probe whose taker died (taken, no live lease, no result) or that nobody took
   within :data:`RESEND_UNTAKEN`, stores the answer once there is one, and otherwise
   sends the probes it proposes for the free worker processes.

Probes go first in their queue, as reruns do: they are few and short, and whom to blame
is feedback people wait for.
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..culprit import MAX_P, Probe, Search, describe, flake_prior
from ..dispatch import Message, Sender
from ..errors import CiqError
from ..gitrepo import validate_sha
from ..message import probe_message
from ..report import Report
from ..runner.runs import mirror_for
from ..settings import Settings
from ..store.culprit import Record, Searches
from ..store.shards import Shards
from ..store.store import Store
from ..supersede import is_default_branch

logger = logging.getLogger(__name__)

#: Newest reported commits per repository a pass looks at for new confirmed failures.
SCAN = 10
#: Repositories a pass looks at.
REPOS_PER_PASS = 20
#: Searches a pass advances; the others wait for the next pass.
SEARCHES_PER_PASS = 20
#: First-parent commits a search covers at most (2**6: six probes of a plain bisection).
MAX_RANGE = 64
#: Failing tests a search runs at most: more failing at once is one break, and a few
#: of them name its commit as well as all of them.
MAX_TESTS = 5
#: Reported commits whose reports give the failing tests' flake history.
HISTORY = 50
#: Probes of one search in flight at most.
MAX_PARALLEL = 4
#: Seconds a probe may wait untaken before it is sent again (its message may be lost).
RESEND_UNTAKEN = 60.0
#: Seconds git may take to list a range's first parents.
GIT_TIMEOUT = 30.0
_FAILING = ("failed", "error")


def coordinate(settings: Settings, store: Store, sender: Sender, shards: Shards) -> int:
    """One pass: start searches for new confirmed failures, advance the others. Returns
    the number of probes sent."""
    searches = Searches(store)
    for repo in store.repos()[:REPOS_PER_PASS]:
        try:
            discover(settings, store, searches, repo)
        except Exception as exc:  # one repository's bad data must not stop the rest
            logger.warning("culprit %s: could not look for failures: %s", repo, exc)
    sent = 0
    repos = store.repos_by_id()
    for rid, sha in searches.active(SEARCHES_PER_PASS):
        if (name := repos.get(rid)) is not None:
            sent += advance(settings, store, searches, sender, shards, name, sha)
    return sent


def tests_state(report: Report | None, tests: Sequence[str]) -> str | None:
    """What a commit's report says of ``tests``: `failed` (one failed there too),
    `passed` (they passed, or were absent from a run of the whole suite that did not
    fail to run: they did not exist yet), None (it did not run them)."""
    if report is None:
        return None
    seen = {t.id: t.outcome for t in report.tests}
    if any(seen.get(t) in _FAILING for t in tests):
        return "failed"
    if all(t in seen for t in tests) or report.status in ("passed", "flaky"):
        return "passed"
    return None


def first_parents(settings: Settings, repo: str, sha: str, n: int) -> list[str]:
    """Up to ``n`` first-parent ancestors of ``sha``, newest first, from this worker's
    mirror (fetched when it lacks the commit)."""
    mirror = mirror_for(settings.data_dir, repo)
    mirror.ensure_commit(sha)
    out = subprocess.run(
        ["git", f"--git-dir={mirror.path}", "rev-list", "--first-parent",
         f"--max-count={n + 1}", validate_sha(sha)],
        capture_output=True, text=True, timeout=GIT_TIMEOUT, check=True).stdout
    return out.split()[1:]


def discover(settings: Settings, store: Store, searches: Searches, repo: str) -> list[str]:
    """Start a search for each new confirmed failure among the newest reports of
    ``repo`` that needs one; the failing commits whose search started."""
    shas = store.reported(repo, SCAN)
    fresh = [s for s in shas if s not in searches.checked(repo, shas)]
    started = []
    stored = store.repo_config(repo)
    config = stored[1] if stored else None
    for sha, report in zip(fresh, store.reports(repo, fresh), strict=True):
        if report is None:
            continue
        tests = [t.id for t in report.tests if t.verdict == "confirmed"][:MAX_TESTS]
        if (report.status != "failed" or not tests or not report.branch
                or not is_default_branch(report.branch, config)):
            searches.mark_checked(repo, sha, "no confirmed failure on the default branch")
            continue
        why = _start(settings, store, searches, repo, report, tests)
        if why is None:
            started.append(sha)
        else:
            searches.mark_checked(repo, sha, why)
    return started


def _start(settings: Settings, store: Store, searches: Searches, repo: str,
           report: Report, tests: list[str]) -> str | None:
    """Start the search of ``report``'s failure; why not, when it needs none."""
    sha = report.commit
    try:
        parents = first_parents(settings, repo, sha, MAX_RANGE)
    except (CiqError, OSError, subprocess.SubprocessError) as exc:
        return f"could not read its history: {exc}"
    range_: list[str] = []
    good = None
    for parent, seen in zip(parents, store.reports(repo, parents), strict=True):
        state = tests_state(seen, tests)
        if state == "failed":
            return f"the tests failed before, at {parent}: that commit's search covers it"
        if state == "passed":
            good = parent
            break
        range_.append(parent)
    if not range_:
        return f"the tests passed at its first parent {good}: it is the first bad commit"
    p = _flake_rate(store, repo, tests)
    search = Search((*reversed(range_), sha), p=p)
    meta = {"good_end": good, "line": "", "capped": good is None and
            len(parents) >= MAX_RANGE}
    if searches.start(repo, sha, report.branch, tests, search, meta):
        logger.info("culprit %s: search of %s for %s over %d commits (flake rate %.2f)",
                    repo, sha[:12], ", ".join(tests), len(search.commits), p)
    return None


def _flake_rate(store: Store, repo: str, tests: Sequence[str]) -> float:
    """The chance that at least one of ``tests`` flakes in a run, from their verdicts in
    the newest reports (:func:`ciq.culprit.flake_prior` of each)."""
    runs = dict.fromkeys(tests, 0)
    flaky = dict.fromkeys(tests, 0)
    shas = store.reported(repo, HISTORY)
    for report in store.reports(repo, shas):
        for result in report.tests if report else ():
            if result.id in runs:
                runs[result.id] += 1
                flaky[result.id] += result.flaky
    clean = 1.0
    for t in tests:
        clean *= 1 - flake_prior(runs[t], flaky[t])
    return min(MAX_P, 1 - clean)


def advance(settings: Settings, store: Store, searches: Searches, sender: Sender,
            shards: Shards, repo: str, sha: str) -> int:
    """Feed the results of one search, store its answer or send its next probes; the
    number of probes sent."""
    queue = sender.queue_for(repo)
    # free processes, roughly: those announced for the queue less the commits running
    # anywhere (at least one, so that a busy cluster still makes progress)
    free = max(1, min(MAX_PARALLEL, shards.processes(queue) - searches.running()))

    def step(record: Record) -> dict[str, Any]:
        return _step(settings, record, searches, free)

    decided = searches.advance(repo, sha, step)
    if decided is None:
        return 0  # a worker wrote meanwhile: the next pass reads again
    if decided.get("done"):
        logger.info("culprit %s: %s", repo, decided["line"])
        return 0
    send = decided.get("send", [])
    sender.push([Message(queue, probe_message(repo, sha, pid, queue), first=True)
                 for pid in send])
    return len(send)


def _step(settings: Settings, record: Record, searches: Searches,
          free: int) -> dict[str, Any]:
    s = record.search
    for pid, result in sorted(record.results.items()):
        probe = record.pending.pop(pid, None)
        outcomes = result.get("outcomes") or []
        if probe is None or not outcomes:
            continue  # a damaged result is no evidence: the commit is proposed again
        s.record(probe["commit"], outcomes)
        record.log.append({"commit": probe["commit"], "outcomes": outcomes,
                           "worker": result.get("worker"), "seconds": result.get("seconds"),
                           "message": result.get("message", ""),
                           "sends": probe.get("sends", 1)})
    now = time.time()
    held = searches.lease_held(list(record.pending))
    for pid, probe in list(record.pending.items()):
        died = pid in record.taken and pid not in held
        if died or (pid not in record.taken and now - probe["sent"] > RESEND_UNTAKEN):
            # a new id: a late copy of the old message, or its taker if it is alive
            # after all, finds the old probe gone and stops
            del record.pending[pid]
            record.pending[uuid.uuid4().hex] = {**probe, "sent": now,
                                                "sends": probe.get("sends", 1) + 1}
            logger.warning("culprit %s: probe %s at %s %s; sending it again", record.sha[:12],
                           pid[:8], probe["commit"][:12],
                           "lost its taker" if died else "was not taken")
    answer = s.answer()
    if answer is not None:
        record.answer, record.status = answer, "done"
        record.pending.clear()
        seconds = now - float(record.meta.get("started", now))
        author = _author(settings, record) if answer.kind == "culprit" else ""
        line = describe(answer, record.tests, s.probes, s.runs, seconds, author, record.sha)
        record.meta.update(line=line, author=author, seconds=round(seconds, 3),
                           finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
        return {"done": True, "line": line}
    pending = [Probe(v["commit"], int(v["runs"])) for v in record.pending.values()]
    new = s.propose(free - len(pending), pending)
    send = [pid for pid, v in record.pending.items() if v["sent"] == now]
    for proposed in new:
        pid = uuid.uuid4().hex
        record.pending[pid] = {**proposed.to_dict(), "sent": now, "sends": 1}
        send.append(pid)
    return {"send": send}


def _author(settings: Settings, record: Record) -> str:
    """The culprit's author, as the mirror of this worker knows it ("" if it cannot)."""
    if record.answer is None or not record.answer.commits:
        return ""
    try:
        mirror = mirror_for(settings.data_dir, record.repo)
        mirror.ensure_commit(record.answer.commits[0])
        return mirror.info(record.answer.commits[0]).author
    except Exception as exc:  # the line is only less precise without it
        logger.warning("culprit %s: no author for the culprit: %s", record.sha[:12], exc)
        return ""
