"""Reruns of a run's failing tests on another worker when one is free.

A flake that follows its host (a full disk, a port taken, a slow neighbour) shows only
when another host reruns the test, and a free worker has nothing better to do. The run
that found failing tests asks (:class:`Elsewhere`): it writes its request
(:mod:`ciq.store.reruns`) and puts a ``ciq.rerun`` message first in its queue. A free
worker takes it at once (:func:`take`), checks the commit out in its own cached
environment and makes the reruns, beating meanwhile; the asker waits, holding its lease.
When nobody takes the request within :data:`TAKE_WAIT` seconds (every worker busy), or
its taker stops beating for a lease lifetime (it died), the asker takes it back and
makes the reruns itself, in the checkout it still holds. A message that comes late
finds the request taken, or gone, and is dropped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from ..dispatch import Message, Sender
from ..flaky import RerunPlan, Reruns
from ..message import rerun_message
from ..report import Report
from ..runner.deflake import rerun
from ..settings import Settings
from ..store.reruns import RerunRequests
from ..store.store import Store
from .lease import patiently
from .spec import held_checkout

logger = logging.getLogger(__name__)

#: Seconds a free worker has to take a request before its asker reruns the tests itself:
#: a free worker blocks on its queue and takes a message first in line in milliseconds.
TAKE_WAIT = 1.5
#: Seconds between two looks of the asker at its request.
POLL = 0.05


@dataclass
class Elsewhere:
    """The asking side: :data:`ciq.runner.deflake.Elsewhere` for one run."""

    requests: RerunRequests
    sender: Sender
    repo: str
    sha: str
    branch: str | None
    run_id: str
    worker: str
    ttl: float
    #: True once the asking run lost its lease (its reruns are then worth nothing).
    cancelled: Callable[[], bool]
    #: The chunk the asking run holds (a sharded run); None: the whole commit.
    chunk: int | None = None

    def __call__(self, plan: RerunPlan, seconds: float) -> Reruns | None:
        tag = f"run {self.run_id}"
        try:
            self.requests.ask(self.run_id, plan, seconds, self.chunk)
            queue = self.sender.queue_for(self.repo)
            self.sender.push([Message(queue, rerun_message(self.repo, self.sha, self.branch,
                                                           self.run_id, queue), first=True)])
            return self._wait(tag, time.monotonic(), seconds)
        except redis.RedisError as exc:  # make them here: the checkout is still held
            logger.warning("%s: cannot ask another worker to rerun (%s); rerunning here",
                           tag, exc)
            return None
        finally:
            try:
                self.requests.drop(self.run_id)
            except redis.RedisError:
                pass  # it expires

    def _wait(self, tag: str, asked: float, seconds: float) -> Reruns | None:
        me = f"{self.worker} {self.run_id}"
        deadline = asked + seconds + self.ttl
        while not self.cancelled():
            taker, result = self.requests.look(self.run_id)
            if result is not None:
                try:
                    found = Reruns.from_json(result)
                except ValueError as exc:
                    logger.error("%s: damaged reruns from %s (%s); rerunning here", tag,
                                 taker, exc)
                    return None
                logger.info("%s: %s reran the failing tests (%d runs)", tag, taker,
                            found.runs)
                return found
            now = time.monotonic()
            if taker is None and now - asked >= TAKE_WAIT:
                if self._take_back(me, 0.0):
                    logger.info("%s: no free worker took the reruns; rerunning here", tag)
                    return None
            elif taker not in (None, me) and (now > deadline or self._take_back(me, self.ttl)):
                # (past the deadline, the request dropped on return stops its taker)
                logger.warning("%s: %s stopped rerunning; rerunning here", tag, taker)
                return None
            time.sleep(POLL)
        return None

    def _take_back(self, me: str, stale_after: float) -> bool:
        return self.requests.take(self.repo, self.sha, self.run_id, me, stale_after) == 1


@dataclass
class _Taken:
    """A taker's hold on a request, renewed by a :class:`~.lease.Heartbeat`."""

    requests: RerunRequests
    repo: str
    sha: str
    run_id: str
    who: str
    chunk: None = None

    @property
    def what(self) -> str:
        return f"reruns of run {self.run_id[:8]}"

    def take(self) -> int:
        return self.requests.take(self.repo, self.sha, self.run_id, self.who)

    def renew(self) -> bool:
        return self.requests.beat(self.repo, self.sha, self.run_id, self.who)

    def release(self) -> None:
        pass  # the asker drops the request once it has read it


def take(settings: Settings, store: Store, repo: str, sha: str, branch: str | None,
         run_id: str, worker: str) -> str:
    """The taking side (task ``ciq.rerun``): make the reruns run ``run_id`` asked for, if
    it still waits for them. Returns what happened, in a few words."""
    own = uuid.uuid4().hex
    tag = f"rerun {own}"
    held = _Taken(RerunRequests(store), repo, sha, run_id, f"{worker} {own}")
    if patiently(tag, held.take) != 1:
        return "reruns taken elsewhere, or no longer wanted"
    asked = patiently(tag, lambda: held.requests.plan(run_id))
    if asked is None:
        return "reruns no longer wanted"
    plan, seconds = asked
    end = time.monotonic() + seconds
    with held_checkout(settings, store, held, sha, branch, worker, tag,
                       min(settings.lease_ttl, 3.0)) as (ready, heartbeat):
        if isinstance(ready, Report):  # no evidence: the asker reruns them itself
            logger.warning("%s: could not prepare %s: %s", tag, sha[:12], ready.message)
            found = Reruns(notes=frozenset({f"could not rerun on {worker}"}))
        else:
            found = rerun(ready, plan, end)
    if heartbeat.is_lost() or not patiently(
            tag, lambda: held.requests.beat(repo, sha, run_id, held.who, found.to_json())):
        logger.info("%s: run %s no longer waits for its reruns; dropping them", tag, run_id)
        return "reruns dropped"
    logger.info("%s: reran %d failing tests of %s for run %s in %d runs", tag,
                len(plan.tests), sha[:12], run_id, found.runs)
    return f"reran {len(plan.tests)} tests"
