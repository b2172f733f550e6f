"""Git hooks that enqueue each commit the moment it lands, instead of at the next poll.

``post-commit`` in a working repository enqueues the new HEAD; ``post-receive`` in a
(bare) server repository enqueues the new commits of every pushed branch, as the
observer would (a new or force-pushed branch: its head only). The hook is a small POSIX
sh script that ciq writes and recognises by its :data:`MARKER` line. It calls ``ciq
enqueue`` by absolute path, in the background with a time limit, and logs each outcome
to ``ciq-hook.log`` in the git folder: a hook never delays or fails a commit or a push,
even with Redis away.

The hook fixes the Redis URLs (and queue) the installing ``ciq`` was given explicitly,
since git hooks run without the exports of the user's shell (IDEs, GUI clients, the
git daemon). Nothing here imports Celery or redis-py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import BadInput, HookError
from .gitrepo import MAX_NEW_COMMITS, normalise_repo
from .settings import Settings
from .urls import is_url

#: The hooks ciq writes.
KINDS = ("post-commit", "post-receive")
#: Second line of every hook ciq writes: how ciq tells its own hook from anyone else's.
MARKER = "# ciq-hook: "
#: Suffix of another program's hook that ``install --force`` kept; ciq's hook runs it.
SAVED_SUFFIX = ".pre-ciq"
#: The hook's log, in the repository's git folder.
LOG_NAME = "ciq-hook.log"
#: Seconds one background ``ciq enqueue`` may take (a Redis that never answers).
ENQUEUE_TIMEOUT = 60
#: Bytes of log kept before it is moved to ``ciq-hook.log.1`` (in 512-byte blocks for
#: POSIX ``find -size``: 2048 blocks are 1 MiB).
LOG_BLOCKS = 2048

# Variables git sets for a repository (``git rev-parse --local-env-vars``): a git
# started here must find the repository it is given, not the caller's.
_GIT_LOCAL_VARS = frozenset((
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT", "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE", "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE", "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
))  # fmt: skip


@dataclass(frozen=True)
class Target:
    """Where the hooks of one local repository go."""

    #: The repository's name for ciq (what `ciq status` shows): its absolute path.
    repo: str
    #: The (common) git folder, symlinks resolved: the hook compares it with its own.
    git_dir: Path
    #: ``git rev-parse --git-path hooks``: honours ``core.hooksPath``.
    hooks_dir: Path
    bare: bool

    @property
    def default_kind(self) -> str:
        return "post-receive" if self.bare else "post-commit"

    @property
    def log(self) -> Path:
        return self.git_dir / LOG_NAME

    def hook(self, kind: str) -> Path:
        return self.hooks_dir / kind

    def saved(self, kind: str) -> Path:
        return self.hooks_dir / f"{kind}{SAVED_SUFFIX}"


def _git(path: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCAL_VARS}
    try:
        done = subprocess.run(["git", "-C", path, *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise HookError("git is not installed (apt-get install git)") from None
    except subprocess.TimeoutExpired:
        raise HookError(f"git {args[0]} took over 30s in {path}; gave up") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        first = lines[0].removeprefix("fatal: ") if lines else str(done.returncode)
        if "not a git repository" in first:
            raise BadInput(f"{path} is not a git repository; give the path of one")
        raise HookError(f"{path}: git {args[0]} failed: {first[:300]}")
    return done.stdout.rstrip("\n")


def locate(repo_arg: str) -> Target:
    """The hooks of REPO, a local repository given by the path of its top folder (a
    working tree, or a bare repository's folder)."""
    if is_url(repo_arg.strip()):
        raise BadInput(f"{repo_arg[:80]} is a URL: a hook goes into a local repository; run "
                       "`ciq hook install` where the repository is (a server's bare one)")
    repo = normalise_repo(repo_arg)
    if not Path(repo).is_dir():
        raise BadInput(f"{repo} is not a git repository; give the path of one")
    bare, common, hooks = _git(repo, "rev-parse", "--is-bare-repository", "--git-common-dir",
                               "--git-path", "hooks").splitlines()
    git_dir = (Path(repo) / common).resolve()
    if bare == "true":
        top = git_dir
    elif _git(repo, "rev-parse", "--is-inside-work-tree") != "true":
        raise BadInput(f"{repo} is inside the git folder of a repository; give the "
                       "repository's working tree")
    else:
        top = Path(_git(repo, "rev-parse", "--show-toplevel")).resolve()
    if top != Path(repo):
        raise BadInput(f"{repo} is inside the repository {top}; give {top}")
    return Target(repo, git_dir, Path(repo) / hooks, bare == "true")


def ciq_command(executable: str | None = None) -> list[str]:
    """This ciq, by absolute path: the ``ciq`` script beside the running Python, or
    ``python -m ciq``. The Python's path is kept as given (a venv's python is a symlink
    to the base interpreter, which does not have ciq)."""
    python = executable if executable is not None else sys.executable
    if not python:
        raise HookError("cannot tell which Python runs ciq (sys.executable is empty)")
    python = os.path.abspath(python)
    script = os.path.join(os.path.dirname(python), "ciq")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [python, "-m", "ciq"]


def pinned(settings: Settings, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a hook fixes: the Redis URLs and the queue, as ``settings`` resolved
    them. With ``given`` (the installer's environment), only those set there: a hook then
    follows the committer's environment, or ciq's defaults, for the others."""
    env = settings.ENV
    urls = (env["broker_url"], env["result_backend"])
    out: dict[str, str] = {}
    if given is None or any(given.get(var) for var in urls):
        # Both, as resolved: a results backend that defaults to the broker must not
        # follow a CIQ_RESULT_BACKEND of the committer's shell.
        out[urls[0]] = settings.broker_url
        out[urls[1]] = settings.result_backend
    if given is None or given.get(env["queue"]):
        out[env["queue"]] = settings.queue
    return out


_HEAD = """\
#!/bin/sh
{marker}{kind}, written by `ciq hook install`; `ciq hook uninstall` on this repository
# removes it. It enqueues new commits for testing at once, in the background: the
# {what} never waits for ciq and never fails because of it. Each outcome is one line of
# the log below; when a commit could not be enqueued, the log says why.
repo={repo}
git_dir={git_dir}
log={log}
saved={saved}
kind={kind}
again={again}
{env}
limit=
if command -v timeout >/dev/null 2>&1; then limit="timeout {timeout}"; fi

note() {{  # one line of the log
\tprintf '%s %s %s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$kind" "$*" >>"$log"
}}

enqueue() {{  # SHA BRANCH: one `ciq enqueue`, its outcome as one line of the log
\tout=$($limit {ciq} enqueue --branch "$2" "$repo" "$1" 2>&1)
\tstatus=$?
\tout=$(printf '%s' "$out" | tr '\\n' ' ')
\tif [ "$status" -eq 0 ]; then
\t\tcase $out in
\t\t*"enqueued before"*) note "$2 $1: enqueued before; nothing to do" ;;
\t\t*) note "$2 $1: enqueued" ;;
\t\tesac
\t\treturn
\tfi
\tif [ "$status" -eq 124 ]; then out="no answer within {timeout}s (is Redis reachable?)"; fi
\tnote "$2 $1: NOT enqueued: $out -- the commit itself is safe; an observer" \\
\t\t"(ciq observe), if one runs, tests it at its next poll; or enqueue it by hand:" \\
\t\t"$again $1 --branch $2"
}}

if [ -n "$(find "$log" -size +{blocks} 2>/dev/null)" ]; then mv -f "$log" "$log.1"; fi
"""

_GUARD = """
# A hooks folder may be shared (core.hooksPath): act only in the repository it is for.
here=$(cd "$(git rev-parse --git-common-dir 2>/dev/null)" 2>/dev/null && pwd -P) || exit 0
[ "$here" = "$git_dir" ] || exit 0
"""

_POST_COMMIT = """
# The hook that was here before ciq's (kept by `ciq hook install --force`) runs first.
if [ -x "$saved" ]; then "$saved" "$@"; fi
""" + _GUARD + """
sha=$(git rev-parse -q --verify HEAD) || exit 0
ref=$(git symbolic-ref -q HEAD) || ref=
case $ref in
refs/heads/*) branch=${ref#refs/heads/} ;;
*)
\t# Workers fetch branches only; a rebase makes its commits on a detached HEAD.
\tnote "$sha: not on a branch (a rebase?); not enqueued -- the observer tests the branch"
\texit 0 ;;
esac
unset $(git rev-parse --local-env-vars)
(trap '' HUP; enqueue "$sha" "$branch") </dev/null >>"$log" 2>&1 &
exit 0
"""

_POST_RECEIVE = """
input=$(cat)
# The hook that was here before ciq's (kept by `ciq hook install --force`) runs first.
if [ -x "$saved" ]; then printf '%s\\n' "$input" | "$saved" "$@"; fi
""" + _GUARD + """
# One "SHA BRANCH" line per commit to test: the new commits of each updated branch,
# oldest first, as the observer picks them; tags and deleted branches are skipped.
todo=$(printf '%s\\n' "$input" | while read -r old new ref; do
\tcase $ref in refs/heads/*) branch=${ref#refs/heads/} ;; *) continue ;; esac
\tcase $new in *[!0]*) ;; *) continue ;; esac
\tcase $old in
\t*[!0]*)
\t\tif git merge-base --is-ancestor "$old" "$new" 2>/dev/null; then
\t\t\tgit rev-list --reverse --max-count=@MAX_NEW@ "$old..$new" |
\t\t\t\twhile read -r sha; do printf '%s %s\\n' "$sha" "$branch"; done
\t\telse  # force-pushed: its new head only
\t\t\tprintf '%s %s\\n' "$new" "$branch"
\t\tfi ;;
\t*) printf '%s %s\\n' "$new" "$branch" ;;  # a new branch: its head only
\tesac
done)
[ -n "$todo" ] || exit 0
count=0
for word in $todo; do count=$((count + 1)); done
echo "ciq: testing $((count / 2)) new commit(s); see \\`ciq status\\` (hook log: $log)"
unset $(git rev-parse --local-env-vars)
(
\ttrap '' HUP
\tprintf '%s\\n' "$todo" | while read -r sha branch; do enqueue "$sha" "$branch"; done
) </dev/null >>"$log" 2>&1 &
exit 0
"""


def script(target: Target, kind: str, command: list[str], env: Mapping[str, str]) -> str:
    """The text of ciq's ``kind`` hook for ``target``; every value is shell-quoted."""
    if kind not in KINDS:
        raise BadInput(f"{kind!r} is not a hook ciq writes: use one of {', '.join(KINDS)}")
    q = shlex.quote
    exports = "\n".join(f"{name}={q(value)}; export {name}" for name, value in env.items())
    body = _POST_COMMIT if kind == "post-commit" else _POST_RECEIVE
    head = _HEAD.format(
        marker=MARKER, kind=kind, what="commit" if kind == "post-commit" else "push",
        repo=q(target.repo), git_dir=q(str(target.git_dir)), log=q(str(target.log)),
        saved=q(str(target.saved(kind))), again=q(shlex.join([*command, "enqueue", target.repo])),
        env=exports or "# Redis: CIQ_BROKER_URL / CIQ_RESULT_BACKEND of the committer, or "
                       "ciq's default", ciq=shlex.join(command), timeout=ENQUEUE_TIMEOUT,
        blocks=LOG_BLOCKS,
    )  # fmt: skip
    return head + body.replace("@MAX_NEW@", str(MAX_NEW_COMMITS))


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a hook ciq wrote (its second line is the marker)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    lines = head.split(b"\n", 2)
    return len(lines) > 1 and lines[1].startswith(MARKER.encode())


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def check(target: Target, kind: str, force: bool = False) -> None:
    """Raise :class:`HookError` unless ciq's ``kind`` hook may be written in ``target``:
    another program's hook is there (and ``force`` not given, or it cannot be kept)."""
    path, saved = target.hook(kind), target.saved(kind)
    if not _exists(path) or is_ours(path):
        return
    if not force:
        raise HookError(
            f"{path} is another program's hook and ciq leaves it alone; "
            f"`ciq hook install --force {shlex.quote(target.repo)}` keeps it as "
            f"{saved.name} and runs it from ciq's hook (`ciq hook uninstall` puts it back)"
        )
    if _exists(saved):
        raise HookError(f"{path} is another program's hook and {saved} exists too; "
                        "move one of them away first")


@dataclass(frozen=True)
class Installed:
    path: Path
    #: "installed", "updated" (ciq's hook rewritten) or "unchanged".
    action: str
    #: Another program's hook that --force kept, which ciq's hook runs first.
    saved: Path | None = None


def install(target: Target, kind: str, command: list[str], env: Mapping[str, str],
            force: bool = False) -> Installed:
    """Write ciq's ``kind`` hook. Installing again rewrites only ciq's own hook; another
    program's is kept as ``KIND.pre-ciq`` and run first with ``force``, else refused."""
    text = script(target, kind, command, env)
    check(target, kind, force)
    path, saved = target.hook(kind), target.saved(kind)
    action = "installed"
    if is_ours(path):
        if path.read_text(errors="replace") == text:
            return Installed(path, "unchanged", saved if _exists(saved) else None)
        action = "updated"
    # A password in the URLs stays readable by its owner only.
    secret = any(urlsplit(v).password for v in env.values() if "://" in v)
    try:
        target.hooks_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{kind}.ciq-{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o700 if secret else 0o755)
        if action == "installed" and _exists(path):
            os.rename(path, saved)
        os.replace(tmp, path)
    except OSError as exc:
        raise HookError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Installed(path, action, saved if _exists(saved) else None)


@dataclass(frozen=True)
class Removed:
    path: Path
    #: Another program's hook put back in its place, if one had been kept.
    restored: bool


def uninstall(target: Target) -> list[Removed]:
    """Remove ciq's hooks (of every kind) and put back what ``--force`` kept; another
    program's hook is never touched."""
    removed = []
    for kind in KINDS:
        path, saved = target.hook(kind), target.saved(kind)
        if not is_ours(path):
            continue
        try:
            path.unlink()
            restored = _exists(saved)
            if restored:
                os.rename(saved, path)
        except OSError as exc:
            raise HookError(f"cannot remove {path}: {exc.strerror or exc}") from None
        removed.append(Removed(path, restored))
    return removed


def state(target: Target, kind: str) -> str:
    """``ciq``, ``other`` or ``none``: who owns the ``kind`` hook of ``target``."""
    path = target.hook(kind)
    if is_ours(path):
        return "ciq"
    return "other" if _exists(path) else "none"


def last_log_line(target: Target) -> str | None:
    try:
        with open(target.log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None
