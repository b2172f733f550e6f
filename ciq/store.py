"""What ciq keeps in Redis: reports, the per-repository index, leases, observer positions.

Reports are written in the Celery results backend's own format, under the key Celery
uses for the run's task id (``celery-task-meta-<id>``), so ``AsyncResult(id).get()`` and
Flower read the same document as ``ciq report``. Every state change that must not be
half-done (claiming a commit, taking a lease, writing the final report, handing an
orphan back to the queue) is one Lua script, so it is atomic in Redis.

Keys (``rid`` is :func:`repo_id`, ``member`` is ``"<rid>:<sha>"``):

=============================  ======  ==================================================
``ciq:repos``                  hash    rid → repository as normalised
``ciq:index:<rid>``            zset    sha scored by first-seen time (µs): history
``ciq:commit:<rid>:<sha>``     hash    repo, commit, branch, enqueued_at, subject, author,
                                       attempts, run_id, worker, started_at
``ciq:lease:<rid>:<sha>``      string  run id of the live run; expires unless renewed
``ciq:started``                set     members that took a lease and have no report yet
``ciq:unsent``                 zset    members claimed but not yet handed to the broker
``ciq:position:<rid>``         hash    branch → last SHA the observer handled
``ciq:repo-config``            hash    rid → the operator's settings (JSON; may hold the
                                       secret of a [repo.notify] webhook)
``celery-task-meta-<task id>`` string  the final report (Celery result meta, no expiry)
``ciq:branch-state:<rid>``     hash    branch → its newest report: {status, commit,
                                       score (the commit's index score), finished_at}
``ciq:notify:events``          hash    event id → notification event (JSON, no secrets)
``ciq:notify:due``             zset    event id scored by when to deliver it (ms)
``ciq:notify:inflight``        zset    event id scored by the deadline of its claim (ms)
``ciq:notify:progress``        hash    event id → {tries, sent: targets done, error}
``ciq:notify:dead``            list    events given up on (JSON), newest first, capped
=============================  ======  ==================================================

Notifications (:mod:`ciq.notify`, :mod:`ciq.delivery`) are decided by the same script
that writes the final report, so each report of a branch makes at most one event.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from redis.sentinel import Sentinel

from .errors import NotFound, StoreUnavailable
from .keys import (
    CLAIM_SCRIPT,
    REPO_CONFIG,
    claim_call,
    commit_key,
    now_us,
    repo_id,
    routed_queue,
    summary_fields,
    task_id,
)
from .notify import BRANCH_STATE, DUE, EVENTS, event_of
from .report import Report, utcnow
from .settings import SentinelURL

__all__ = ["Lease", "Store", "connect", "repo_id", "task_id"]

# KEYS: lease, report, commit, started. ARGV: run id, ttl ms, member, worker, started_at.
# Returns -1 when the report exists, 0 when another run holds the lease, else attempts.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[3], 'run_id', ARGV[1], 'worker', ARGV[4], 'started_at', ARGV[5])
return redis.call('HINCRBY', KEYS[3], 'attempts', 1)
"""

#: Renews a lease (KEYS[1]) for ARGV[2] ms only while run ARGV[1] holds it.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: Deletes a lease (KEYS[1]) only while run ARGV[1] holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: report, commit, started, index, branch state, events, due. ARGV: meta json,
# member, status, summary fields (a flat json list), branch, sha, event id, event json,
# due (ms), score of a commit missing from the index (now, µs), finished_at. The summary
# goes into the commit's hash too, so that listing history never reads whole reports.
#
# A report on a branch then moves the branch's state and makes a notification event
# (ciq.notify.KINDS: broken, still-failing, fixed, passed) in the same atomic step, so a
# report stored once is an event made once. A report of a commit seen before the one the
# branch's state comes from (its index score is lower: an older commit that finished
# late, e.g. rerun after its worker died) changes neither: it is old news, and would
# otherwise flip the branch back. Which events are sent, and where, is decided when
# they are delivered (the `on` setting and the targets, read then).
_FINISH = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('HSET', KEYS[2], 'status', ARGV[3], unpack(cjson.decode(ARGV[4])))
redis.call('SREM', KEYS[3], ARGV[2])
if ARGV[5] == '' then return 1 end
local score = redis.call('ZSCORE', KEYS[4], ARGV[6]) or ARGV[10]
local raw = redis.call('HGET', KEYS[5], ARGV[5])
local prev = false
if raw then  -- a damaged state must not fail the script: the report is written already
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then prev = decoded end
end
if prev and (tonumber(prev.score) or 0) > tonumber(score) then return 1 end
redis.call('HSET', KEYS[5], ARGV[5], cjson.encode(
  {status = ARGV[3], commit = ARGV[6], score = score, finished_at = ARGV[11]}))
