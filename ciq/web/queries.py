"""What the web UI reads from ciq's Redis, and nothing else: it never writes.

Listings reuse :mod:`ciq.listing` (commit hashes only, one Lua call); only a commit's
page and the test history read whole reports. Repositories are named in URLs by their
:func:`~ciq.keys.repo_id`, which the ``ciq:repos`` hash maps back to the repository.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput, NotFound
from ..gitrepo import validate_sha_prefix
from ..keys import RECENT_WALK, commit_key
from ..listing import RedisPy, recent, row
from ..report import Report
from ..store import Store

#: Commits per page of a repository's history.
PAGE_SIZE = 50
#: Reported commits a test history shows at most (each one is a whole report to read).
MAX_HISTORY = 100

_RID = re.compile(r"^[0-9a-f]{16}$")

# ARGV: rid, walk. The branches of a repository as seen in its newest `walk` commits,
# newest branch first: {branch, commits, head sha, head leased (0/1), head flat hash,
# sha of the newest finished commit or ''}. One pass over hashes, no report bodies.
_BRANCHES = """
local rid = ARGV[1]
local shas = redis.call('ZREVRANGE', 'ciq:index:' .. rid, 0, tonumber(ARGV[2]) - 1)
local order, heads, counts, finished = {}, {}, {}, {}
for _, sha in ipairs(shas) do
  local f = redis.call('HMGET', 'ciq:commit:' .. rid .. ':' .. sha, 'branch', 'status')
  local b = f[1] or ''
  if not heads[b] then heads[b] = sha; counts[b] = 0; order[#order + 1] = b end
  counts[b] = counts[b] + 1
  if f[2] and f[2] ~= '' and not finished[b] then finished[b] = sha end
end
local out = {}
for i, b in ipairs(order) do
  local sha = heads[b]
  out[i] = {b, counts[b], sha, redis.call('EXISTS', 'ciq:lease:' .. rid .. ':' .. sha),
            redis.call('HGETALL', 'ciq:commit:' .. rid .. ':' .. sha), finished[b] or ''}
end
return out
"""

# ARGV: rid, how many, walk, branch ('' for any). The newest finished commits (those
# with a report) among the newest `walk`, newest first.
_REPORTED = """
local rid, n, walk, branch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local shas = redis.call('ZREVRANGE', 'ciq:index:' .. rid, 0, walk - 1)
local out = {}
for _, sha in ipairs(shas) do
  if #out >= n then break end
  local f = redis.call('HMGET', 'ciq:commit:' .. rid .. ':' .. sha, 'branch', 'status')
  if f[2] and f[2] ~= '' and (branch == '' or f[1] == branch) then out[#out + 1] = sha end
end
return out
"""


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
    """Read-only views of a :class:`~ciq.store.Store` for the web UI."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self._branches = self.client.register_script(_BRANCHES)
        self._reported = self.client.register_script(_REPORTED)

    def repos(self) -> dict[str, str]:
        """Every known repository by id, sorted by repository."""
        found = self.client.hgetall("ciq:repos")
        return dict(sorted(found.items(), key=lambda kv: kv[1]))

    def repo(self, rid: str) -> str:
        """The repository of an id; :class:`NotFound` for an unknown one."""
        repo = self.client.hget("ciq:repos", rid) if _RID.match(rid) else None
        if repo is None:
            raise NotFound(f"no repository has id {rid[:40]!r}; the list is at /")
        return str(repo)

    def total(self, rid: str) -> int:
        return int(self.client.zcard(f"ciq:index:{rid}"))

    def branches(self, rid: str) -> list[Branch]:
        """Branches with their newest commit, most recently active first (as seen in the
        newest :data:`~ciq.keys.RECENT_WALK` commits)."""
        repo = self.repo(rid)
        found = []
        for name, count, sha, leased, flat, finished in self._branches(
                args=[rid, RECENT_WALK]) or []:
            head = row(repo, sha, leased, flat)
            done = head if finished == sha else (
                self._rows(repo, rid, [finished])[0] if finished else None)
            found.append(Branch(name, int(count), head, done))
        return found

    def branch(self, rid: str, name: str) -> Branch | None:
        return next((b for b in self.branches(rid) if b.name == name), None)

    def _rows(self, repo: str, rid: str, shas: list[str]) -> list[dict[str, Any]]:
        """Listing rows of these commits, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for sha in shas:
            pipe.hgetall(commit_key(rid, sha))
            pipe.exists(f"ciq:lease:{rid}:{sha}")
        replies = pipe.execute()
        return [row(repo, sha, leased, [x for kv in meta.items() for x in kv])
                for sha, meta, leased in zip(shas, replies[::2], replies[1::2], strict=True)]

    def commits(self, rid: str, offset: int, limit: int = PAGE_SIZE,
                branch: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of a repository's commits, newest first, and how many there are."""
        repo = self.repo(rid)
        rows = recent(RedisPy(self.client), repo, limit, offset, branch or None)
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
        found = self._rows(repo, rid, [sha])[0]
        if report is None and found["status"] not in ("queued", "running"):
            report = self.store.report(repo, sha)  # it landed between the two reads
        return Commit(rid, repo, sha, found, report)

    def reported(self, rid: str, n: int,
                 branch: str | None = None) -> list[tuple[dict[str, Any], Report]]:
        """The newest ``n`` commits with a final report, newest first, with their
        reports (for the test history)."""
        repo = self.repo(rid)
        shas = self._reported(args=[rid, min(n, MAX_HISTORY), RECENT_WALK, branch or ""])
        if not shas:
            return []
        raws = self.client.mget([self.store.report_key(repo, sha) for sha in shas])
        rows = self._rows(repo, rid, shas)
        return [(r, Report.from_dict(json.loads(raw)["result"]))
                for r, raw in zip(rows, raws, strict=True)
                if raw is not None]  # None: pruned between the two reads
