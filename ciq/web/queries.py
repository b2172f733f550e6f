"""What the web UI reads from ciq's Redis, and nothing else: it never writes.

Everything goes through the :class:`~ciq.store.store.Store`: listings read commit hashes
only (one Lua call); only a commit's page and the test history read whole reports.
Repositories are named in URLs by their :func:`~ciq.store.keys.repo_id`, which the store
maps back to the repository. This module also shapes what the pages and the API share
(a repository with its branches, a branch's badge status).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput, ConfigError, NotFound
from ..gitrepo import validate_sha_prefix
from ..quarantine import Policy
from ..repoconfig import policy_of
from ..report import Report
from ..stats import per_test, releases, repo_stats, suggestions
from ..store.quarantine import Quarantine
from ..store.store import Store
from .filters import path as url_path

#: Commits per page of a repository's history.
PAGE_SIZE = 50
#: Reported commits a test history shows at most (each one is a whole report to read).
MAX_HISTORY = 100

_RID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Branch:
    """A branch of a repository: its newest commit and its newest finished one."""

    name: str
    commits: int
    head: dict[str, Any]
    finished: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "commits": self.commits, "head": self.head,
                "finished": self.finished}


@dataclass(frozen=True)
class Commit:
    """One commit as the web shows it: its listing row and, once final, its report."""

    rid: str
    repo: str
    sha: str
    row: dict[str, Any]
    report: Report | None

    @property
    def state(self) -> str:
        """``finished`` once the report is stored, else ``running`` or ``queued``."""
        return "finished" if self.report is not None else self.row["status"]

    def to_dict(self) -> dict[str, Any]:
        if self.report is not None:
            return {**self.report.to_dict(), "state": "finished"}
        r = self.row
        return {"repo": self.repo, "commit": self.sha, "branch": r["branch"],
                "status": r["status"], "state": r["status"], "subject": r["subject"],
                "author": r["author"], "enqueued_at": r["enqueued_at"],
                "started_at": r["started_at"], "worker": r["worker"],
                "attempts": r["attempts"]}


class Queries:
    """Read-only views of a :class:`~ciq.store.store.Store` for the web UI."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def repos(self) -> dict[str, str]:
        """Every known repository by id, sorted by repository."""
        return dict(sorted(self.store.repos_by_id().items(), key=lambda kv: kv[1]))

    def repo(self, rid: str) -> str:
        """The repository of an id; :class:`NotFound` for an unknown one."""
        repo = self.store.repo_of(rid) if _RID.match(rid) else None
        if repo is None:
            raise NotFound(f"no repository has id {rid[:40]!r}; the list is at /")
        return str(repo)

    def total(self, rid: str) -> int:
        return self.store.count(self.repo(rid))

    def branches(self, rid: str) -> list[Branch]:
        """Branches with their newest commit, most recently active first (as seen in the
        newest :data:`~ciq.store.listing.RECENT_WALK` commits)."""
        repo = self.repo(rid)
        found = []
        for name, count, head, finished in self.store.branches(repo):
            done = head if finished == head["commit"] else (
                self.store.rows(repo, [finished])[0] if finished else None)
            found.append(Branch(name, count, head, done))
        return found

    def branch(self, rid: str, name: str) -> Branch | None:
        return next((b for b in self.branches(rid) if b.name == name), None)

    def commits(self, rid: str, offset: int, limit: int = PAGE_SIZE,
                branch: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of a repository's commits, newest first, and how many there are."""
        repo = self.repo(rid)
        rows = self.store.recent(repo, limit, offset, branch or None)
        if branch:
            found = self.branch(rid, branch)
            total = found.commits if found else 0
        else:
            total = self.total(rid)
        return rows, total

    def commit(self, rid: str, prefix: str) -> Commit:
        """A commit by SHA or unique prefix: :class:`BadInput` for a malformed or
        ambiguous one, :class:`NotFound` for an unknown one."""
        repo = self.repo(rid)
        try:
            sha = self.store.resolve(repo, validate_sha_prefix(prefix))
        except NotFound as exc:
            if "ambiguous" in str(exc):  # the prefix is at fault, not the commit
                raise BadInput(str(exc)) from None
            raise
        report = self.store.report(repo, sha)
        found = self.store.rows(repo, [sha])[0]
        if report is None and found["status"] not in ("queued", "running"):
            report = self.store.report(repo, sha)  # it landed between the two reads
        return Commit(rid, repo, sha, found, report)

    def reported(self, rid: str, n: int,
                 branch: str | None = None) -> list[tuple[dict[str, Any], Report]]:
        """The newest ``n`` commits with a final report, newest first, with their
        reports (for the test history)."""
        repo = self.repo(rid)
        shas = self.store.reported(repo, min(n, MAX_HISTORY), branch)
        if not shas:
            return []
        reports = self.store.reports(repo, shas)
        rows = self.store.rows(repo, shas)
        return [(r, report) for r, report in zip(rows, reports, strict=True)
                if report is not None]  # None: pruned between the two reads


    def policy(self, repo: str) -> Policy:
        """The repository's automatic quarantine as the operator stored it; "off" when
        the stored settings do not parse (the workers skip the repository then too)."""
        try:
            return policy_of(self.store.repo_config(repo))
        except ConfigError:
            return Policy(mode="off")

    def wanted(self, repo: str, n: int) -> int:
        """Reported commits to read for statistics over ``n`` and the quarantine's own
        window."""
        return max(n, self.policy(repo).reads)

    def statistics(self, rid: str, n: int | None = None, branch: str | None = None,
                   reported: list[tuple[dict[str, Any], Report]] | None = None
                   ) -> dict[str, Any]:
        """Per-test and per-repository statistics over the newest ``n`` reported commits
        (the policy's window when not told), and what the automatic quarantine suggests
        or would release, over its own window (as the workers see it when no branch is
        given). ``reported``: those commits, when the caller read them already
        (:meth:`wanted` of them at least)."""
        repo = self.repo(rid)
        policy = self.policy(repo)
        window = n or policy.window
        if reported is None:
            reported = self.reported(rid, self.wanted(repo, window), branch)
        reports = [r for _, r in reported]
        held = Quarantine(self.store).in_force(repo)
        shown = reports[:window]
        auto = {**policy.to_dict(),
                "suggestions": [s.to_dict() for s in suggestions(reports, policy, held)],
                "releases": [r.to_dict() for r in releases(reports, policy, held)],
                "recent": Quarantine(self.store).recorded(repo, 10)}
        return {"id": rid, "repo": repo, "branch": branch or None, "window": len(shown),
                "summary": repo_stats(shown),
                "tests": [t.to_dict() for t in per_test(shown, held)],
                "quarantine": auto, "commits": [row for row, _ in reported[:window]]}


# -- What the pages and the API share ---------------------------------------------------

def badge_path(rid: str, branch: str) -> str:
    return f"/badge/{rid}/{url_path(branch)}.svg"


def branch_dict(rid: str, b: Branch) -> dict[str, Any]:
    return {**b.to_dict(), "badge": badge_path(rid, b.name)}


def repo_dict(q: Queries, rid: str, repo: str) -> dict[str, Any]:
    return {"id": rid, "repo": repo, "commits": q.total(rid),
            "branches": [branch_dict(rid, b) for b in q.branches(rid)]}


def branch_status(q: Queries, rid: str, name: str) -> dict[str, Any]:
    """What a branch's badge shows: its newest finished commit, else its newest one."""
    found = q.branch(rid, name)
    shown = (found.finished or found.head) if found else None
    return {"id": rid, "repo": q.repo(rid), "branch": name,
            "status": shown["status"] if shown else None,
            "commit": shown["commit"] if shown else None,
            "head": found.head if found else None}


def offset_of(page: int | None, offset: int | None, limit: int) -> int:
    """The offset a request asks for: ``offset`` if given, else that of ``page``."""
    if offset is not None:
        return offset
    return ((page or 1) - 1) * limit