local was_red = prev and prev.status ~= 'passed'
local kind
if ARGV[3] == 'passed' then
  kind = was_red and 'fixed' or 'passed'
else
  kind = was_red and 'still-failing' or 'broken'
end
local previous = 'null'
if prev then
  previous = cjson.encode({status = prev.status, commit = prev.commit,
                           finished_at = prev.finished_at})
end
local meta = redis.call('HMGET', KEYS[2], 'subject', 'author')
local event = string.sub(ARGV[8], 1, -2) .. ',"kind":' .. cjson.encode(kind)
  .. ',"previous":' .. previous .. ',"subject":' .. cjson.encode(meta[1] or '')
  .. ',"author":' .. cjson.encode(meta[2] or '') .. '}'
redis.call('HSET', KEYS[6], ARGV[7], event)
redis.call('ZADD', KEYS[7], ARGV[9], ARGV[7])
return 1
"""

# KEYS: report, lease, started, unsent. ARGV: member. A started commit whose run is
# gone (no report, no live lease) moves from the started set to the unsent set, due at
# once, in one step: whoever then sends it, a crash in between loses nothing.
_ORPHAN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SREM', KEYS[3], ARGV[1]); return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
return 1
"""


def connect(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for a ciq Redis URL: ``redis://``, ``rediss://``, ``unix://``, or
    ``sentinel://...?master_name=NAME`` (see :class:`~ciq.settings.SentinelURL`), whose
    client asks the sentinels for the master again after a failover."""
    options = {"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 30,
               "retry_on_timeout": True, **options}
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **options)
    where = SentinelURL.parse(url)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(where.sentinels), sentinel_kwargs=timeouts)
    return sentinel.master_for(where.master_name, db=where.db, username=where.username,
                               password=where.password, **options)


@dataclass(frozen=True)
class Lease:
    repo: str
    sha: str
    run_id: str
    attempts: int


class Store:
    """ciq's state in the results-backend Redis. Safe to share between threads."""

    def __init__(self, client: redis.Redis) -> None:
        # Any: redis-py types every reply as bytes | str whatever decode_responses says;
        # this client always decodes (see from_url).
        self.client: Any = client
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._finish = client.register_script(_FINISH)
        self._orphan = client.register_script(_ORPHAN)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(connect(url, decode_responses=True))

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"cannot reach Redis ({exc}); check CIQ_RESULT_BACKEND and that Redis runs"
            ) from None

    # -- keys ---------------------------------------------------------------------------

    @staticmethod
    def _commit_key(rid: str, sha: str) -> str:
        return commit_key(rid, sha)

    @staticmethod
    def _lease_key(rid: str, sha: str) -> str:
        return f"ciq:lease:{rid}:{sha}"

    @staticmethod
    def report_key(repo: str, sha: str) -> str:
        return f"celery-task-meta-{task_id(repo, sha)}"

    # -- enqueueing -----------------------------------------------------------------------

    def claim(self, repo: str, sha: str, branch: str | None, meta: dict[str, str],
              push: tuple[str, str] | None = None) -> bool:
        """Record a commit as seen, once. False when it was claimed before (by anyone).

        ``push`` is (queue, broker message) when the broker is this Redis: the message is
        then pushed in the same atomic step. Otherwise the caller sends it and calls
        :meth:`mark_sent`.
        """
        keys, args = claim_call(repo, sha, branch, meta, push)
        return bool(self._claim(keys=keys, args=args))

    def mark_sent(self, repo: str, sha: str) -> None:
        self.client.zrem("ciq:unsent", f"{repo_id(repo)}:{sha}")

    def unsent(self, older_than: float) -> list[tuple[str, str, str | None]]:
        """Claimed commits whose enqueuer died before handing them to the broker."""
        cutoff = now_us() - int(older_than * 1_000_000)
        members = self.client.zrangebyscore("ciq:unsent", "-inf", cutoff)
        return [c for c in (self._commit_of(m) for m in members) if c]

    def _commit_of(self, member: str) -> tuple[str, str, str | None] | None:
        rid, _, sha = member.partition(":")
        repo, branch = self.client.hmget(self._commit_key(rid, sha), "repo", "branch")
        if not repo:
            return None
        return repo, sha, branch or None

    # -- runs ---------------------------------------------------------------------------

    def acquire(self, repo: str, sha: str, run_id: str, ttl: float, worker: str) -> int:
        """Take the lease of a commit: attempts so far, 0 if held, -1 if reported."""
        rid = repo_id(repo)
        return int(
            self._acquire(
                keys=[
                    self._lease_key(rid, sha),
                    self.report_key(repo, sha),
                    self._commit_key(rid, sha),
                    "ciq:started",
                ],
                args=[run_id, int(ttl * 1000), f"{rid}:{sha}", worker, utcnow()],
            )
        )

    def renew(self, repo: str, sha: str, run_id: str, ttl: float) -> bool:
        key = self._lease_key(repo_id(repo), sha)
        return bool(self._renew(keys=[key], args=[run_id, int(ttl * 1000)]))

    def release(self, repo: str, sha: str, run_id: str) -> None:
        self._release(keys=[self._lease_key(repo_id(repo), sha)], args=[run_id])

    def lease_holder(self, repo: str, sha: str) -> str | None:
        return self.client.get(self._lease_key(repo_id(repo), sha))

    def finish(self, report: Report) -> bool:
        """Store the final report unless one exists. True if this call wrote it.

        A report on a branch also moves the branch's state and queues a notification
        event, in the same atomic step (see ``_FINISH``).
        """
        rid = repo_id(report.repo)
        # Time first: events due in the same millisecond are then claimed in order.
        event_id = f"{now_us():014x}{uuid.uuid4().hex[:18]}"
        tid = task_id(report.repo, report.commit)
        meta: dict[str, Any] = {
            "status": "SUCCESS",
            "result": report.to_dict(),
            "traceback": None,
            "children": [],
            "date_done": report.finished_at,
            "task_id": tid,
        }
        return bool(
            self._finish(
                keys=[
                    self.report_key(report.repo, report.commit),
                    self._commit_key(rid, report.commit),
                    "ciq:started",
                    f"ciq:index:{rid}",
                    BRANCH_STATE + rid,
                    EVENTS,
                    DUE,
                ],
                args=[json.dumps(meta), f"{rid}:{report.commit}", report.status,
                      json.dumps(summary_fields(report)), report.branch or "",
                      report.commit, event_id, json.dumps(event_of(report, event_id)),
                      now_us() // 1000, now_us(), report.finished_at or ""],
            )
        )

    def branch_state(self, repo: str) -> dict[str, dict[str, str]]:
        """Each branch's newest report: {status, commit, score, finished_at}."""
        raw = self.client.hgetall(BRANCH_STATE + repo_id(repo))
        return {branch: json.loads(value) for branch, value in raw.items()}

    def release_orphans(self) -> list[tuple[str, str, str | None]]:
        """Move started commits with no report and no live lease (their run died) to the
        unsent set, where :meth:`unsent` finds them at once. Returns them."""
        orphans = []
        for member in self.client.smembers("ciq:started"):
            rid, _, sha = member.partition(":")
            found = self._commit_of(member)
            if found is None:
                self.client.srem("ciq:started", member)
                continue
            keys = [
                self.report_key(found[0], sha), self._lease_key(rid, sha), "ciq:started",
                "ciq:unsent",
            ]  # fmt: skip
            if self._orphan(keys=keys, args=[member]):
                orphans.append(found)
        return orphans

    def try_lock(self, name: str, ttl: float) -> bool:
        return bool(self.client.set(f"ciq:lock:{name}", "1", nx=True, px=int(ttl * 1000)))

    # -- reading --------------------------------------------------------------------------

    def report(self, repo: str, sha: str) -> Report | None:
        raw = self.client.get(self.report_key(repo, sha))
        if raw is None:
            return None
        return Report.from_dict(json.loads(raw)["result"])

    def commit(self, repo: str, sha: str) -> dict[str, str]:
        return self.client.hgetall(self._commit_key(repo_id(repo), sha))

    def repos(self) -> list[str]:
        return sorted(self.client.hvals("ciq:repos"))

    def resolve(self, repo: str, prefix: str) -> str:
        """The full SHA of the one known commit of ``repo`` starting with ``prefix``."""
        rid = repo_id(repo)
        if not self.client.hexists("ciq:repos", rid):
            raise NotFound(f"ciq has no commits of {repo}; see `ciq status` for known repositories")
        if len(prefix) == 40 and self.client.zscore(f"ciq:index:{rid}", prefix) is not None:
            return prefix
        matches = [
            sha
            for sha in self.client.zscan_iter(f"ciq:index:{rid}", match=f"{prefix}*", count=1000)
        ]
        shas = sorted({sha for sha, _ in matches})
        if not shas:
            raise NotFound(f"no commit of {repo} starts with {prefix}")
        if len(shas) > 1:
            raise NotFound(
                f"{prefix} is ambiguous in {repo} ({len(shas)} commits); give more digits"
            )
        return shas[0]

    def recent(self, repo: str, limit: int = 20) -> list[dict[str, Any]]:
        """Newest commits of a repository (see :func:`ciq.listing.recent`)."""
        from .listing import RedisPy, recent

        return recent(RedisPy(self.client), repo, limit)

    def prune(self, repo: str, older_than: float, dry_run: bool = False) -> int:
        """Delete final reports (and their history entries) of commits first seen more
        than ``older_than`` seconds ago; commits without a final report stay."""
        rid = repo_id(repo)
        cutoff = now_us() - int(older_than * 1_000_000)
        old = self.client.zrangebyscore(f"ciq:index:{rid}", "-inf", cutoff)
        pruned = 0
        for sha in old:
            key = self.report_key(repo, sha)
            if not self.client.exists(key):
                continue
            if not dry_run:
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(key, self._commit_key(rid, sha))
                pipe.zrem(f"ciq:index:{rid}", sha)
                pipe.execute()
            pruned += 1
        return pruned

    # -- operator settings ----------------------------------------------------------------

    def set_repo_config(self, repo: str, source: str, config: dict[str, Any]) -> None:
        """The operator's settings of a repository, for workers to read at run time."""
        payload = json.dumps({"source": source, "config": config})
        self.client.hset(REPO_CONFIG, repo_id(repo), payload)

    def repo_config(self, repo: str) -> tuple[str, dict[str, Any]] | None:
        raw = self.client.hget(REPO_CONFIG, repo_id(repo))
        if raw is None:
            return None
        data = json.loads(raw)
        return data["source"], data["config"]

    def queue_for(self, repo: str) -> str | None:
        """The broker queue the operator routes this repository's runs to, if any."""
        return routed_queue(self.client.hget(REPO_CONFIG, repo_id(repo)))

    # -- observer positions ---------------------------------------------------------------

    def position(self, repo: str, branch: str) -> str | None:
        return self.client.hget(f"ciq:position:{repo_id(repo)}", branch)

    def set_position(self, repo: str, branch: str, sha: str) -> None:
        self.client.hset(f"ciq:position:{repo_id(repo)}", branch, sha)
