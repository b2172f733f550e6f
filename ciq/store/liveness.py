"""Leases tied to their holders' lives, and commits that went to the broker but never
reached a run.

A lease expires when its heartbeat stops: that catches a host that vanished silently,
but costs a whole lease lifetime. A worker process that dies on a live host says so at
once: the kernel closes its sockets and Redis drops its connections. Every connection
of a worker process carries the process's name (``CLIENT SETNAME``, see
:func:`.client.process_name`), each lease taken records its holder's name in the
holders hash (``lua/acquire.lua``), and the watcher (one worker of the cluster at a
time, :mod:`ciq.worker.liveness`) frees a lease whose holder has no connection left, so
the reconciler sends its commit again within a fraction of a second.

Right after a restart or a failover no process is connected yet, and right after a
stall the commands that timed out meanwhile have closed their connections: each process
reconnects at its next renewal. So the watcher judges nobody for a lease lifetime after
it sees a Redis take over from the one it saw before (another ``run_id`` than the one
kept in ``ciq:liveness``, which a restart with persistence or a replica carries over),
or after a gap in the watchers' looks (the time of the last look is kept there too).
"""

from __future__ import annotations

from typing import Any

from . import keys
from .scripts import DEAD, RELEASE, RENEW, register
from .store import Store


class Liveness:
    """The watcher's side: who holds what, and who is still connected."""

    def __init__(self, store: Store, lease_ttl: float) -> None:
        self.client: Any = store.client
        self.lease_ttl = lease_ttl
        self._dead = register(self.client, DEAD)
        self._renew = register(self.client, RENEW)
        self._release = register(self.client, RELEASE)

    def free_dead(self) -> list[str]:
        """Free the leases whose holder has no connection left; the lease keys freed."""
        # One round trip on every look: the holders, the watchers' record, Redis's clock,
        # and this look written down (a gap between looks is a stall: see _settling).
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.HOLDERS)
        pipe.hmget(keys.LIVENESS, "server", "since", "looked")
        pipe.time()
        pipe.info("server")
        holders, record, (secs, micros), server = pipe.execute()
        now = secs + micros / 1e6
        self.client.hset(keys.LIVENESS, "looked", now)
        if self._settling(server["run_id"], record, now) or not holders:
            return []
        clients = self.client.client_list(_type="normal")
        live = {c.get("name", "") for c in clients}
        dead = {k: v for k, v in holders.items() if _holder_name(v) not in live}
        freed = []
        for key, entry in dead.items():
            run_id, _name, counter, field = (entry.split(" ") + ["", "", "", ""])[:4]
            if self._dead(keys=[key, keys.HOLDERS, counter or keys.NONE],
                          args=[entry, run_id, field or "deaths"]):
                freed.append(key)
        return freed

    def _settling(self, server: str, record: list[str | None], now: float) -> bool:
        """Whether the holders' processes may have lost their connections without dying,
        less than a lease lifetime ago: nobody is judged then. That is when this Redis
        (its ``run_id``) took over from another one the watchers saw (a restart with
        persistence, a failover's new master: everyone reconnects), and when no watcher
        could look for a third of a lease lifetime (Redis stalled, and the commands in
        flight meanwhile timed out and closed their connections). A Redis with no record
        (new, or restarted empty) has no older holders to misjudge."""
        seen, since, looked = record
        gap = looked is not None and now - float(looked) > self.lease_ttl / 3
        if seen == server and not gap:
            return now - float(since or 0) < self.lease_ttl
        settle = seen is not None
        self.client.hset(keys.LIVENESS, mapping={"server": server,
                                                 "since": now if settle else 0})
        return settle

    # -- who watches ----------------------------------------------------------------------

    def watch(self, client: Any, ttl: float) -> bool:
        """Whether the caller watches now: it holds the watcher's lock (taken, kept, or
        taken over from a watcher whose connection is gone). ``client`` must be a
        single-connection client: the lock names that connection's id, so that others
        can tell at once that its process died."""
        name = client.connection_pool.connection_kwargs.get("client_name") or ""
        me = f"{client.client_id()} {name}"
        key = keys.lock("watcher")
        if self._renew(keys=[key], args=[me, int(ttl * 1000), "1"], client=client):
            return True
        holder = client.get(key)
        if holder is None:
            return False
        held_by = holder.partition(" ")[0]
        if not held_by.isdigit() or not client.client_list(client_id=[held_by]):
            self._release(keys=[key], args=[holder], client=client)  # it died: take over
            return bool(self._renew(keys=[key], args=[me, int(ttl * 1000), "1"], client=client))
        return False


def _holder_name(entry: str) -> str:
    """The connection name in a holders entry: "run id, name, counter hash, field"."""
    parts = entry.split(" ")
    return parts[1] if len(parts) > 1 else ""
