"""Requests to rerun a run's failing tests on another worker, in Redis.

The run that found failing tests (the *asker*) writes its request in a hash of its own
(``keys.rerun``): the :class:`~ciq.flaky.RerunPlan` and the seconds the reruns may take.
Its ``ciq.rerun`` message goes first in its queue, so a free worker takes the request
within milliseconds (``lua/rerun_take.lua``); the asker takes it back itself when nobody
did within a short wait, or when its taker stopped beating. The taker beats while it
reruns and writes its result once (``lua/rerun_beat.lua``). Both steps hold only while
the asking run holds its lease (the commit's, or its chunk's in a sharded run): the
request of a dead or stale run is evidence for nobody, and its taker stops.
"""

from __future__ import annotations

from typing import Any

from ..flaky import RerunPlan
from . import keys
from .scripts import RERUN_BEAT, RERUN_TAKE, register
from .store import Store

#: Seconds a request outlives its reruns' time, for the asker to read the result.
KEEP = 120.0


class RerunRequests:
    def __init__(self, store: Store) -> None:
        self.client: Any = store.client
        self._take = register(self.client, RERUN_TAKE)
        self._beat = register(self.client, RERUN_BEAT)

    def ask(self, run_id: str, plan: RerunPlan, seconds: float,
            chunk: int | None = None) -> None:
        """Write run ``run_id``'s request: rerun ``plan`` within ``seconds``; the run holds
        the commit's lease, or that of its chunk ``chunk``."""
        key = keys.rerun(run_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"run": run_id, "plan": plan.to_json(),
                                "seconds": f"{seconds:.3f}",
                                "chunk": "" if chunk is None else str(chunk)})
        pipe.expire(key, int(seconds + KEEP))
        pipe.execute()

    def take(self, repo: str, sha: str, run_id: str, who: str,
             stale_after: float = 0.0) -> int:
        """Take run ``run_id``'s request for ``who``: 1 taken; 0 another taker holds it
        (and beat within ``stale_after`` seconds, or ``stale_after`` is 0); -1 nothing to
        take (no request, or the run that asked no longer holds the commit)."""
        lease = self._lease(repo, sha, run_id)
        return int(self._take(keys=[keys.rerun(run_id), lease],
                              args=[who, int(stale_after * 1000)]))

    def plan(self, run_id: str) -> tuple[RerunPlan, float] | None:
        """The request's plan and seconds; None when it is gone or damaged."""
        raw, seconds = self.client.hmget(keys.rerun(run_id), "plan", "seconds")
        try:
            return RerunPlan.from_json(raw), float(seconds)
        except (TypeError, ValueError):
            return None

    def beat(self, repo: str, sha: str, run_id: str, who: str,
             result: str | None = None) -> bool:
        """``who`` still reruns for a run that still holds the commit (with ``result``:
        and has found this). False: stop, nobody waits for these reruns any more."""
        lease = self._lease(repo, sha, run_id)
        args = [who] + ([result] if result is not None else [])
        return bool(self._beat(keys=[keys.rerun(run_id), lease], args=args))

    def _lease(self, repo: str, sha: str, run_id: str) -> str:
        """The lease the asking run holds: the commit's, or its chunk's."""
        chunk, rid = self.client.hget(keys.rerun(run_id), "chunk"), keys.repo_id(repo)
        return keys.chunk_lease(rid, sha, int(chunk)) if chunk and chunk.isdigit() else \
            keys.lease(rid, sha)

    def look(self, run_id: str) -> tuple[str | None, str | None]:
        """Who took the request (None: nobody yet), and their result (None: not yet)."""
        taker, result = self.client.hmget(keys.rerun(run_id), "taker", "result")
        return taker, result

    def drop(self, run_id: str) -> None:
        self.client.delete(keys.rerun(run_id))
