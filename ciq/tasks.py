"""Celery tasks: thin wrappers over :mod:`ciq.execution`."""

from __future__ import annotations

import logging
import os

from celery import Task, shared_task

from .dispatch import RUN_TASK
from .errors import BadInput
from .execution import execute
from .gitrepo import validate_sha
from .settings import Settings
from .store import Store

logger = logging.getLogger(__name__)


class CiqTask(Task):
    """Holds one :class:`Store` per process (pool processes are forked)."""

    _store: Store | None = None
    _store_pid: int | None = None

    @property
    def settings(self) -> Settings:
        return self.app.ciq_settings

    @property
    def store(self) -> Store:
        if self._store is None or self._store_pid != os.getpid():
            self._store = Store.from_url(self.settings.result_backend)
            self._store_pid = os.getpid()
        return self._store


@shared_task(bind=True, base=CiqTask, name=RUN_TASK, ignore_result=True)
def run(self: CiqTask, repo: str, sha: str, branch: str | None = None) -> str:
    """Test one commit of a repository and store its report (once).

    Returns a one-word outcome for Celery's log and Flower; the report itself is in the
    results backend.
    """
    s = self.settings
    try:
        sha = validate_sha(sha)
    except BadInput as exc:  # a hand-made message: nothing to test, nothing to redeliver
        logger.error("task: dropping run of %r: %s", repo, exc)
        return "rejected"
    worker = s.worker_name or self.request.hostname or os.uname().nodename
    report = execute(self.store, s, repo, sha, branch, worker)
    return report.status if report else "stood down"
