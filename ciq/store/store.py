"""What ciq keeps in Redis: reports, the per-repository index, leases, observer positions.

Reports are written in the Celery results backend's own format, under the key Celery
uses for the run's task id (``celery-task-meta-<id>``), so ``AsyncResult(id).get()`` and
Flower read the same document as ``ciq report``. The key names are in :mod:`.keys`, the
atomic steps in :mod:`.scripts`. Notifications are decided by the same script that
writes the final report, so each report of a branch makes at most one event.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from ..errors import NotFound, StoreUnavailable
from ..report import Report
from . import claims, keys, listing, metrics
from .client import connect
from .events import event_of, new_event_id
from .scripts import (
    ACQUIRE,
    BRANCHES,
    FINISH,
    ORPHAN,
    RELEASE,
    RENEW,
    REPORTED,
    RedisPy,
    register,
)

#: What :meth:`Store.acquire` says of a superseded commit (and :meth:`Store.renew` of a
#: run whose commit was superseded meanwhile).
SUPERSEDED = -2
#: What :meth:`Store.acquire` says of a commit to move to the backfill.
BACKFILL = -3
#: What :meth:`Store.renew` says when the run's commit was superseded.
RENEWED_SUPERSEDED = 2


class Store:
    """ciq's state in the results-backend Redis. Safe to share between threads."""

    def __init__(self, client: redis.Redis) -> None:
        # Any: redis-py types every reply as bytes | str whatever decode_responses says;
        # this client always decodes (see from_url).
        self.client: Any = client
        #: The name its connections give Redis (CLIENT SETNAME), if any: the leases this
        #: store takes are then freed as soon as those connections are gone.
        self.name: str = client.connection_pool.connection_kwargs.get("client_name") or ""
        #: The same client for the functions that run over any connection.
        self.conn = RedisPy(client)
        self._acquire = register(client, ACQUIRE)
        self._renew = register(client, RENEW)
        self._release = register(client, RELEASE)
        self._finish = register(client, FINISH)
        self._orphan = register(client, ORPHAN)
        self._branches = register(client, BRANCHES)
        self._reported = register(client, REPORTED)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Store:
        """A store over ``url``; ``options`` go to redis-py (see :func:`.client.connect`)."""
        return cls(connect(url, decode_responses=True, **options))

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"cannot reach Redis ({exc}); check CIQ_RESULT_BACKEND and that Redis runs"
            ) from None

    # -- enqueueing -----------------------------------------------------------------------

    def claim(self, repo: str, sha: str, branch: str | None, meta: dict[str, str],
              message: tuple[str, str] | None = None) -> bool:
        """Record a commit as seen, once (see :func:`ciq.store.claims.claim`)."""
        return claims.claim(self.conn, repo, sha, branch, meta, message)

    def mark_sent(self, repo: str, sha: str, queue: str) -> bool:
        return claims.mark_sent(self.conn, repo, sha, queue)

    def sent_before(self, older_than: float) -> list[tuple[str, str, str | None, str]]:
        """Commits sent to the broker more than ``older_than`` seconds ago (or last seen
        on its queue then) that no run has leased since: (repo, sha, branch, queue)."""
        cutoff = keys.now_us() - int(older_than * 1_000_000)
        found = []
        for member in self.client.zrangebyscore(keys.SENT, "-inf", cutoff):
            rid, _, sha = member.partition(":")
            repo, branch, queue = self.client.hmget(keys.commit(rid, sha), "repo", "branch",
                                                    "queue")
            if not repo or self.client.exists(keys.report(repo, sha)):
                self.client.zrem(keys.SENT, member)  # pruned, or reported meanwhile
                continue
            found.append((repo, sha, branch or None, queue or ""))
        return found

    def still_queued(self, repo: str, sha: str) -> None:
        """The commit's message is still on its queue: look again in a while."""
        self.client.zadd(keys.SENT, {keys.member(keys.repo_id(repo), sha): keys.now_us()},
                         xx=True)

    def unsent(self, older_than: float) -> list[tuple[str, str, str | None]]:
        """Claimed commits whose enqueuer died before handing them to the broker."""
        cutoff = keys.now_us() - int(older_than * 1_000_000)
        members = self.client.zrangebyscore(keys.UNSENT, "-inf", cutoff)
        return [c for c in (self._commit_of(m) for m in members) if c]

    def _commit_of(self, member: str) -> tuple[str, str, str | None] | None:
        rid, _, sha = member.partition(":")
        repo, branch = self.client.hmget(keys.commit(rid, sha), "repo", "branch")
        if not repo:
            return None
        return repo, sha, branch or None

    # -- runs ---------------------------------------------------------------------------

    def acquire(self, repo: str, sha: str, run_id: str, ttl: float, worker: str,
                branch: str | None = None) -> int:
        """Take the lease of a commit: attempts so far, 0 if held, -1 if reported,
        :data:`SUPERSEDED` (held, to report it cancelled) or :data:`BACKFILL` (not held:
        send it to the backfill), see :mod:`ciq.supersede`."""
        rid = keys.repo_id(repo)
        now = keys.now_us()  # started_at and the queue wait are the same instant
        started_at = datetime.fromtimestamp(now / 1e6, UTC).isoformat(timespec="milliseconds")
        live = keys.branch_live(rid, branch) if branch else keys.NONE
        return int(self._acquire(
            keys=[keys.lease(rid, sha), keys.report(repo, sha), keys.commit(rid, sha),
                  keys.STARTED, keys.HOLDERS, keys.SENT, keys.metrics(rid), live],
            args=[run_id, int(ttl * 1000), keys.member(rid, sha), worker, started_at,
                  self.name, now, metrics.acquire_args(), keys.commit_prefix(rid),
                  keys.lease_prefix(rid)]))

    def renew(self, repo: str, sha: str, run_id: str, ttl: float) -> int:
        """Extend the lease: 0 lost, 1 renewed, :data:`RENEWED_SUPERSEDED`: renewed, but a newer
        commit of the branch superseded this one (the run stops)."""
        rid = keys.repo_id(repo)
        return int(self._renew(keys=[keys.lease(rid, sha), keys.commit(rid, sha)],
                               args=[run_id, int(ttl * 1000), "1"]))

    def superseded(self, repo: str, sha: str) -> tuple[str, str] | None:
        """(newer sha, when it was pushed) when a newer commit superseded this one."""
        by, at = self.client.hmget(keys.commit(keys.repo_id(repo), sha), "superseded_by",
                                   "superseded_at")
        return (by, at or "") if by else None

    def release(self, repo: str, sha: str, run_id: str) -> None:
        self._release(keys=[keys.lease(keys.repo_id(repo), sha), keys.HOLDERS], args=[run_id])

    def release_dead(self, repo: str, sha: str, run_id: str) -> None:
        """Free the lease of a run whose process is gone for sure, counting the death."""
        rid = keys.repo_id(repo)
        self._release(keys=[keys.lease(rid, sha), keys.HOLDERS, keys.commit(rid, sha)],
                      args=[run_id, "deaths"])

    def deaths(self, repo: str, sha: str, chunk: int | None = None) -> int:
        """How many runs of the commit (or of its chunk) ended with their worker process
        dying (seen by the watcher or the sweeper); runs that lost their lease to a
        Redis stall and stopped do not count."""
        rid = keys.repo_id(repo)
        if chunk is None:
            raw = self.client.hget(keys.commit(rid, sha), "deaths")
        else:
            raw = self.client.hget(keys.plan(rid, sha), f"d:{chunk}")
        return int(raw or 0)

    def lease_holder(self, repo: str, sha: str) -> str | None:
        return self.client.get(keys.lease(keys.repo_id(repo), sha))

    def finish(self, report: Report, fenced: bool = False) -> bool:
        """Store the final report unless one exists. True if this call wrote it.
        ``fenced``: only if no other run than the report's holds the commit's lease (a
        stale run's report is refused; one whose lease merely expired is taken).

        A report on a branch also moves the branch's state and queues a notification
        event, in the same atomic step (see ``lua/finish.lua``).
        """
        rid = keys.repo_id(report.repo)
        event_id = new_event_id()
        meta: dict[str, Any] = {
            "status": "SUCCESS",
            "result": report.to_dict(),
            "traceback": None,
            "children": [],
            "date_done": report.finished_at,
            "task_id": keys.task_id(report.repo, report.commit),
        }
        now = keys.now_us()
        return bool(self._finish(
            keys=[keys.report(report.repo, report.commit), keys.commit(rid, report.commit),
                  keys.STARTED, keys.index(rid), keys.branch_state(rid), keys.EVENTS,
                  keys.DUE, keys.lease(rid, report.commit), keys.HOLDERS, keys.SENT,
                  keys.metrics(rid),
                  keys.branch_live(rid, report.branch) if report.branch else keys.NONE],
            args=[json.dumps(meta), keys.member(rid, report.commit), report.status,
                  json.dumps(_summary_fields(report)), report.branch or "", report.commit,
                  event_id, json.dumps(event_of(report, event_id)), now // 1000, now,
                  report.finished_at or "", (report.run_id or "") if fenced else "",
                  metrics.finish_args(report)]
        ) == 1)  # fmt: skip

    def branch_state(self, repo: str) -> dict[str, dict[str, str]]:
        """Each branch's newest report: {status, commit, score, finished_at}."""
        raw = self.client.hgetall(keys.branch_state(keys.repo_id(repo)))
        return {branch: json.loads(value) for branch, value in raw.items()}

    def release_orphans(self) -> list[tuple[str, str, str | None]]:
        """Move started commits with no report and no live lease (their run died) to the
        unsent set, where :meth:`unsent` finds them at once. Returns them."""
        orphans = []
        for member in self.client.smembers(keys.STARTED):
            rid, _, sha = member.partition(":")
            found = self._commit_of(member)
            if found is None:
                self.client.srem(keys.STARTED, member)
                continue
            step = [keys.report(found[0], sha), keys.lease(rid, sha), keys.STARTED,
                    keys.UNSENT, keys.commit(rid, sha)]
            if self._orphan(keys=step, args=[member, keys.now_us()]):
                orphans.append(found)
        return orphans

    def try_lock(self, name: str, ttl: float) -> bool:
        return bool(self.client.set(keys.lock(name), "1", nx=True, px=int(ttl * 1000)))

    # -- reading --------------------------------------------------------------------------

    def report(self, repo: str, sha: str) -> Report | None:
        raw = self.client.get(keys.report(repo, sha))
        if raw is None:
            return None
        return Report.from_dict(json.loads(raw)["result"])

    def reports(self, repo: str, shas: list[str]) -> list[Report | None]:
        """The reports of these commits, in one round trip (None: none, or pruned)."""
        raws = self.client.mget([keys.report(repo, sha) for sha in shas]) if shas else []
        return [Report.from_dict(json.loads(raw)["result"]) if raw else None for raw in raws]

    def commit(self, repo: str, sha: str) -> dict[str, str]:
        return self.client.hgetall(keys.commit(keys.repo_id(repo), sha))

    def repos(self) -> list[str]:
        return sorted(self.client.hvals(keys.REPOS))

    def repos_by_id(self) -> dict[str, str]:
        """Every known repository by id."""
        return dict(self.client.hgetall(keys.REPOS))

    def repo_of(self, rid: str) -> str | None:
        """The repository of an id, if ciq knows it."""
        return self.client.hget(keys.REPOS, rid)

    def count(self, repo: str) -> int:
        """How many commits of the repository ciq has seen."""
        return int(self.client.zcard(keys.index(keys.repo_id(repo))))

    def resolve(self, repo: str, prefix: str) -> str:
        """The full SHA of the one known commit of ``repo`` starting with ``prefix``."""
        rid = keys.repo_id(repo)
        if not self.client.hexists(keys.REPOS, rid):
            raise NotFound(f"ciq has no commits of {repo}; see `ciq status` for known repositories")
        index = keys.index(rid)
        if len(prefix) == 40 and self.client.zscore(index, prefix) is not None:
            return prefix
        matches = self.client.zscan_iter(index, match=f"{prefix}*", count=1000)
        shas = sorted({sha for sha, _ in matches})
        if not shas:
            raise NotFound(f"no commit of {repo} starts with {prefix}")
        if len(shas) > 1:
            raise NotFound(
                f"{prefix} is ambiguous in {repo} ({len(shas)} commits); give more digits"
            )
        return shas[0]

    def recent(self, repo: str, limit: int = 20, offset: int = 0,
               branch: str | None = None) -> list[dict[str, Any]]:
        """Newest commits of a repository (see :func:`ciq.store.listing.recent`)."""
        return listing.recent(self.conn, repo, limit, offset, branch)

    def rows(self, repo: str, shas: list[str]) -> list[dict[str, Any]]:
        """Listing rows of these commits, in one round trip."""
        rid = keys.repo_id(repo)
        pipe = self.client.pipeline(transaction=False)
        for sha in shas:
            pipe.hgetall(keys.commit(rid, sha))
            pipe.exists(keys.lease(rid, sha))
        replies = pipe.execute()
        return [listing.row(repo, sha, leased, [x for kv in meta.items() for x in kv])
                for sha, meta, leased in zip(shas, replies[::2], replies[1::2], strict=True)]

    def branches(self, repo: str) -> list[tuple[str, int, dict[str, Any], str]]:
        """Each branch seen in the newest :data:`~ciq.store.listing.RECENT_WALK` commits,
        most recently active first: (name, commits, listing row of its head, SHA of its
        newest finished commit or '')."""
        rid = keys.repo_id(repo)
        found = self._branches(keys=[keys.index(rid)], args=[
            keys.commit_prefix(rid), keys.lease_prefix(rid), listing.RECENT_WALK]) or []
        return [(name, int(count), listing.row(repo, sha, leased, flat), finished)
                for name, count, sha, leased, flat, finished in found]

    def reported(self, repo: str, n: int, branch: str | None = None) -> list[str]:
        """The newest ``n`` commits with a final report (of ``branch`` only, when given),
        newest first, among the newest :data:`~ciq.store.listing.RECENT_WALK`."""
        rid = keys.repo_id(repo)
        return list(self._reported(keys=[keys.index(rid)], args=[
            keys.commit_prefix(rid), n, listing.RECENT_WALK, branch or ""]) or [])

    def prune(self, repo: str, older_than: float, dry_run: bool = False) -> int:
        """Delete final reports (and their history entries) of commits first seen more
        than ``older_than`` seconds ago; commits without a final report stay."""
        rid = keys.repo_id(repo)
        cutoff = keys.now_us() - int(older_than * 1_000_000)
        old = self.client.zrangebyscore(keys.index(rid), "-inf", cutoff)
        pruned = 0
        for sha in old:
            key = keys.report(repo, sha)
            if not self.client.exists(key):
                continue
            if not dry_run:
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(key, keys.commit(rid, sha))
                pipe.zrem(keys.index(rid), sha)
                pipe.execute()
            pruned += 1
        return pruned

    # -- operator settings ----------------------------------------------------------------

    def set_repo_config(self, repo: str, source: str, config: dict[str, Any]) -> None:
        """The operator's settings of a repository, for workers to read at run time."""
        payload = json.dumps({"source": source, "config": config})
        self.client.hset(keys.REPO_CONFIG, keys.repo_id(repo), payload)

    def repo_config(self, repo: str) -> tuple[str, dict[str, Any]] | None:
        raw = self.client.hget(keys.REPO_CONFIG, keys.repo_id(repo))
        if raw is None:
            return None
        data = json.loads(raw)
        return data["source"], data["config"]

    # -- observer positions ---------------------------------------------------------------

    def position(self, repo: str, branch: str) -> str | None:
        return self.client.hget(keys.position(keys.repo_id(repo)), branch)

    def set_position(self, repo: str, branch: str, sha: str) -> None:
        self.client.hset(keys.position(keys.repo_id(repo)), branch, sha)


def _summary_fields(report: Report) -> list[str]:
    """The flat HSET arguments of a report's summary, for the commit's hash."""
    s = report.summary
    values: dict[str, Any] = {
        "total": s.total, "passed": s.passed, "failed": s.failed, "errors": s.errors,
        "skipped": s.skipped, "duration": report.duration, "worker": report.worker or "",
        "finished_at": report.finished_at or "", "attempts": report.attempts,
    }  # fmt: skip
    return [str(x) for kv in values.items() for x in kv]
