"""Names in Redis and the claim of a commit: light enough for the push path.

Everything here is plain standard library, so that `ciq enqueue` can claim a commit
without importing redis-py (see :mod:`ciq.push`). :mod:`ciq.store` uses the same script
and arguments through redis-py.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Report

#: Namespace of the deterministic task id of a (repository, commit) run.
_TASK_NS = uuid.UUID("6f1d0d4e-1c2a-4b55-9d7e-3f3c1f0a9c11")


def repo_id(repo: str) -> str:
    """A short stable key for a normalised repository path or URL."""
    return hashlib.sha1(repo.encode()).hexdigest()[:16]


def task_id(repo: str, sha: str, chunk: int | None = None) -> str:
    """The Celery task id of a commit's run (or of one chunk of it): the same for every
    attempt of it."""
    name = f"{repo_id(repo)}:{sha}" + (f":{chunk}" if chunk is not None else "")
    return str(uuid.uuid5(_TASK_NS, name))


def now_us() -> int:
    """Microseconds since the epoch: the score of history and unsent entries."""
    return int(time.time() * 1_000_000)


def commit_key(rid: str, sha: str) -> str:
    return f"ciq:commit:{rid}:{sha}"


# KEYS: commit, index, unsent, repos, broker queue. ARGV: flat fields json, now in µs,
# sha, member, rid, repo, message. With a message (the broker is this same Redis) the
# claim and the broker message are one atomic step; without, the commit waits in the
# unsent set until the caller has sent it. Index scores only grow, so commits claimed in
# the same microsecond keep their order (an observer claims a push's commits in a loop).
CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[1])))
local score = tonumber(ARGV[2])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
redis.call('ZADD', KEYS[2], string.format('%d', score), ARGV[3])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[7])
else
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
end
return 1
"""


def claim_call(repo: str, sha: str, branch: str | None, meta: dict[str, str],
               push: tuple[str, str] | None) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of :data:`CLAIM_SCRIPT` for one commit."""
    rid = repo_id(repo)
    fields = {
        **{k: v for k, v in meta.items() if v is not None},
        "repo": repo,
        "commit": sha,
        "branch": branch or "",
        "enqueued_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "attempts": "0",
    }
    flat = [x for kv in fields.items() for x in kv]
    keys = [commit_key(rid, sha), f"ciq:index:{rid}", "ciq:unsent", "ciq:repos",
            push[0] if push else "ciq:none"]
    args: list[str | int] = [json.dumps(flat), now_us(), sha, f"{rid}:{sha}",
                             rid, repo, push[1] if push else ""]
    return keys, args

#: Name of the Celery task that tests one commit.
RUN_TASK = "ciq.run"
#: Name of the Celery task that runs one chunk of a sharded commit.
CHUNK_TASK = "ciq.chunk"


#: Report fields copied into a commit's hash when it is reported (for listings).
SUMMARY_FIELDS = ("total", "passed", "failed", "errors", "skipped", "duration", "worker",
                  "finished_at", "attempts")


def summary_fields(report: Report) -> list[str]:
    """The flat HSET arguments of a report's summary, for the commit's hash."""
    s = report.summary
    values: dict[str, Any] = {
        "total": s.total, "passed": s.passed, "failed": s.failed, "errors": s.errors,
        "skipped": s.skipped, "duration": report.duration, "worker": report.worker or "",
        "finished_at": report.finished_at or "", "attempts": report.attempts,
    }  # fmt: skip
    return [str(x) for kv in values.items() for x in kv]


#: Newest commits of a repository that a listing filtered by branch looks through.
RECENT_WALK = 10_000

# KEYS: none (one repository's keys are named from ARGV[1]). ARGV: rid, how many, and
# optionally how many to skip (default 0), a branch (default '': every branch) and how
# many of the newest commits a branch filter looks through (default RECENT_WALK), so
# that one call never keeps Redis busy for long. The newest commits of a repository:
# {sha, lease held (0/1), flat commit hash} each.
RECENT_SCRIPT = """
local rid, limit, offset = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3] or '0')
local branch, walk = ARGV[4] or '', tonumber(ARGV[5] or '@WALK@')
if limit <= 0 then return {} end
local index = 'ciq:index:' .. rid
local shas = {}
if branch == '' then
  shas = redis.call('ZREVRANGE', index, offset, offset + limit - 1)
else
  local seen, start = 0, 0
  while #shas < limit and start < walk do
    local chunk = redis.call('ZREVRANGE', index, start, math.min(start + 499, walk - 1))
    if #chunk == 0 then break end
    for _, sha in ipairs(chunk) do
      if #shas >= limit then break end
      local b = redis.call('HGET', 'ciq:commit:' .. rid .. ':' .. sha, 'branch')
      if b == branch then
        if seen >= offset then shas[#shas + 1] = sha end
        seen = seen + 1
      end
    end
    start = start + 500
  end
end
local out = {}
for i, sha in ipairs(shas) do
  local h = redis.call('HGETALL', 'ciq:commit:' .. rid .. ':' .. sha)
  out[i] = {sha, redis.call('EXISTS', 'ciq:lease:' .. rid .. ':' .. sha), h}
end
return out
""".replace("@WALK@", str(RECENT_WALK))


#: Hash of the operator's settings per repository: repo id → {"source", "config"} (JSON).
REPO_CONFIG = "ciq:repo-config"


def routed_queue(raw: str | bytes | None) -> str | None:
    """The queue the operator's settings (a REPO_CONFIG value) route a repository to."""
    if raw is None:
        return None
    queue = json.loads(raw).get("config", {}).get("queue")
    return queue if isinstance(queue, str) and queue else None
