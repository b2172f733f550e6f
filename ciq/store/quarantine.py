"""Quarantined tests in Redis: one hash per repository, test id → entry (JSON).

What an entry is and what it does to a report is :mod:`ciq.quarantine`; this module
keeps them. Operators add and remove entries (`ciq quarantine`, the web UI's API);
workers read the ones in force when they store a final report (:func:`muted`). An
expired entry stays listed, as expired, for :data:`~ciq.quarantine.PRUNE_AFTER_DAYS`,
then the next listing deletes it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import redis

from ..errors import BadInput, NotFound
from ..quarantine import MAX_ENTRIES, Entry, apply, check_test_id
from ..report import Report
from . import keys
from .scripts import QUARANTINE_ADD, QUARANTINE_PRUNE, register
from .store import Store

logger = logging.getLogger(__name__)

#: What the automatic quarantine did, kept per repository for the web UI (newest first).
AUTO_LOG_SIZE = 50


class Quarantine:
    """The quarantined tests of every repository, over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client: Any = store.client
        self._add = register(self.client, QUARANTINE_ADD)
        self._prune = register(self.client, QUARANTINE_PRUNE)

    def _key(self, repo: str) -> str:
        """The repository's hash; :class:`NotFound` when ciq never saw the repository."""
        rid = keys.repo_id(repo)
        if self.store.repo_of(rid) is None:
            raise NotFound(f"ciq has no commits of {repo}; see `ciq status` for known "
                           "repositories")
        return keys.quarantine(rid)

    def add(self, repo: str, entry: Entry) -> bool:
        """Quarantine ``entry.test`` in ``repo`` (an entry already there is replaced):
        True if it was not quarantined before."""
        key = self._key(repo)
        done = int(self._add(keys=[key], args=[entry.test, json.dumps(entry.stored()),
                                               MAX_ENTRIES]))
        if done == 0:
            raise BadInput(f"{repo} has {MAX_ENTRIES} quarantined tests already, the most "
                           "it may have; remove some first (`ciq quarantine list`)")
        return done == 1

    def remove(self, repo: str, test: str) -> Entry:
        """Release a test from quarantine: the entry it had (expired or not)."""
        key = self._key(repo)
        raw = self.client.hget(key, check_test_id(test))
        if raw is None or not self.client.hdel(key, test):
            raise NotFound(f"{test[:200]} is not quarantined in {repo}; see `ciq "
                           "quarantine list`")
        return _entry(test, raw) or Entry(test, "", "", "", "")

    def entries(self, repo: str, now: datetime | None = None) -> list[Entry]:
        """The repository's entries, expired ones too, by test id. Entries expired long
        ago are deleted instead."""
        key = self._key(repo)
        return self._listed(key, self.client.hgetall(key), now)

    def everywhere(self, now: datetime | None = None) -> dict[str, list[Entry]]:
        """The entries of every repository that has some, by repository."""
        repos = self.store.repos_by_id()
        pipe = self.client.pipeline(transaction=False)
        for rid in repos:
            pipe.hgetall(keys.quarantine(rid))
        found = {}
        for (rid, repo), raw in zip(repos.items(), pipe.execute(), strict=True):
            listed = self._listed(keys.quarantine(rid), raw, now)
            if listed:
                found[repo] = listed
        return dict(sorted(found.items()))

    def in_force(self, repo: str, now: datetime | None = None) -> dict[str, Entry]:
        """The repository's entries that mute their test now, by test id."""
        raw = self.client.hgetall(keys.quarantine(keys.repo_id(repo)))
        now = now or datetime.now(UTC)
        return {e.test: e for e in (_entry(t, v) for t, v in raw.items())
                if e is not None and e.in_force(now)}

    # -- the automatic quarantine (ciq.worker.housekeeping) --------------------------------

    def add_auto(self, repo: str, entry: Entry, now: datetime | None = None) -> bool:
        """Quarantine ``entry.test`` unless it has an entry in force (a person's entry,
        or one an operator renewed, is never replaced) or the repository is full; True
        when it was written. Checked and written in one transaction."""
        key = self._key(repo)
        now = now or datetime.now(UTC)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                old = _entry(entry.test, pipe.hget(key, entry.test) or "")
                if old is not None and old.in_force(now):
                    return False
                if old is None and pipe.hlen(key) >= MAX_ENTRIES:
                    return False
                pipe.multi()
                pipe.hset(key, entry.test, json.dumps(entry.stored()))
                pipe.execute()
            except redis.WatchError:  # someone changed the entries: next pass
                return False
        return True

    def release_auto(self, repo: str, test: str) -> Entry | None:
        """End the automatic entry of ``test``: the entry, or None when it is no longer
        an automatic one (a person replaced it meanwhile) or gone."""
        key = self._key(repo)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                old = _entry(test, pipe.hget(key, test) or "")
                if old is None or not old.auto:
                    return None
                pipe.multi()
                pipe.hdel(key, test)
                pipe.execute()
            except redis.WatchError:
                return None
        return old

    def record(self, repo: str, event: dict[str, Any]) -> None:
        """Keep what the automatic quarantine did (the newest :data:`AUTO_LOG_SIZE`)."""
        key = _auto_log(repo)
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(event))
        pipe.ltrim(key, 0, AUTO_LOG_SIZE - 1)
        pipe.execute()

    def recorded(self, repo: str, n: int = AUTO_LOG_SIZE) -> list[dict[str, Any]]:
        """What the automatic quarantine did in ``repo``, newest first."""
        found = []
        for raw in self.client.lrange(_auto_log(repo), 0, n - 1):
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def _listed(self, key: str, raw: dict[str, str], now: datetime | None) -> list[Entry]:
        now = now or datetime.now(UTC)
        kept, stale = [], []
        for test, value in raw.items():
            e = _entry(test, value)
            if e is None or e.prunable(now):
                stale += [test, value]
            else:
                kept.append(e)
        if stale:
            try:
                self._prune(keys=[key], args=stale)
            except redis.RedisError as exc:  # the next listing tries again
                logger.warning("quarantine: could not delete expired entries: %s", exc)
        return sorted(kept, key=lambda e: e.test)


def _auto_log(repo: str) -> str:
    return f"{keys.quarantine(keys.repo_id(repo))}:auto"


def _entry(test: str, raw: str) -> Entry | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return Entry.from_stored(test, data) if isinstance(data, dict) else None


def muted(store: Store, report: Report) -> Report:
    """``report`` under its repository's quarantine (:func:`ciq.quarantine.apply`); as
    it is when Redis cannot say which tests are quarantined (then the quarantined
    failures count, which is the safe side)."""
    if not report.tests:
        return report
    try:
        entries = Quarantine(store).in_force(report.repo)
    except redis.RedisError as exc:
        logger.warning("quarantine: cannot read the quarantined tests of %s (%s); "
                       "%s is reported without them", report.repo, exc, report.commit[:12])
        return report
    return apply(report, entries)


def muted_ids(store: Store, repo: str, tag: str = "quarantine") -> frozenset[str]:
    """The ids of the tests of ``repo`` quarantined now (they are not rerun when they
    fail); none when Redis cannot say (then they are rerun too, which costs only time)."""
    try:
        return frozenset(Quarantine(store).in_force(repo))
    except redis.RedisError as exc:
        logger.warning("%s: cannot read the quarantined tests of %s: %s", tag, repo, exc)
        return frozenset()
