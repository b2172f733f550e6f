"""Celery task messages, written straight to the Redis broker.

`ciq enqueue` runs inside git hooks, so its start-up is on the push path: importing
Celery and kombu's Redis transport costs about 0.3 s here, more than everything else
the command does. The message itself is small and specified — Celery's task message
protocol v2 (docs.celeryq.dev, "Message Protocol") inside kombu's Redis envelope (a
JSON document pushed on the list named after the queue; priority 0 uses the bare queue
name). This module builds exactly what ``app.send_task`` builds, and a test holds it to
that byte for byte, field by field, against the Celery that is installed.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

from .store.keys import task_id

#: Name of the Celery task that tests one commit.
RUN_TASK = "ciq.run"
#: Name of the Celery task that runs one chunk of a sharded commit.
CHUNK_TASK = "ciq.chunk"
#: Name of the Celery task that reruns a run's failing tests on another worker.
RERUN_TASK = "ciq.rerun"


def args_repr(repo: str, sha: str, branch: str | None, chunk: int | None = None) -> str:
    """What Flower and `celery inspect` show instead of a run's full arguments."""
    more = f", {chunk}" if chunk is not None else ""
    return f"({repo!r}, {sha[:12]!r}, {branch!r}{more})"


def run_message(repo: str, sha: str, branch: str | None, queue: str,
                chunk: int | None = None, priority: int = 0) -> str:
    """The broker payload of the run of (repo, sha, branch) on ``queue`` (task
    :data:`RUN_TASK`), or of one chunk of a sharded commit (:data:`CHUNK_TASK`) when
    ``chunk`` is its index. A ``priority`` above 0 goes on the list of that priority
    step, not on the queue's own (:func:`ciq.supersede.backfill_list`)."""
    task = RUN_TASK if chunk is None else CHUNK_TASK
    args: list[Any] = [repo, sha, branch, *([chunk] if chunk is not None else [])]
    return _message(task, task_id(repo, sha, chunk), args, args_repr(repo, sha, branch, chunk),
                    queue, priority)


def rerun_message(repo: str, sha: str, branch: str | None, run_id: str, queue: str) -> str:
    """The broker payload asking a worker to rerun the failing tests of run ``run_id`` of
    (repo, sha) (task :data:`RERUN_TASK`; the tests are in the run's request in Redis)."""
    args: list[Any] = [repo, sha, branch, run_id]
    shown = f"({repo!r}, {sha[:12]!r}, {branch!r}, {run_id[:8]!r})"
    return _message(RERUN_TASK, str(uuid.UUID(hex=run_id)), args, shown, queue)


def _message(task: str, tid: str, args: list[Any], shown: str, queue: str,
             priority: int = 0) -> str:
    body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": tid, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": tid, "parent_id": None,
        "argsrepr": shown, "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{os.uname().nodename}", "ignore_result": None,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }  # fmt: skip
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": tid,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)


#: Name of the Celery task that runs one probe of a culprit search (ciq.worker.probe).
PROBE_TASK = "ciq.probe"


def probe_message(repo: str, sha: str, probe_id: str, queue: str) -> str:
    """The broker payload asking a worker to make probe ``probe_id`` (32 hex digits) of
    the culprit search of failing commit (repo, sha) (task :data:`PROBE_TASK`; what to
    run, and where, is in the search's record in Redis)."""
    args: list[Any] = [repo, sha, probe_id]
    shown = f"({repo!r}, {sha[:12]!r}, {probe_id[:8]!r})"
    return _message(PROBE_TASK, str(uuid.UUID(hex=probe_id)), args, shown, queue)
