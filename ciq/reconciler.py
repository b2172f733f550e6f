"""The reconciler: gives a commit whose run died back to the queue.

The Redis transport restores a dead worker's unacknowledged message only after its
visibility timeout (an hour by default) on a sweep that runs about every 100 s, so
ciq does not wait for it. A commit that started (took a lease) and has neither a final
report nor a live lease has lost its run: it is re-sent at once. A commit claimed but
never sent (its enqueuer died in between) is sent too. Extra copies are harmless: the
lease and the final compare-and-set make them stand down.
"""

from __future__ import annotations

import logging

from .dispatch import RedisSender
from .sharding import Shards
from .store import Store

logger = logging.getLogger(__name__)

#: Seconds a claimed commit may stay unsent before the reconciler sends it; far above
#: the few milliseconds between a claim and its send.
UNSENT_AFTER = 30.0


def reconcile(store: Store, send: RedisSender, unsent_after: float = UNSENT_AFTER,
              shards: Shards | None = None) -> int:
    """One pass; returns how many commits (and chunks) it handed back to the queue."""
    for _repo, sha, _branch in store.release_orphans():
        logger.warning("reconciler: the run of %s died; enqueueing it again", sha[:12])
    count = 0
    for repo, sha, branch in store.unsent(unsent_after):
        logger.info("reconciler: sending %s of %s", sha[:12], repo)
        send(repo, sha, branch, store.queue_for(repo))  # where the operator routes it now
        store.mark_sent(repo, sha)
        count += 1
    if shards is not None:
        count += shards.reconcile(send.chunk)
    return count
