"""Celery tasks: thin wrappers over :mod:`ciq.execution`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from celery import Task, shared_task

from .dispatch import RUN_TASK, make_sender
from .errors import BadInput
from .execution import execute, execute_chunk
from .gitrepo import validate_sha
from .keys import CHUNK_TASK
from .settings import Settings
from .sharding import Shards
from .store import Store

logger = logging.getLogger(__name__)


class CiqTask(Task):
    """Holds one :class:`Store` per process (pool processes are forked)."""

    _store: Store | None = None
    _store_pid: int | None = None
    _shards: Shards | None = None
    _send: Callable[[str, str], None] | None = None

    @property
    def settings(self) -> Settings:
        return self.app.ciq_settings

    @property
    def store(self) -> Store:
        if self._store is None or self._store_pid != os.getpid():
            self._store = Store.from_url(self.settings.result_backend)
            self._store_pid = os.getpid()
            self._shards = None
        return self._store

    @property
    def shards(self) -> Shards:
        store = self.store
        if self._shards is None:
            s = self.settings
            self._shards = Shards(store, s.lease_ttl, s.time_limit, s.output_limit)
            # Chunks of a commit already started go first (RPUSH: the next one taken).
            client = make_sender(s, store).client

            def send(queue: str, message: str) -> None:
                client.rpush(queue, message)

            self._send = send
        return self._shards

    @property
    def send(self) -> Callable[[str, str], None]:
        self.shards  # noqa: B018 (makes it)
        assert self._send is not None
        return self._send


@shared_task(bind=True, base=CiqTask, name=RUN_TASK, ignore_result=True)
def run(self: CiqTask, repo: str, sha: str, branch: str | None = None) -> str:
    """Test one commit of a repository and store its report (once).

    Returns a few words of outcome for Celery's log and Flower; the report itself is in the
    results backend.
    """
    s = self.settings
    try:
        sha = validate_sha(sha)
    except BadInput as exc:  # a hand-made message: nothing to test, nothing to redeliver
        logger.error("task: dropping run of %r: %s", repo, exc)
        return "rejected"
    worker = s.worker_name or self.request.hostname or os.uname().nodename
    return execute(self.store, s, repo, sha, branch, worker, self.shards, self.send)


@shared_task(bind=True, base=CiqTask, name=CHUNK_TASK, ignore_result=True)
def chunk(self: CiqTask, repo: str, sha: str, branch: str | None, index: int) -> str:
    """Run one chunk of a sharded commit (see :mod:`ciq.sharding`); the run that stores
    the last chunk's result stores the commit's report."""
    s = self.settings
    try:
        sha = validate_sha(sha)
        if not isinstance(index, int) or index < 0:
            raise BadInput(f"bad chunk index {index!r}")
    except BadInput as exc:
        logger.error("task: dropping chunk of %r: %s", repo, exc)
        return "rejected"
    worker = s.worker_name or self.request.hostname or os.uname().nodename
    return execute_chunk(self.store, self.shards, s, repo, sha, branch, index, worker)
