"""Culprit searches in Redis: one record per failing commit, its probes and their leases.

The record (``keys.culprit``) holds the search's state (:class:`ciq.culprit.Search` as
JSON) and the probes sent for it. Only the coordinator (one housekeeping thread of the
cluster at a time) changes the state, in an optimistic transaction (WATCH): a taker or a
result written meanwhile aborts it, and the next pass reads again, so a result is never
counted twice nor lost. A worker only takes a probe (``lua/culprit_take.lua``: its lease,
renewed by its heartbeat) and writes its result once (``lua/culprit_beat.lua``); a probe
whose taker died (taken, no lease, no result) is sent again by the coordinator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from ..culprit import Answer, Search
from . import keys
from .scripts import CULPRIT_BEAT, CULPRIT_TAKE, register
from .store import Store

#: Finished probes a record keeps for the API (the newest).
LOG_SIZE = 100
#: Failing commits remembered per repository as looked at (the oldest go first).
CHECKED_SIZE = 1000


@dataclass
class Record:
    """One search as stored: what ``keys.culprit`` holds, parsed."""

    repo: str
    sha: str
    branch: str | None
    tests: tuple[str, ...]
    search: Search
    status: str = "running"
    answer: Answer | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: probe id -> {commit, runs, sent (ms), sends}
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: probe id -> who took it
    taken: dict[str, str] = field(default_factory=dict)
    #: probe id -> {outcomes, worker, seconds, message}
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What the API shows."""
        return {"repo": self.repo, "commit": self.sha, "branch": self.branch,
                "tests": list(self.tests), "status": self.status,
                "answer": self.answer.to_dict() if self.answer else None,
                "probes": self.search.probes, "runs": self.search.runs,
                "flake_rate": round(self.search.p, 4),
                "range": len(self.search.commits), **self.meta,
                "in_flight": [dict(v, id=k, taken_by=self.taken.get(k))
                              for k, v in sorted(self.pending.items())],
                "log": self.log}


def _record(raw: dict[str, str]) -> Record | None:
    if "state" not in raw:
        return None
    r = Record(raw["repo"], raw["sha"], raw.get("branch") or None,
               tuple(json.loads(raw["tests"])), Search.from_dict(json.loads(raw["state"])),
               raw.get("status", "running"),
               Answer.from_dict(json.loads(raw["answer"])) if raw.get("answer") else None,
               json.loads(raw.get("meta") or "{}"), log=json.loads(raw.get("log") or "[]"))
    for name, value in raw.items():
        kind, _, pid = name.partition(":")
        if kind == "p" and pid:
            r.pending[pid] = json.loads(value)
        elif kind == "t" and pid:
            r.taken[pid] = value
        elif kind == "r" and pid:
            try:
                r.results[pid] = json.loads(value)
            except ValueError:  # a damaged result is no evidence: the probe is resent
                r.results[pid] = {"outcomes": [], "damaged": True}
    return r


