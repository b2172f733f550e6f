"""Celery tasks: thin wrappers over :class:`~ciq.worker.attempt.Attempts`."""

from __future__ import annotations

import logging
import os

from celery import Task, shared_task

from .errors import BadInput
from .gitrepo import validate_sha
from .message import CHUNK_TASK, PROBE_TASK, RERUN_TASK, RUN_TASK
from .worker.attempt import Attempts
from .worker.probe import run_probe

logger = logging.getLogger(__name__)


class CiqTask(Task):
    """Holds one :class:`Attempts` (store, sharding state, sender) per process: pool
    processes are forked, and a connection must not be shared across a fork."""

    _attempts: Attempts | None = None
    _pid: int | None = None

    @property
    def attempts(self) -> Attempts:
        if self._attempts is None or self._pid != os.getpid():
            self._attempts = Attempts.open(self.app.ciq_settings)
            self._pid = os.getpid()
        return self._attempts

    def worker_name(self) -> str:
        return (self.app.ciq_settings.worker_name or self.request.hostname
                or os.uname().nodename)


@shared_task(bind=True, base=CiqTask, name=RUN_TASK, ignore_result=True)
def run(self: CiqTask, repo: str, sha: str, branch: str | None = None) -> str:
    """Test one commit of a repository and store its report (once).

    Returns a few words of outcome for Celery's log and Flower; the report itself is in the
    results backend.
    """
    try:
        sha = validate_sha(sha)
    except BadInput as exc:  # a hand-made message: nothing to test, nothing to redeliver
        logger.error("task: dropping run of %r: %s", repo, exc)
        return "rejected"
    return self.attempts.run(repo, sha, branch, self.worker_name())


@shared_task(bind=True, base=CiqTask, name=CHUNK_TASK, ignore_result=True)
def chunk(self: CiqTask, repo: str, sha: str, branch: str | None, index: int) -> str:
    """Run one chunk of a sharded commit (see :mod:`ciq.sharding`); the run that stores
    the last chunk's result stores the commit's report."""
    try:
        sha = validate_sha(sha)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise BadInput(f"bad chunk index {index!r}")
    except BadInput as exc:
        logger.error("task: dropping chunk of %r: %s", repo, exc)
        return "rejected"
    return self.attempts.run(repo, sha, branch, self.worker_name(), chunk=index)


@shared_task(bind=True, base=CiqTask, name=RERUN_TASK, ignore_result=True)
def rerun(self: CiqTask, repo: str, sha: str, branch: str | None, run_id: str) -> str:
    """Rerun the failing tests of run ``run_id`` of a commit, which asked for a free worker
    to make them (see :mod:`ciq.worker.rerun`); nothing when it no longer waits."""
    try:
        sha = validate_sha(sha)
        _hex_id(run_id, "run id")
    except BadInput as exc:
        logger.error("task: dropping reruns of %r: %s", repo, exc)
        return "rejected"
    return self.attempts.rerun(repo, sha, branch, run_id, self.worker_name())


@shared_task(bind=True, base=CiqTask, name=PROBE_TASK, ignore_result=True)
def probe(self: CiqTask, repo: str, sha: str, probe_id: str) -> str:
    """Make probe ``probe_id`` of the culprit search of failing commit ``sha`` (see
    :mod:`ciq.worker.probe`); nothing when the search no longer waits for it."""
    try:
        sha = validate_sha(sha)
        _hex_id(probe_id, "probe id")
    except BadInput as exc:
        logger.error("task: dropping probe of %r: %s", repo, exc)
        return "rejected"
    attempts = self.attempts
    return run_probe(attempts.settings, attempts.store, repo, sha, probe_id,
                     self.worker_name())


def _hex_id(value: object, what: str) -> None:
    """``value`` must be an id ciq made (``uuid4().hex``): 32 lowercase hex digits."""
    if not (isinstance(value, str) and len(value) == 32
            and all(c in "0123456789abcdef" for c in value)):
        raise BadInput(f"bad {what} {value!r}")
