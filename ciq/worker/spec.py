"""What a run on this worker does (:class:`~ciq.runner.runs.RunSpec`), from the settings
and the operator's stored configuration of the repository."""

from __future__ import annotations

from ..repoconfig import RepoConfig
from ..runner.box import Limits
from ..runner.runs import RunSpec
from ..settings import Settings
from ..store.store import Store
from .lease import patiently


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
