"""The one sender (ciq.dispatch): what it puts on the broker is what Celery would, reruns
jump the queue, and the reconciler routes what it sends again. Real redis-server."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ciq.dispatch import Sender
from ciq.message import RUN_TASK, run_message
from ciq.settings import Settings
from ciq.store import Store
from ciq.store.keys import task_id

from .helpers import PASSING

REPO = "/srv/repo"
SHA = "a" * 40


def test_our_message_is_the_one_celery_sends(store: Store, settings: Settings) -> None:
    # Given the same run sent by Celery's own send_task
    from ciq.celery import create_app
    from ciq.message import args_repr

    app = create_app(settings)
    app.send_task(RUN_TASK, args=[REPO, SHA, "main"], task_id=task_id(REPO, SHA), queue="q",
                  argsrepr=args_repr(REPO, SHA, "main"))
    theirs = json.loads(store.client.lpop("q"))
    sender = Sender(store.conn, store.conn, "q")
    sender.push([sender.run(REPO, SHA, "main")])
    ours = json.loads(store.client.lpop("q"))
    # Then the payloads agree on everything but per-send values
    volatile = {"delivery_tag", "reply_to", "argsrepr", "origin"}
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(theirs["body"]))
    assert set(ours) == set(theirs)
    for part in ("headers", "properties"):
        mine = {k: v for k, v in ours[part].items() if k not in volatile}
        celery = {k: v for k, v in theirs[part].items() if k not in volatile}
        assert mine == celery, part
    assert ours["headers"]["id"] == task_id(REPO, SHA)
    assert json.loads(run_message(REPO, SHA, None, "q"))["properties"][
        "delivery_info"] == {"exchange": "", "routing_key": "q"}
    app.close()  # not app.pool.force_close_all(): that pool is kombu's, shared by apps


def test_an_urgent_rerun_is_the_next_message_a_worker_takes(store: Store) -> None:
    sender = Sender(store.conn, store.conn, "q")
    sender.push([sender.run(REPO, "1" * 40, "main")])
    sender.push([sender.run(REPO, "2" * 40, "main")])
    sender.push([sender.run(REPO, "3" * 40, "main", first=True)])  # a rerun
    # workers BRPOP: the right end of the list comes first
    taken = [json.loads(store.client.brpop("q")[1])["headers"]["id"] for _ in range(3)]
    assert taken == [task_id(REPO, "3" * 40), task_id(REPO, "1" * 40), task_id(REPO, "2" * 40)]


def test_a_commit_sent_again_goes_to_its_repository_queue(
    make_repo, store: Store, settings: Settings, tmp_path: Path
):
    from ciq.dispatch import Sender, reconcile

    repo = make_repo(PASSING)
    store.set_repo_config(str(repo.path), "ops.toml", {"url": str(repo.path),
                                                        "queue": "heavy"})
    # A commit claimed but never sent (its enqueuer died) is sent by a worker's
    # reconciler to the repository's queue, not to the default one
    assert store.claim(str(repo.path), repo.head(), "main", {})
    assert reconcile(store, Sender.for_store(settings, store), unsent_after=0) == 1
    assert store.client.llen("heavy") == 1 and store.client.llen(settings.queue) == 0