class Searches:
    """The culprit searches of every repository."""

    def __init__(self, store: Store) -> None:
        self.client: Any = store.client
        self._take = register(self.client, CULPRIT_TAKE)
        self._beat = register(self.client, CULPRIT_BEAT)

    # -- the coordinator -----------------------------------------------------------
    def checked(self, repo: str, shas: list[str]) -> set[str]:
        """Which of these failing commits were looked at already."""
        if not shas:
            return set()
        found = self.client.hmget(keys.culprit_checked(keys.repo_id(repo)), shas)
        return {sha for sha, why in zip(shas, found, strict=True) if why is not None}

    def mark_checked(self, repo: str, sha: str, why: str) -> None:
        key = keys.culprit_checked(keys.repo_id(repo))
        self.client.hset(key, sha, why)
        if self.client.hlen(key) > CHECKED_SIZE:  # rare: drop an arbitrary old half
            names = self.client.hkeys(key)[: CHECKED_SIZE // 2]
            self.client.hdel(key, *names)

    def start(self, repo: str, sha: str, branch: str | None, tests: list[str],
              search: Search, meta: dict[str, Any]) -> bool:
        """Create the search of failing commit ``sha``; False when one exists."""
        rid = keys.repo_id(repo)
        key = keys.culprit(rid, sha)
        if not self.client.hsetnx(key, "repo", repo):
            return False
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={
            "sha": sha, "branch": branch or "", "tests": json.dumps(tests),
            "state": json.dumps(search.to_dict()), "status": "running",
            "meta": json.dumps({**meta, "started_at": _iso(now), "started": now})})
        pipe.zadd(keys.CULPRITS, {keys.member(rid, sha): int(now * 1000)})
        pipe.hset(keys.culprit_checked(rid), sha, "search")
        pipe.execute()
        return True

    def active(self, limit: int) -> list[tuple[str, str]]:
        """(rid, sha) of up to ``limit`` searches going on, oldest first."""
        out = []
        for m in self.client.zrange(keys.CULPRITS, 0, limit - 1):
            rid, _, sha = m.partition(":")
            out.append((rid, sha))
        return out

    def advance(self, repo: str, sha: str,
                step: Callable[[Record], dict[str, Any]]) -> dict[str, Any] | None:
        """Read the record, let ``step`` change it (it returns what it decided, with
        ``done`` True once answered) and write it back, unless a worker wrote to it
        meanwhile; None then (or when the record is gone), and nothing is written."""
        rid = keys.repo_id(repo)
        key = keys.culprit(rid, sha)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                record = _record(pipe.hgetall(key))
                if record is None:
                    pipe.unwatch()
                    self.client.zrem(keys.CULPRITS, keys.member(rid, sha))
                    return None
                before = set(record.pending) | set(record.taken) | set(record.results)
                decided = step(record)
                pipe.multi()
                self._write(pipe, key, record, before)
                if decided.get("done"):
                    pipe.zrem(keys.CULPRITS, keys.member(rid, sha))
                    for culprit in record.answer.commits if record.answer else ():
                        pipe.hset(keys.culprit_blamed(rid), culprit, sha)
                pipe.execute()
                return decided
            except redis.WatchError:
                return None

    def _write(self, pipe: Any, key: str, r: Record, before: set[str]) -> None:
        fields: dict[str, str] = {
            "state": json.dumps(r.search.to_dict()), "status": r.status,
            "meta": json.dumps(r.meta), "log": json.dumps(r.log[-LOG_SIZE:])}
        if r.answer is not None:
            fields["answer"] = json.dumps(r.answer.to_dict())
        fields.update({f"p:{pid}": json.dumps(v) for pid, v in r.pending.items()})
        pipe.hset(key, mapping=fields)
        gone = [f"{kind}:{pid}" for pid in before for kind in "ptr"
                if pid not in r.pending]
        if gone:
            pipe.hdel(key, *gone)

    def running(self) -> int:
        """Commits being run now (leased, no report yet): workers not free for probes."""
        return int(self.client.scard(keys.STARTED))

    def lease_held(self, probe_ids: list[str]) -> set[str]:
        """Which of these probes a live taker holds."""
        if not probe_ids:
            return set()
        held = self.client.mget([keys.probe_lease(p) for p in probe_ids])
        return {p for p, who in zip(probe_ids, held, strict=True) if who is not None}

    # -- reading -------------------------------------------------------------------
    def record(self, repo: str, sha: str) -> Record | None:
        return _record(self.client.hgetall(keys.culprit(keys.repo_id(repo), sha)))

    def blamed_by(self, repo: str, sha: str) -> str | None:
        """The failing commit whose search named ``sha`` (among its answer)."""
        return self.client.hget(keys.culprit_blamed(keys.repo_id(repo)), sha)

    # -- a probe's taker -----------------------------------------------------------
    def probe(self, repo: str, sha: str, probe_id: str) -> tuple[str, int, list[str]] | None:
        """What probe ``probe_id`` of the search of ``sha`` is: (commit, runs, tests);
        None when the search no longer waits for it."""
        key = keys.culprit(keys.repo_id(repo), sha)
        raw, tests = self.client.hmget(key, f"p:{probe_id}", "tests")
        if raw is None or tests is None:
            return None
        data = json.loads(raw)
        return str(data["commit"]), int(data["runs"]), list(json.loads(tests))

    def take(self, repo: str, sha: str, probe_id: str, who: str, ttl: float) -> int:
        """1 taken; 0 a live taker holds it; -1 nothing to take."""
        return int(self._take(keys=[keys.culprit(keys.repo_id(repo), sha),
                                    keys.probe_lease(probe_id)],
                              args=[probe_id, who, int(ttl * 1000)]))

    def beat(self, repo: str, sha: str, probe_id: str, who: str, ttl: float,
             result: dict[str, Any] | None = None) -> bool:
        """Renew the probe's lease (with ``result``: write it, once); False: stop."""
        args: list[Any] = [probe_id, who, int(ttl * 1000)]
        if result is not None:
            args.append(json.dumps(result))
        return bool(self._beat(keys=[keys.culprit(keys.repo_id(repo), sha),
                                     keys.probe_lease(probe_id)], args=args))


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
