"""Every name ciq gives a thing in Redis, in one place.

Nothing outside :mod:`ciq.store` spells a key, and the Lua scripts under ``lua/`` take
every key (or, where a script walks many of one kind, the key's prefix) as an argument,
so that this table is the whole truth. Standard library only: `ciq enqueue` and
`ciq status` name keys without importing redis-py. ``rid`` is :func:`repo_id`, a
``member`` is ``"<rid>:<sha>"``.

======================================  ======  ============================================
``ciq:repos``                           hash    rid → repository as normalised
``ciq:index:<rid>``                     zset    sha scored by first-seen time (µs): history
``ciq:commit:<rid>:<sha>``              hash    repo, commit, branch, enqueued_at, subject,
                                                author, attempts, run_id, worker, started_at;
                                                once reported: status and the summary;
                                                enqueued_us, requeued_us (an orphan's return
                                                to the queue), deaths_seen: for metrics
``ciq:lease:<rid>:<sha>``               string  run id of the live run (``shards:<run id>``
                                                while its chunks run); expires unless renewed
``ciq:started``                         set     members that took a lease, no report yet
``ciq:unsent``                          zset    members claimed but not handed to the broker
``ciq:position:<rid>``                  hash    branch → last SHA the observer handled
``ciq:repo-config``                     hash    rid → the operator's settings (JSON; may hold
                                                the secret of a [repo.notify] webhook)
``ciq:lock:<name>``                     string  a short lock (one reconciler at a time)
``celery-task-meta-<task id>``          string  the final report (Celery result meta)
``ciq:branch-state:<rid>``              hash    branch → its newest report: {status, commit,
                                                score (the commit's index score), finished_at}
``ciq:plan:<rid>:<sha>``                hash    a sharded commit: plan (JSON), meta (repo,
                                                branch, queue: JSON), k (chunks), n (results
                                                so far), r:<i> (result), a:<i> (attempts)
``ciq:chunk-lease:<rid>:<sha>:<i>``     string  run id of chunk i's live run
``ciq:chunks:started``                  set     ``<member>:<i>`` of chunks taken, no result
``ciq:sharded``                         set     members with a plan and no report yet
``ciq:durations:<rid>``                 hash    test id → seconds in its last report
``ciq:workers``                         hash    node → {queues, processes, seen} (JSON)
``ciq:notify:events``                   hash    event id → notification event (JSON)
``ciq:notify:due``                      zset    event id scored by when to deliver it (ms)
``ciq:notify:inflight``                 zset    event id scored by its claim's deadline (ms)
``ciq:notify:progress``                 hash    event id → {tries, sent, error} (JSON)
``ciq:notify:dead``                     list    events given up on (JSON), newest first
``ciq:metrics:<rid>``                   hash    counters ``c:<name>[:<label>]`` and histogram
                                                buckets ``h:<name>:<bound>``, ``h:<name>:sum``
                                                (see :mod:`.metrics`)
``ciq:quarantine:<rid>``                hash    test id → quarantine entry {owner, reason,
                                                added_at, expires_at, added_by} (JSON)
``ciq:branch-live:<rid>:<branch>``      zset    sha scored as in the index: the branch's
                                                commits claimed and not reported yet (what
                                                a newer commit supersedes, ciq.supersede)
======================================  ======  ============================================

The broker's queues are lists named after the queue (kombu's Redis transport); they are
Celery's, not ciq's, and are named by the settings; a queue's backfill (priority 9) is
the list :func:`ciq.supersede.backfill_list` names. A commit's hash also holds
``supersede`` (its branch's policy when claimed), ``superseded_by`` and
``superseded_at`` (a newer commit of its branch was claimed: it is cancelled) and
``backfill`` (it was moved to the backfill once).
"""

from __future__ import annotations

import hashlib
import time
import uuid

#: Namespace of the deterministic task id of a (repository, commit) run.
_TASK_NS = uuid.UUID("6f1d0d4e-1c2a-4b55-9d7e-3f3c1f0a9c11")

