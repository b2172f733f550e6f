"""What a ciq worker runs besides tasks: the reconciler, the stale-run sweeper, the
automatic quarantine of flaky tests, the coordinator of culprit searches
(:mod:`.culprits`) and the delivery of notifications.

They run in threads of the worker's main process (a Celery bootstep), not in the pool,
so they keep going while every pool process is busy with a long run, and no run waits
for a slow webhook.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import bootsteps

from ..dispatch import reconcile
from ..errors import ConfigError
from ..notify.delivery import Deliverer
from ..quarantine import auto_entry
from ..repoconfig import policy_of
from ..runner.runs import sweep_stale_runs
from ..stats import Release, Suggestion, releases, suggestions
from ..store import outbox
from ..store.quarantine import Quarantine
from ..store.store import Store
from .attempt import Attempts
from .culprits import coordinate
from .liveness import Watcher, resend_after

logger = logging.getLogger(__name__)

#: Seconds between two passes of the automatic quarantine, in the whole cluster (a lock
#: of that lifetime): a pass reads up to 100 whole reports per repository, and flakiness
#: changes over commits, not seconds.
AUTO_QUARANTINE_EVERY = 60.0
#: Repositories one pass looks at; the next pass takes the next ones.
REPOS_PER_PASS = 20
#: Tests one pass quarantines at most per repository: a burst of flakes is more likely a
#: broken environment than twenty flaky tests, and needs a person.
ADDS_PER_PASS = 10


@dataclass
class Changes:
    """What one pass of the automatic quarantine found and did in one repository."""

    mode: str
    suggested: list[Suggestion] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    released: list[Release] = field(default_factory=list)


def quarantine_repo(store: Store, repo: str, now: datetime | None = None) -> Changes:
    """One repository's automatic quarantine (its ``[repo.quarantine]`` policy): in mode
    "auto", quarantine the tests flaky on enough distinct commits and release automatic
    entries after their clean streak; in "suggest", only say which; in "off", nothing.
    A person's entries are never replaced nor released."""
    now = now or datetime.now(UTC)
    try:
        policy = policy_of(store.repo_config(repo))
    except ConfigError as exc:  # settings stored by an older ciq: say so, touch nothing
        logger.warning("auto-quarantine %s: bad stored settings: %s", repo, exc)
        return Changes("off")
    changes = Changes(policy.mode)
    if policy.mode == "off":
        return changes
    shas = store.reported(repo, policy.reads)
    reports = [r for r in store.reports(repo, shas) if r is not None]
    q = Quarantine(store)
    held = q.in_force(repo, now)
    changes.suggested = suggestions(reports, policy, held, now)
    due = releases(reports, policy, held, now)
    if policy.mode != "auto":
        changes.released = due  # shown as what auto mode would release
        return changes
    for s in changes.suggested[:ADDS_PER_PASS]:
        if q.add_auto(repo, auto_entry(s.test, s.flaky, s.window, policy.days, now), now):
            changes.added.append(s.test)
            q.record(repo, {"at": now.isoformat(timespec="seconds"), "action": "quarantined",
                            "test": s.test, "reason": s.reason})
            logger.info("auto-quarantine %s: quarantined %s (%s)", repo, s.test, s.reason)
    for r in due:
        if q.release_auto(repo, r.test) is not None:
            changes.released.append(r)
            q.record(repo, {"at": now.isoformat(timespec="seconds"), "action": "released",
                            "test": r.test, "reason": r.reason})
            logger.info("auto-quarantine %s: released %s (%s)", repo, r.test, r.reason)
    return changes


