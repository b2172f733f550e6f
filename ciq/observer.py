"""The repository observer: polls repositories and enqueues one run per new commit.

It fetches into its own bare mirror (never touching anyone's working tree) and keeps its
position — the last SHA it handled per repository and branch — in Redis. New commits
are enqueued oldest first; a branch seen for the first time, or rewritten by a
force-push, has only its head tested. Enqueueing goes through the
:class:`~ciq.dispatch.Sender`, whose claims make it idempotent: an observer killed
between enqueueing and saving its position, or a second observer on the same
repository, enqueues nothing twice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .dispatch import Sender
from .errors import CiqError, RepositoryError
from .gitrepo import MAX_NEW_COMMITS, CommitInfo, Mirror
from .store.keys import repo_id
from .store.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watch:
    """One repository to watch: its normalised name and the branches (empty: default)."""

    repo: str
    branches: tuple[str, ...] = ()
    latest_only: bool = False


@dataclass
class PollResult:
    enqueued: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Observer:
    def __init__(self, watches: list[Watch], store: Store, sender: Sender,
                 data_dir: Path) -> None:
        self.watches = watches
        self.store = store
        self.sender = sender
        self.mirror_root = data_dir / "mirrors"
        # A repository's default branch, asked of its remote once (an ls-remote per poll
        # would double the network round trips of every poll).
        self._defaults: dict[str, str] = {}

    def poll(self) -> PollResult:
        """Fetch every watched repository once and enqueue its new commits."""
        result = PollResult()
        for watch in self.watches:
            try:
                result.enqueued += self.poll_one(watch)
            except CiqError as exc:
                result.errors.append(f"{watch.repo}: {exc}")
        return result

    def poll_one(self, watch: Watch) -> list[str]:
        mirror = Mirror(self.mirror_root, watch.repo, repo_id(watch.repo))
        mirror.fetch()
        heads = mirror.branches()
        branches = list(watch.branches)
        if not branches:
            if watch.repo not in self._defaults:
                default = mirror.default_branch() or next(iter(sorted(heads)), None)
                if default is None:
                    raise RepositoryError("the repository has no branches yet")
                self._defaults[watch.repo] = default
            branches = [self._defaults[watch.repo]]
        enqueued: list[str] = []
        for branch in branches:
            head = heads.get(branch)
            if head is None:
                logger.warning("observer %s: no branch %r; skipping it", watch.repo, branch)
                continue
            enqueued += self._advance(mirror, watch, branch, head)
        return enqueued

    def _advance(self, mirror: Mirror, watch: Watch, branch: str, head: str) -> list[str]:
        last = self.store.position(watch.repo, branch)
        if last == head:
            return []
        if last is None:
            logger.info("observer %s: first look at %s; testing its head %s",
                        watch.repo, branch, head[:12])
            commits = [mirror.info(head)]
        elif not mirror.has_commit(last) or not mirror.is_ancestor(last, head):
            logger.warning("observer %s: %s was force-pushed (%s is not an ancestor of %s); "
                           "testing the new head only", watch.repo, branch, last[:12], head[:12])
            commits = [mirror.info(head)]
        elif watch.latest_only:
            commits = [mirror.info(head)]
        else:
            commits = mirror.new_commits(last, head, MAX_NEW_COMMITS)
            if len(commits) == MAX_NEW_COMMITS:
                logger.warning("observer %s: over %d new commits on %s; older ones skipped",
                               watch.repo, MAX_NEW_COMMITS, branch)
        enqueued = self._submit(watch.repo, branch, commits)
        self.store.set_position(watch.repo, branch, head)
        if commits:
            logger.info("observer %s: %d new commits on %s, %d enqueued",
                        watch.repo, len(commits), branch, len(enqueued))
        return enqueued

    def _submit(self, repo: str, branch: str, commits: list[CommitInfo]) -> list[str]:
        done = []
        for info in commits:
            if self.sender.submit(repo, info.sha, branch, info):
                done.append(info.sha)
        return done

    def run_forever(self, interval: float, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set (SIGTERM, Ctrl-C)."""
        logger.info("observer: watching %d repositories every %gs", len(self.watches), interval)
        while not stop.is_set():
            try:
                for error in self.poll().errors:
                    logger.error("observer %s; retrying in %gs", error, interval)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("observer: Redis is away (%s); retrying in %gs", exc, interval)
            except Exception:  # a bug: keep the daemon alive, say where
                logger.exception("observer: poll failed; retrying in %gs", interval)
            stop.wait(interval)
        logger.info("observer: stopped")
