"""Live results: the worker's end of the in-box plugin's live file (:mod:`.selection`,
``--ciq-live``). While the tests run, a thread reads what the box appended to the file,
keeps the lines that are a test's outcome, and hands them in batches to the caller's
callback (:attr:`.runs.RunSpec.live`, which puts them in Redis): a batch every
:data:`FLUSH` seconds at most, whatever the number of tests.

The file is the box's, so it is read as untrusted input: never through a link (it is
opened with ``O_NOFOLLOW``; a link is retried later and never followed), only a plain
file (a FIFO or a device is given up on), at most :data:`MAX_BYTES` of it, lines longer
than :data:`MAX_LINE` dropped, and every line checked for the fields and types it must
have. Nothing the box writes there can stop the run or change its report: the report
comes from the JUnit XML alone. No Redis, no Celery.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The live file in a run's out/ folder.
LIVE_FILE = "live.jsonl"
#: Seconds between two reads of the file (and at most between a failure and its batch).
FLUSH = 0.5
#: Bytes of the file read in all (the in-box plugin stops at 16 MiB too).
MAX_BYTES = 16 << 20
#: Bytes of one line; a longer one is junk, dropped.
MAX_LINE = 4096
#: Bytes read at once.
_CHUNK = 1 << 20
#: Characters of a test id and of a message passed on.
MAX_ID, MAX_MESSAGE = 1000, 500
#: The outcomes a line may say.
OUTCOMES = frozenset({"passed", "failed", "error", "skipped"})
#: Seconds the thread gets to send its last batch once the tests are over.
JOIN = 5.0

#: What the callback is given: a batch of entries {id, outcome, duration, message, when}.
Sink = Callable[[list[dict[str, Any]]], None]

logger = logging.getLogger(__name__)


def entry(line: bytes) -> dict[str, Any] | None:
    """A test's outcome from one line of the live file; None if it is not one."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    test, outcome = raw.get("id"), raw.get("outcome")
    duration, when, message = raw.get("duration", 0), raw.get("when"), raw.get("message", "")
    if not isinstance(test, str) or not test or outcome not in OUTCOMES:
        return None
    found: dict[str, Any] = {"id": test[:MAX_ID], "outcome": outcome,
                             "duration": _seconds(duration), "when": _seconds(when)}
    if outcome in ("failed", "error"):
        found["message"] = message[:MAX_MESSAGE] if isinstance(message, str) else ""
    return found


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0


class Tail:
    """Follows a run's live file from a thread; see the module's docstring."""

    def __init__(self, path: Path, sink: Sink, t0: float) -> None:
        self.path, self.sink, self.t0 = path, sink, t0
        self.fd: int | None = None
        self.given_up = False
        self.read = 0
        self.rest = b""
        self.skipping = False  # inside a line that is too long
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ciq-live", daemon=True)
        #: Seconds from the run's start (``t0``) to the first failure seen; None: none.
        self.first_failure: float | None = None

    @property
    def timings(self) -> dict[str, float]:
        """What the report's timings get: ``first_failure`` once a failure was seen."""
        return {} if self.first_failure is None else {"first_failure": self.first_failure}

    def _loop(self) -> None:
        while not self.stop.wait(FLUSH):
            self._step()
        self._step()  # what came last
        if self.fd is not None:
            os.close(self.fd)

    def _step(self) -> None:
        try:
            batch = self._new()
        except OSError as exc:
            logger.warning("live %s: cannot read it (%s); no more live results", self.path,
                           exc)
            self.given_up = True
            return
        if not batch:
            return
        if self.first_failure is None and any(e["outcome"] in ("failed", "error")
                                              for e in batch):
            self.first_failure = round(time.monotonic() - self.t0, 3)
        try:
            self.sink(batch)
        except Exception:  # Redis away, say: the report still tells everything
            logger.warning("live %s: could not pass %d outcomes on", self.path, len(batch),
                           exc_info=True)

    def _new(self) -> list[dict[str, Any]]:
        """The entries of the lines completed since the last look."""
        if self.given_up or not self._opened():
            return []
        assert self.fd is not None
        found: list[dict[str, Any]] = []
        while self.read < MAX_BYTES:
            data = os.read(self.fd, min(_CHUNK, MAX_BYTES - self.read))
            if not data:
                break
            self.read += len(data)
            found += self._lines(data)
        if self.read >= MAX_BYTES:
            self.given_up = True
        return found

    def _lines(self, data: bytes) -> list[dict[str, Any]]:
        *complete, last = (self.rest + data).split(b"\n")
        found = []
        for line in complete:
            if self.skipping:  # the end of a line too long
                self.skipping = False
            elif len(line) <= MAX_LINE and (e := entry(line)) is not None:
                found.append(e)
        if len(last) > MAX_LINE:
            last, self.skipping = b"", True
        self.rest = last
        return found

    def _opened(self) -> bool:
        """Whether the file is open: a plain file, not through a link."""
        if self.fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False  # not there yet, or a link: look again later
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            logger.warning("live %s: not a plain file; no live results", self.path)
            self.given_up = True
            return False
        self.fd = fd
        return True


@contextmanager
def tail(path: Path, sink: Sink | None, t0: float) -> Iterator[Tail]:
    """Follow the live file at ``path`` for the block, passing its outcomes to ``sink``
    (without one, nothing is read); ``t0`` is the run's start (time.monotonic()). Yields
    the :class:`Tail`, whose :attr:`~Tail.timings` are complete once the block ends."""
    follower = Tail(path, sink or (lambda batch: None), t0)
    if sink is None:
        yield follower
        return
    follower.thread.start()
    try:
        yield follower
    finally:
        follower.stop.set()
        follower.thread.join(JOIN)