def auto_quarantine(store: Store, now: datetime | None = None,
                    limit: int = REPOS_PER_PASS) -> dict[str, Changes]:
    """One pass over up to ``limit`` repositories (a different slice each
    :data:`AUTO_QUARANTINE_EVERY` seconds); a failing repository does not stop the
    others."""
    repos = store.repos()
    if len(repos) > limit:
        start = int(time.time() // AUTO_QUARANTINE_EVERY) * limit % len(repos)
        repos = (repos[start:] + repos[:start])[:limit]
    done = {}
    for repo in repos:
        try:
            done[repo] = quarantine_repo(store, repo, now)
        except Exception as exc:  # one repository's bad data must not stop the rest
            logger.warning("auto-quarantine %s failed: %s", repo, exc)
    return done


class Housekeeping(bootsteps.StartStopStep):
    """Every ``reconcile_interval`` seconds: sweep this host's dead runs (and free their
    leases), deliver reports left in the outbox, and (in one worker of the cluster at a
    time) hand commits whose run died back to the queue. A second thread delivers due
    notification events (:mod:`ciq.notify.delivery`)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notifier: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._attempts: Attempts | None = None

    def start(self, worker: Any) -> None:
        # The same parts as a pool process's, with connections of their own name.
        mine = Attempts.open(worker.app.ciq_settings, "main")
        self._attempts = mine
        self._thread = threading.Thread(target=self._loop, args=(worker, mine),
                                        name="ciq-housekeeping", daemon=True)
        self._thread.start()
        # A thread of its own: a webhook that takes CIQ_NOTIFY_TIMEOUT to fail must not
        # hold up the reconciler.
        settings = mine.settings
        deliverer = Deliverer(mine.store, settings)
        self._notifier = threading.Thread(
            target=deliverer.run, args=(self._stop, settings.reconcile_interval),
            name="ciq-notify", daemon=True,
        )  # fmt: skip
        self._notifier.start()
        # A thread of its own too: it looks ten times a second, and a slow pass of the
        # reconciler must not delay the rerun of a commit whose worker just died.
        self._watcher = threading.Thread(target=Watcher(mine).run, args=(self._stop,),
                                         name="ciq-watcher", daemon=True)
        self._watcher.start()

    def _loop(self, worker: Any, mine: Attempts) -> None:
        settings, store, shards = mine.settings, mine.store, mine.shards
        queues = list(worker.app.amqp.queues.consume_from or [settings.queue])

        def announce() -> None:
            # How many runs this node takes at once, for the sharding plans of every
            # worker (autoscaling changes it: read it each time).
            processes = getattr(worker.pool, "num_processes", None) or worker.concurrency
            shards.announce(worker.hostname, queues, int(processes or 1))

        def sweep() -> None:
            for dead in sweep_stale_runs(settings.data_dir, os.uname().nodename):
                # Its process is gone for sure: free the lease now (only if that run
                # still holds it) so the rerun need not wait for the expiry.
                store.release_dead(dead.repo, dead.sha, dead.run_id)

        def reconciler() -> None:
            if store.try_lock("reconciler", settings.reconcile_interval * 0.9):
                reconcile(store, mine.sender, shards=shards,
                          resend_after=resend_after(settings))

        def quarantiner() -> None:
            if store.try_lock("auto-quarantine", AUTO_QUARANTINE_EVERY):
                auto_quarantine(store)

        def culprits() -> None:
            # one coordinator at a time; a pass is bounded (see .culprits)
            if store.try_lock("culprits", settings.reconcile_interval * 0.9):
                coordinate(settings, store, mine.sender, shards)

        steps = {"announce": announce, "sweep": sweep,
                 "outbox": lambda: outbox.deliver_pending(store, settings.data_dir),
                 "reconcile": reconciler, "auto-quarantine": quarantiner,
                 "culprits": culprits}
        while True:
            for name, step in steps.items():
                try:  # each on its own: a failing step must not hold up the others
                    step()
                except Exception as exc:  # Redis away, disk full...: log, try next time
                    logger.warning("housekeeping: %s failed: %s", name, exc)
            if self._stop.wait(settings.reconcile_interval):
                return

    def stop(self, worker: Any) -> None:
        self._stop.set()
        try:  # no longer counted by sharding plans (else for WORKER_SEEN_WITHIN more)
            if self._attempts is not None:
                self._attempts.shards.sign_off(worker.hostname)
        except Exception as exc:  # Redis away: the entry ages out by itself
            logger.warning("housekeeping: could not sign off: %s", exc)
        for thread in (self._thread, self._notifier, self._watcher):
            if thread is not None:
                thread.join(timeout=5)
