"""Reading ciq's figures at scrape time (``/metrics``, :mod:`ciq.web.metrics`): every
repository's counters and histograms (:mod:`.metrics`), and gauges read from the state
itself: the broker's queues, the commits waiting for a run and how long the oldest has
waited, the runs in progress and the worker processes that workers announce.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import redis

from ..errors import StoreUnavailable
from ..supersede import backfill_list
from . import keys
from .metrics import RepoMetrics, parse
from .scripts import WAITING, register
from .shards import WORKER_SEEN_WITHIN

#: Members of the waiting sets that one scrape reads (each set): the number of waiting
#: commits and the age of the oldest are exact below that many.
WAITING_SCAN = 10_000


@dataclass(frozen=True)
class Snapshot:
    """The whole cluster's figures at one scrape."""

    repos: list[RepoMetrics]
    #: Broker queue → messages on it.
    queues: dict[str, int]
    #: Commits claimed and not leased yet (not sent, or sent and not taken).
    waiting: int
    #: Seconds the longest-waiting of them has waited (0: none waits).
    oldest_waiting: float
    #: Runs (commits, or chunks of sharded ones) holding a lease now.
    runs: int
    workers: int
    processes: int


class Reader:
    """Reads the figures of ciq's Redis (``client``) and of the broker's queues
    (``broker``: the same client when the broker is that Redis)."""

    def __init__(self, client: Any, broker: Any, default_queue: str) -> None:
        self.client, self.broker, self.default_queue = client, broker, default_queue
        self._waiting = register(client, WAITING)

    def read(self, now: float | None = None) -> Snapshot:
        """One scrape's figures, in three round trips and one to the broker.
        :class:`StoreUnavailable` when either Redis does not answer."""
        now = time.time() if now is None else now
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(keys.REPOS)
            pipe.hgetall(keys.WORKERS)
            pipe.hvals(keys.REPO_CONFIG)
            for name in (keys.STARTED, keys.SHARDED, keys.CHUNKS_STARTED):
                pipe.scard(name)
            repos, workers, configs, started, sharded, chunks = pipe.execute()
            waiting, oldest = self._waiting(keys=[keys.SENT, keys.UNSENT],
                                            args=[keys.COMMITS, keys.LEASES, WAITING_SCAN])
            rids = sorted(repos)
            pipe = self.client.pipeline(transaction=False)
            for rid in rids:
                pipe.hgetall(keys.metrics(rid))
            hashes = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis ({exc}); check CIQ_RESULT_BACKEND "
                                   "and that Redis runs") from None
        live = [w for w in (_worker(raw, now) for raw in workers.values()) if w is not None]
        queues = sorted({self.default_queue, *(q for w in live for q in w[0]),
                         *_routed(configs)})
        try:
            pipe = self.broker.pipeline(transaction=False)
            for queue in queues:  # its own list and its backfill (ciq.supersede)
                pipe.llen(queue)
                pipe.llen(backfill_list(queue))
            both = pipe.execute()
            lengths = [int(a) + int(b) for a, b in zip(both[::2], both[1::2], strict=True)]
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot reach the broker ({exc}); check CIQ_BROKER_URL "
                                   "and that Redis runs") from None
        return Snapshot(
            repos=[parse(repos[rid], h) for rid, h in zip(rids, hashes, strict=True)],
            queues=dict(zip(queues, map(int, lengths), strict=True)),
            waiting=int(waiting),
            oldest_waiting=max(0.0, now - int(oldest) / 1e6) if int(oldest) > 0 else 0.0,
            runs=max(0, int(started) - int(sharded) + int(chunks)),
            workers=len(live),
            processes=sum(w[1] for w in live))


def _worker(raw: str, now: float) -> tuple[list[str], int] | None:
    """A worker's entry (its queues, its processes) if it was seen lately."""
    try:
        entry = json.loads(raw)
        if now - float(entry["seen"]) > WORKER_SEEN_WITHIN:
            return None
        return [str(q) for q in entry["queues"]], int(entry["processes"])
    except (ValueError, KeyError, TypeError):
        return None


def _routed(configs: list[str]) -> set[str]:
    """The queues the operator's settings route repositories to."""
    found = set()
    for raw in configs:
        try:
            queue = json.loads(raw).get("config", {}).get("queue")
        except (ValueError, AttributeError):
            continue
        if isinstance(queue, str) and queue:
            found.add(queue)
    return found


def saturation(snapshot: Snapshot) -> float:
    """Runs in progress per worker process (NaN when no worker is seen)."""
    return snapshot.runs / snapshot.processes if snapshot.processes else math.nan
