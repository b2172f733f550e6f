"""Git for ciq: validating what comes from outside, bare mirrors and per-run worktrees.

Commands that fetch or check out run the git binary through :func:`_run` (fast to start:
this module is on the push path of `ciq enqueue`); the observer reads commits and refs
of its mirror through GitPython, imported only there.

Nothing a user passes reaches git as an option: repositories, SHAs and revisions are
checked here first, and revisions go after ``--end-of-options``. Every command runs
with repository hooks disabled (``core.hooksPath=/dev/null``), without prompts, and
with the ``ext::``/``fd::`` transports off, since repository URLs come from outside.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, RepositoryError
from .urls import is_url

logger = logging.getLogger(__name__)

SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
SHA_PREFIX_RE = re.compile(r"^[0-9a-f]{4,64}$")
# A revision as a person types it: a branch, tag, HEAD~2, v1.0^{commit}, a SHA...
_REV_RE = re.compile(r"^[A-Za-z0-9_./@{}~^+-]+$")
_URL_RE = re.compile(r"^(?:(?:https?|git|ssh|file)://[^\s]+|[\w.-]+@[\w.-]+:[^\s]+)$")

_GIT_CONFIG = [
    "-c", "core.hooksPath=/dev/null",
    "-c", "protocol.ext.allow=never",
    "-c", "protocol.fd.allow=never",
    "-c", "advice.detachedHead=false",
]  # fmt: skip
#: The same configuration as environment variables (git >= 2.31): unlike ``-c``, these
#: reach the git processes git itself starts — `git worktree add` checks out through a
#: child that would otherwise run the mirror's post-index-change hook.
SAFE_GIT_ENV = {
    "GIT_CONFIG_COUNT": "3",
    "GIT_CONFIG_KEY_0": "core.hooksPath",
    "GIT_CONFIG_VALUE_0": "/dev/null",
    "GIT_CONFIG_KEY_1": "protocol.ext.allow",
    "GIT_CONFIG_VALUE_1": "never",
    "GIT_CONFIG_KEY_2": "protocol.fd.allow",
    "GIT_CONFIG_VALUE_2": "never",
}
_GIT_ENV = {
    **SAFE_GIT_ENV,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "GIT_SSH_COMMAND": "ssh -oBatchMode=yes",
}
#: Seconds a fetch or clone may take before it is abandoned (a hung server).
FETCH_TIMEOUT = 600
#: New commits of a branch tested per poll or push at most (the newest ones); older ones
#: of a huge push are skipped with a log line rather than flooding the queue.
MAX_NEW_COMMITS = 500


def validate_sha(sha: str) -> str:
    """A full commit id, lower-case; anything else is :class:`BadInput`."""
    sha = sha.strip().lower()
    if not SHA_RE.match(sha):
        raise BadInput(f"{sha[:80]!r} is not a full commit id (40 hexadecimal digits)")
    return sha


def validate_sha_prefix(prefix: str) -> str:
    p = prefix.strip().lower()
    if not SHA_PREFIX_RE.match(p):
        raise BadInput(f"{prefix[:80]!r} is not a commit id: give at least 4 hexadecimal digits")
    return p


def validate_rev(rev: str) -> str:
    """A revision to resolve; rejects anything git could read as an option."""
    if not rev or rev.startswith("-") or not _REV_RE.match(rev) or ".." in rev:
        raise BadInput(f"{rev[:80]!r} is not a valid revision: give a branch, tag or commit id")
    return rev


def normalise_repo(repo: str) -> str:
    """The canonical name of a repository: an absolute path or a URL without a trailing /.

    A local path must exist; a URL must use a plain transport (https, ssh, git, file).
    """
    repo = repo.strip()
    if not repo or repo.startswith("-"):
        raise BadInput(f"{repo[:80]!r} is not a repository: give a path or a git URL")
    if is_url(repo):
        if not _URL_RE.match(repo):
            raise BadInput(
                f"{repo[:80]!r} is not a supported git URL: use https://, ssh://, git:// or file://"
            )
        return repo.rstrip("/")
    path = Path(repo).expanduser()
    if not path.exists():
        raise BadInput(f"{repo}: no such directory; give the path of a git repository or a URL")
    return str(path.resolve())


def _run(args: list[str], cwd: str | None = None, timeout: float | None = None,
         git_dir: Path | None = None) -> str:
    """Run git with ciq's safe configuration; a failure is one-line RepositoryError."""
    cmd = ["git", *_GIT_CONFIG, *(["--git-dir", str(git_dir)] if git_dir else []), *args]
    try:
        done = subprocess.run(
            cmd, cwd=cwd, env={**os.environ, **_GIT_ENV}, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RepositoryError(f"git {args[0]} took over {timeout:g}s; gave up") from None
    except FileNotFoundError:
        raise RepositoryError("git is not installed (apt-get install git)") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        first = lines[0].removeprefix("fatal: ").removeprefix("error: ") if lines else ""
        raise RepositoryError(f"git {args[0]} failed: {first[:300] or done.returncode}")
    return done.stdout.decode(errors="replace").rstrip("\n")


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str
    subject: str


def describe(repo_path: str, rev: str) -> tuple[CommitInfo, str | None]:
    """The commit ``rev`` names in a local repository, and the branch when ``rev`` is
    one (or HEAD on a branch). Read-only: no fetch, the working tree untouched."""
    validate_rev(rev)
    if not (Path(repo_path) / ".git").exists() and not (Path(repo_path) / "HEAD").exists():
        raise BadInput(f"{repo_path} is not a git repository")
    try:
        out = _run(["log", "-1", "--format=%H%x00%an%x00%s", "--end-of-options",
                    f"{rev}^{{commit}}"], cwd=repo_path)
    except RepositoryError:
        raise BadInput(f"{rev} is not a commit in {repo_path}") from None
    info = CommitInfo(*out.split("\x00", 2))
    try:
        # rev-parse takes no --end-of-options before git 2.41; rev was validated above
        # (it cannot start with "-") and the trailing "--" ends the revisions.
        out = _run(["rev-parse", "--symbolic-full-name", rev, "--"], cwd=repo_path)
    except RepositoryError:
        out = ""
    ref = out.splitlines()[0] if out else ""
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    return info, branch


class Mirror:
    """A bare mirror of one repository under a data folder, shared by the processes of a
    host. A file lock serialises what changes it (fetches, worktree bookkeeping)."""

    def __init__(self, root: Path, repo: str, name: str) -> None:
        self.repo = repo
        self.path = root / f"{name}.git"
        self._lock_path = root / f"{name}.lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _git(self, *args: str, timeout: float | None = None) -> str:
        return _run(list(args), timeout=timeout, git_dir=self.path)

    def _create(self) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["init", "--quiet", "--bare", str(tmp)])
        _run(["remote", "add", "origin", "--", self.repo], git_dir=tmp)
        # Also in the mirror's own config, which its worktrees share: no hook, ever.
        _run(["config", "core.hooksPath", "/dev/null"], git_dir=tmp)
        # Renamed into place only once set up, so a half-made mirror is never used.
        os.rename(tmp, self.path)

    def fetch(self) -> None:
        """Bring branches and tags up to date (creating the mirror the first time)."""
        with self.locked():
            if not self.path.exists():
                self._create()
            self._git(
                "fetch", "--quiet", "--prune", "--no-recurse-submodules", "origin",
                "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
                timeout=FETCH_TIMEOUT,
            )  # fmt: skip

    def has_commit(self, sha: str) -> bool:
        if not self.path.exists():
            return False
        try:
            self._git("cat-file", "-e", f"{validate_sha(sha)}^{{commit}}")
            return True
        except RepositoryError:
            return False

    def ensure_commit(self, sha: str) -> None:
        """Make sure the mirror holds ``sha``, fetching only when it does not."""
        if self.has_commit(sha):
            return
        self.fetch()
        if not self.has_commit(sha):
            raise RepositoryError(f"commit {sha} is not in {self.repo} (was history rewritten?)")

    def _repo(self):
        import git  # GitPython: only the observer reads commits this way

        return git.Repo(self.path)

    def branches(self) -> dict[str, str]:
        return {head.name: head.commit.hexsha for head in self._repo().heads}

    def default_branch(self) -> str | None:
        try:
            out = _run(["ls-remote", "--symref", "--", self.repo, "HEAD"], timeout=FETCH_TIMEOUT)
        except RepositoryError:
            return None
        for line in out.splitlines():
            if line.startswith("ref: refs/heads/"):
                return line.split()[1].removeprefix("refs/heads/")
        return None

    def is_ancestor(self, old: str, new: str) -> bool:
        return bool(self._repo().is_ancestor(validate_sha(old), validate_sha(new)))

    def new_commits(self, old: str, new: str, limit: int) -> list[CommitInfo]:
        """Commits reachable from ``new`` but not ``old``, oldest first (at most ``limit``,
        the newest ones)."""
        rev = f"{validate_sha(old)}..{validate_sha(new)}"
        commits = list(self._repo().iter_commits(rev, max_count=limit))
        return [_info(c) for c in reversed(commits)]

    def info(self, sha: str) -> CommitInfo:
        return _info(self._repo().commit(validate_sha(sha)))

    def add_worktree(self, path: Path, sha: str) -> None:
        """Check ``sha`` out into a new worktree at ``path`` (submodules left alone)."""
        with self.locked():
            self._git("worktree", "add", "--quiet", "--detach", "--", str(path), validate_sha(sha))

    def prune_worktrees(self) -> None:
        with self.locked():
            self._git("worktree", "prune")


def _info(commit) -> CommitInfo:
    subject = commit.message.split("\n", 1)[0] if isinstance(commit.message, str) else ""
    return CommitInfo(commit.hexsha, commit.author.name or "", subject)
