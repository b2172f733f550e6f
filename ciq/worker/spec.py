"""What a run on this worker does (:class:`~ciq.runner.runs.RunSpec`), from the settings
and the operator's stored configuration of the repository; and the checkout of a run
made for another one (reruns, culprit probes) under a hold of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from ..repoconfig import RepoConfig
from ..report import Report
from ..runner.box import Limits
from ..runner.commit import Checkout, prepare
from ..runner.runs import RunSpec, clean_up
from ..settings import Settings
from ..store.store import Store
from .lease import Heartbeat, Lease, patiently


def run_spec(settings: Settings, store: Store, repo: str, sha: str, branch: str | None,
             run_id: str, worker: str, number: int, tag: str) -> RunSpec:
    """The spec of run ``run_id`` (attempt ``number``) of ``sha``; ``tag`` names it in
    logs while Redis is away."""
    s = settings
    stored = patiently(tag, lambda: store.repo_config(repo))
    operator = RepoConfig.parse(stored[1], stored[0]) if stored else None
    return RunSpec(
        repo=repo, sha=sha, branch=branch, run_id=run_id,
        worker=worker, attempts=number, data_dir=s.data_dir,
        time_limit=s.time_limit, output_limit=s.output_limit,
        min_free_bytes=s.min_free_mb << 20, run_as=s.run_as, operator=operator,
        env_root=s.env_root, env_cache_size=s.env_cache_size,
        limits=Limits(s.memory_limit_mb << 20, s.process_limit, s.tmp_mb << 20),
        index_hosts=tuple(h.strip() for h in s.index_hosts.split(",") if h.strip()),
        shared=s.box_shared,
    )  # fmt: skip


@contextmanager
def held_checkout(settings: Settings, store: Store, held: Lease, sha: str,
                  branch: str | None, worker: str, tag: str,
                  beat: float) -> Iterator[tuple[Checkout | Report, Heartbeat]]:
    """The checkout of ``sha`` (or the report of why there is none) for work done on
    behalf of another run, while ``held`` is renewed every third of ``beat`` seconds:
    its boxes stop once the hold is lost (check ``heartbeat.is_lost()`` before storing
    anything). The run's folder is removed on the way out."""
    own = uuid.uuid4().hex
    heartbeat = Heartbeat(lambda: held, tag, beat)
    spec = replace(run_spec(settings, store, held.repo, sha, branch, own, worker, 1, tag),
                   cancelled=heartbeat.is_lost)
    try:
        with heartbeat, prepare(spec) as ready:
            yield ready, heartbeat
    finally:
        clean_up(settings.data_dir, own, held.repo)
