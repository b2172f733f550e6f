"""The ``ciq`` command: :func:`main`. Every failure is one line on stderr and a non-zero
exit, never a traceback.

`ciq enqueue` runs in git hooks, on the push path, and `ciq status` in shells and
scripts that poll it: their plain forms (``enqueue [--branch B] REPO [REV]``, ``status
[REPO] [--json] [--limit N]``) go straight to :func:`enqueue` and :func:`status`,
importing neither click, redis-py, Celery nor GitPython (a test holds them to that).
Everything else — other commands, other options, help, bad arguments — goes to click
(:mod:`.commands`), whose `enqueue` and `status` call the same two functions.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from ..errors import CiqError, RedisRefused, StoreUnavailable
from ..settings import Settings

if TYPE_CHECKING:
    from ..store.scripts import Redisish

#: Most commits per repository `ciq status` lists (--limit).
MAX_LIMIT = 10_000


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"ciq: {message}", file=sys.stderr)
    sys.exit(code)


def explain(exc: BaseException) -> str | None:
    """The one line to say for an error that reached the command, by its type; None
    for a bug (whose traceback is then worth seeing)."""
    if isinstance(exc, CiqError) and not isinstance(exc, RedisRefused):
        return str(exc)
    refused: tuple[type[BaseException], ...] = (RedisRefused,)
    away: tuple[type[BaseException], ...] = (OSError,)  # ciq's own client: refused, timeout
    if "redis" in sys.modules:  # else no redis-py error can have been raised
        import redis

        refused += (redis.AuthenticationError, redis.ResponseError)
        away += (redis.ConnectionError, redis.TimeoutError)
    if isinstance(exc, refused):
        return f"Redis refused the command: {exc}"
    if isinstance(exc, away):
        return f"cannot reach Redis ({exc}); check CIQ_BROKER_URL / CIQ_RESULT_BACKEND " \
               "and that Redis runs"
    return None


def enqueue(repo: str, rev: str | None, branch: str | None = None) -> int:
    """`ciq enqueue`: prints the SHA (stdout) and any problem as one line (stderr)."""
    from ..enqueue import enqueue as enqueue_commit

    try:
        sha, claimed = enqueue_commit(Settings.from_env(), repo, rev, branch)
    except Exception as exc:
        if (message := explain(exc)) is None:
            raise
        print(f"ciq: {message}", file=sys.stderr)
        return 1
    if not claimed:
        print(f"ciq: {sha[:12]} was enqueued before; see `ciq report {repo} {sha[:12]}`",
              file=sys.stderr)
    print(sha)
    return 0


def status(repo: str | None, as_json: bool, limit: int) -> int:
    """`ciq status`: recent commits of REPO (of every repository without it)."""
    from ..gitrepo import normalise_repo
    from ..store import listing, resp
    from .render import status_table

    settings = Settings.from_env()
    url = settings.result_backend
    conn: Redisish
    close: Callable[[], None]
    if resp.handles(url):
        try:
            conn = resp.RespConnection.open(url)
        except OSError as exc:
            raise StoreUnavailable(f"cannot reach Redis ({exc}); check CIQ_RESULT_BACKEND "
                                   "and that Redis runs") from None
        close = conn.close
    else:  # TLS, Sentinel: redis-py
        from ..store.store import Store

        store = Store.from_url(url)
        store.ping()
        conn, close = store.conn, store.client.close
    try:
        known = listing.repos(conn)
        if repo:
            # A path that is gone may still name known reports.
            names = [repo.rstrip("/") if repo.rstrip("/") in known else normalise_repo(repo)]
        else:
            names = known
        rows = [row for name in names for row in listing.recent(conn, name, limit)]
    finally:
        close()
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no commits yet" + (f" for {names[0]}" if repo else ""))
    else:
        print(status_table(rows, sys.stdout.isatty()))
    return 0


def _plain_enqueue(args: list[str]) -> tuple[str, str | None, str | None] | None:
    """REPO, REV and branch of ``enqueue [--branch B] REPO [REV]``; None for any other
    form, which click then reads."""
    if args[:1] != ["enqueue"]:
        return None
    rest, branch = args[1:], None
    if rest[:1] == ["--branch"] and len(rest) > 1:
        branch, rest = rest[1], rest[2:]
    elif rest[:1] and rest[0].startswith("--branch="):
        branch, rest = rest[0].removeprefix("--branch="), rest[1:]
    if not 1 <= len(rest) <= 2 or any(a.startswith("-") for a in rest):
        return None
    return rest[0], rest[1] if len(rest) == 2 else None, branch


def _plain_status(args: list[str]) -> tuple[str | None, bool, int] | None:
    """REPO, --json and --limit of a plain ``status``; None for any other form (help, a
    bad limit...), which click then reads and answers."""
    if args[:1] != ["status"]:
        return None
    repo, as_json, limit = None, False, 20
    rest = args[1:]
    while rest:
        arg, rest = rest[0], rest[1:]
        if arg == "--json":
            as_json = True
        elif arg in ("--limit", "-n") or arg.startswith("--limit="):
            value = arg.removeprefix("--limit=") if arg.startswith("--limit=") else (
                rest.pop(0) if rest else "")
            if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
                return None
            limit = int(value)
        elif arg.startswith("-") or repo is not None:
            return None
        else:
            repo = arg
    return repo, as_json, limit


def main() -> None:
    args = sys.argv[1:]
    plain_enqueue, plain_status = _plain_enqueue(args), _plain_status(args)
    if plain_enqueue is None and plain_status is None:
        from .commands import main as click_main

        click_main()
        return
    try:
        if plain_enqueue is not None:
            sys.exit(enqueue(*plain_enqueue))
        assert plain_status is not None
        sys.exit(status(*plain_status))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        message = explain(exc)
        if message is None:
            raise
        fail(message)

