"""Scaling out on one machine: workers on separate "hosts" (their own data folders and
node names) against one Redis, and heavy repositories routed to the hosts that take them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ciq.settings import Settings
from ciq.store import Store

from .helpers import PASSING, run_ciq, wait_report


@pytest.mark.slow
def test_heavy_repositories_go_to_the_hosts_that_take_them(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
):
    # Given an operator's file that sends one repository to the `heavy` queue
    light, heavy = make_repo(PASSING), make_repo(PASSING)
    ops = tmp_path / "repos.toml"
    ops.write_text(f'[[repo]]\nurl = "{light.path}"\n\n'
                   f'[[repo]]\nurl = "{heavy.path}"\nqueue = "heavy"\n')
    # And two hosts: one takes the default queue, the big one takes only `heavy`
    worker("small", data_dir=tmp_path / "host-small", CIQ_ENV_DIR=str(tmp_path / "envs-s"))
    worker("big", data_dir=tmp_path / "host-big", queues="heavy",
           CIQ_ENV_DIR=str(tmp_path / "envs-b"))

    # When commits of both come through the observer, enqueue --config and the plain
    # (fast) enqueue a git hook runs
    done = run_ciq(settings, "observe", "--config", str(ops), "--once")
    assert done.returncode == 0, done.stderr
    later = {r: r.commit({"more": "1"}, "more") for r in (light, heavy)}
    assert run_ciq(settings, "enqueue", str(light.path)).returncode == 0
    assert run_ciq(settings, "enqueue", str(heavy.path)).returncode == 0
    again = heavy.commit({"again": "1"}, "again")
    assert run_ciq(settings, "enqueue", "--config", str(ops), str(heavy.path)).returncode == 0

    # Then every run of the heavy repository was made on the big host, the others not
    heavy_shas = [heavy.git("rev-parse", "HEAD~2"), later[heavy], again]
    for sha in heavy_shas:
        assert wait_report(store, str(heavy.path), sha, 90).worker.startswith("big@")
    for sha in (light.git("rev-parse", "HEAD~1"), later[light]):
        assert wait_report(store, str(light.path), sha, 90).worker.startswith("small@")
    # And each host keeps its own mirrors, of the repositories it ran only
    for host in ("host-big", "host-small"):
        assert len(list((tmp_path / host / "mirrors").glob("*.git"))) == 1
