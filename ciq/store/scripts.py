"""The Lua scripts of ciq's atomic steps, each in its own file under ``lua/``, read once
when this module is imported; and how any Redis connection runs them.

Every state change that must not be half-done (claiming a commit, taking a lease,
writing the final report, handing an orphan back to the queue, planning a sharded run,
claiming a notification) is one script, so it is atomic in Redis. A script's first
lines say what its KEYS and ARGV are. Standard library only: the push path runs the
claim over :mod:`ciq.store.resp`, everything else over redis-py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

_FOLDER = Path(__file__).parent / "lua"


@dataclass(frozen=True)
class Script:
    name: str
    text: str = field(repr=False)

    @property
    def sha(self) -> str:
        """What EVALSHA names it by."""
        return hashlib.sha1(self.text.encode()).hexdigest()

    @classmethod
    def load(cls, name: str) -> Script:
        return cls(name, (_FOLDER / f"{name}.lua").read_text())


class Redisish(Protocol):
    """What the light paths need of a Redis connection: :class:`~ciq.store.resp.
    RespConnection` has it, and :class:`RedisPy` gives it to a redis-py client."""

    def call(self, *args: str | int) -> Any: ...

    def eval(self, script: Script, keys: list[str], args: list[str | int]) -> Any: ...


class RedisPy:
    """:class:`Redisish` over a redis-py client (plain, TLS or Sentinel)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def call(self, *args: str | int) -> Any:
        return self.client.execute_command(*args)

    def eval(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        return self.client.eval(script.text, len(keys), *keys, *args)


def register(client: Any, script: Script) -> Any:
    """The script as a redis-py callable (EVALSHA, loading it once when Redis lacks it)."""
    return client.register_script(script.text)


# Commits: claim, history, leases, final report, orphans.
CLAIM = Script.load("claim")
RECENT = Script.load("recent")
ACQUIRE = Script.load("acquire")
RENEW = Script.load("renew")
RELEASE = Script.load("release")
FINISH = Script.load("finish")
ORPHAN = Script.load("orphan")
SENT = Script.load("sent")
DEAD = Script.load("dead")
HOLD = Script.load("hold")
# Sharded runs: plan, chunk leases and results, the reconciler's part, durations.
PLAN = Script.load("plan")
TAKE = Script.load("take")
CHUNK_DONE = Script.load("chunk_done")
CHUNK_ORPHAN = Script.load("chunk_orphan")
CLEAN_PLAN = Script.load("clean_plan")
DURATIONS = Script.load("durations")
# Reruns of a commit's failing tests by another worker.
RERUN_TAKE = Script.load("rerun_take")
RERUN_BEAT = Script.load("rerun_beat")
# Live results: a commit's first failure and its notification event.
FIRST_FAILURE = Script.load("first_failure")
# Notification events.
EVENT_CLAIM = Script.load("event_claim")
EVENT_ACK = Script.load("event_ack")
EVENT_RETRY = Script.load("event_retry")
# Quarantined tests.
QUARANTINE_ADD = Script.load("quarantine_add")
QUARANTINE_PRUNE = Script.load("quarantine_prune")
# What the web UI reads.
BRANCHES = Script.load("branches")
REPORTED = Script.load("reported")
WAITING = Script.load("waiting")
# Culprit finding: a probe's lease and result.
CULPRIT_TAKE = Script.load("culprit_take")
CULPRIT_BEAT = Script.load("culprit_beat")