REPOS = "ciq:repos"
STARTED = "ciq:started"
UNSENT = "ciq:unsent"
#: Commits handed to the broker and not leased yet (member -> when sent or last seen
#: queued, µs): the reconciler sends again one that stays there and is not queued.
SENT = "ciq:sent"
#: Who holds each lease (lease key -> "run id, holder's connection name"): a lease
#: whose holder's connection is gone is freed at once (see ``lua/dead.lua``).
HOLDERS = "ciq:holders"
#: Which Redis the watchers last saw (its run_id) and since when.
LIVENESS = "ciq:liveness"
REPO_CONFIG = "ciq:repo-config"
SHARDED = "ciq:sharded"
CHUNKS_STARTED = "ciq:chunks:started"
WORKERS = "ciq:workers"
EVENTS = "ciq:notify:events"
DUE = "ciq:notify:due"
INFLIGHT = "ciq:notify:inflight"
PROGRESS = "ciq:notify:progress"
DEAD = "ciq:notify:dead"
#: Every commit hash is this and its member (``<rid>:<sha>``); every lease too.
COMMITS = "ciq:commit:"
LEASES = "ciq:lease:"
#: A key no script writes: what a script is given where an optional key is absent.
NONE = "ciq:none"
#: What a commit's lease holds while its chunks run (then the planning run's id).
PLAN_HOLDER = "shards:"


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


def member(rid: str, sha: str) -> str:
    return f"{rid}:{sha}"


def index(rid: str) -> str:
    return f"ciq:index:{rid}"


def commit_prefix(rid: str) -> str:
    """The commit hashes of a repository are this and the SHA."""
    return f"{COMMITS}{rid}:"


def commit(rid: str, sha: str) -> str:
    return commit_prefix(rid) + sha


def lease_prefix(rid: str) -> str:
    """The leases of a repository's commits are this and the SHA."""
    return f"{LEASES}{rid}:"


def lease(rid: str, sha: str) -> str:
    return lease_prefix(rid) + sha


def position(rid: str) -> str:
    return f"ciq:position:{rid}"


def lock(name: str) -> str:
    return f"ciq:lock:{name}"


def report(repo: str, sha: str) -> str:
    """The final report, where Celery keeps the result of the run's task id."""
    return f"celery-task-meta-{task_id(repo, sha)}"


def branch_state(rid: str) -> str:
    return f"ciq:branch-state:{rid}"


def plan(rid: str, sha: str) -> str:
    return f"ciq:plan:{rid}:{sha}"


def chunk_lease(rid: str, sha: str, chunk: int) -> str:
    return f"{chunk_lease_prefix(rid, sha)}{chunk}"


def chunk_lease_prefix(rid: str, sha: str) -> str:
    """What the lease of each chunk of a sharded commit starts with (then its index)."""
    return f"ciq:chunk-lease:{rid}:{sha}:"


def live(rid: str, sha: str) -> str:
    """A stream of a commit's test outcomes as they happen (bounded, expiring)."""
    return f"ciq:live:{rid}:{sha}"


def durations(rid: str) -> str:
    return f"ciq:durations:{rid}"


def metrics(rid: str) -> str:
    return f"ciq:metrics:{rid}"


def quarantine(rid: str) -> str:
    return f"ciq:quarantine:{rid}"


def rerun(run_id: str) -> str:
    """A run's request that another worker rerun its failing tests (expiring)."""
    return f"ciq:rerun:{run_id}"


def branch_live(rid: str, branch: str) -> str:
    """The commits of a branch claimed and not reported yet (see ciq.supersede)."""
    return f"ciq:branch-live:{rid}:{branch}"


# Culprit finding (ciq.culprit, ciq.store.culprit): which commit first broke a test.
#
# ``ciq:culprit:<rid>:<sha>``  hash    the search for the failing commit <sha>: repo,
#                                      sha, branch, tests, state (JSON), status, answer,
#                                      started/finished; per probe ``p:<id>`` (what and
#                                      when sent), ``t:<id>`` (its taker), ``r:<id>``
#                                      (its result) until the coordinator reads it
# ``ciq:culprits``             zset    members with a search going on, by start (ms)
# ``ciq:culprit-checked:<rid>`` hash   failing sha -> why it needs no search / "search"
# ``ciq:culprit-blamed:<rid>`` hash    culprit sha -> failing shas whose search named it
# ``ciq:probe-lease:<id>``     string  the taker of a probe; expires unless renewed
CULPRITS = "ciq:culprits"


def culprit(rid: str, sha: str) -> str:
    """The culprit search of failing commit ``sha``."""
    return f"ciq:culprit:{rid}:{sha}"


def culprit_checked(rid: str) -> str:
    """The failing commits of a repository already looked at for a search."""
    return f"ciq:culprit-checked:{rid}"


def culprit_blamed(rid: str) -> str:
    """The commits a search named, and the failing commits that search started from."""
    return f"ciq:culprit-blamed:{rid}"


def probe_lease(probe_id: str) -> str:
    """Who runs probe ``probe_id`` of a culprit search (expiring)."""
    return f"ciq:probe-lease:{probe_id}"
