"""The ``ciq`` command. Every failure is one line on stderr and a non-zero exit.

Heavy modules (redis, Celery, GitPython) are imported inside the commands that need
them: ``ciq enqueue`` runs in git hooks, on the push path.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .errors import BadInput, CiqError, NotFound, StoreUnavailable
from .settings import Settings

if TYPE_CHECKING:
    from .hooks import Installed, Target
    from .store import Store

STATUS_COLOURS = {"passed": "green", "failed": "red", "error": "magenta", "timeout": "yellow",
                  "running": "cyan", "queued": "blue"}


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ciq: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    return Settings.from_env()


def _store(settings: Settings) -> Store:
    from .store import Store

    store = Store.from_url(settings.result_backend)
    store.ping()
    return store


@contextmanager
def _reader(settings: Settings) -> Iterator[Any]:
    """A Redis client for reading listings: the light one when the URL allows."""
    from .resp import SCHEMES

    if settings.result_backend.split("://", 1)[0] in SCHEMES:
        from .resp import RespConnection

        try:
            conn = RespConnection.open(settings.result_backend)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot reach Redis ({exc}); check CIQ_RESULT_BACKEND and that Redis runs"
            ) from None
        try:
            yield conn
        finally:
            conn.close()
    else:
        from .listing import RedisPy

        yield RedisPy(_store(settings).client)


def _repo_arg(repo: str, store: Store | None = None) -> str:
    """Normalise a repository argument; a path that is gone may still name known reports."""
    from .gitrepo import normalise_repo

    try:
        return normalise_repo(repo)
    except BadInput:
        if store is not None and repo.rstrip("/") in store.repos():
            return repo.rstrip("/")
        raise


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ciq")
def cli() -> None:
    """ciq: every commit tested on a pool of Celery workers, one report per commit."""


CONFIG_OPTION = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    help="The operator's TOML settings: [[repo]] tables with url, branches, test, env, "
         "setup, timeout.")


def _operator_configs(store: Store, config_file: Path, repo: str | None) -> list[Any]:
    """The [[repo]] entries of FILE (only REPO's when given), published for workers."""
    from .gitrepo import normalise_repo
    from .repoconfig import operator_file

    configs = [(normalise_repo(c.url or ""), c) for c in operator_file(config_file)]
    if repo is not None:
        configs = [(name, c) for name, c in configs if name == repo]
        if not configs:
            raise BadInput(f"{repo} has no [[repo]] entry in {config_file}")
    for name, config in configs:
        store.set_repo_config(name, config_file.name, config.to_dict())
    return configs


@cli.command()
@click.argument("repo", required=False)
@CONFIG_OPTION
@click.option("--branch", "-b", "branches", multiple=True, metavar="B",
              help="Branch to watch (repeatable; default: the repository's default branch).")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between polls.")
@click.option("--once", is_flag=True, help="Poll once and exit (for cron).")
@click.option("--latest-only", is_flag=True,
              help="Test only the newest commit of each poll (the classic behaviour).")
@click.option("--verbose", "-v", is_flag=True)
def observe(repo: str | None, config_file: Path | None, branches: tuple[str, ...],
            interval: float, once: bool, latest_only: bool, verbose: bool) -> None:
    """Watch REPO (a path or git URL), or every repository of --config FILE, and enqueue
    one run per new commit, oldest first."""
    from .gitrepo import validate_rev
    from .observer import Observer, Watch

    if repo is None and config_file is None:
        raise click.UsageError("give a REPO to watch, or --config FILE")
    settings = _settings()
    _setup_logging(verbose)
    for b in branches:
        validate_rev(b)
    name = _repo_arg(repo) if repo else None
    store = _store(settings)
    if config_file is not None:
        watches = [Watch(n, tuple(branches) or c.branches, latest_only)
                   for n, c in _operator_configs(store, config_file, name)]
    else:
        assert name is not None
        watches = [Watch(name, branches, latest_only)]
    observer = Observer(watches, store, _dispatcher(settings, store), settings.data_dir)
    if once:
        result = observer.poll()
        if result.errors:
            fail(result.errors[0])
        click.echo(f"enqueued {len(result.enqueued)} commits")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    observer.run_forever(interval, stop)



def _dispatcher(settings: Settings, store: Store) -> Any:
    from .dispatch import Dispatcher

    return Dispatcher.for_settings(settings, store)


@cli.command()
@click.argument("repo")
@click.argument("rev", required=False)
@CONFIG_OPTION
@click.option("--branch", metavar="B",
              help="The branch to record (default: the branch REV names, if any).")
def enqueue(repo: str, rev: str | None, config_file: Path | None, branch: str | None) -> None:
    """Test one commit of REPO now (default: HEAD) and print its SHA.

    Meant for git hooks (`ciq hook install` writes them): `ciq enqueue "$PWD"` in
    post-commit, or `ciq enqueue --branch B REPO SHA` with a pushed SHA in post-receive.
    """
    from .push import run

    if config_file is not None:
        _operator_configs(_store(_settings()), config_file, _repo_arg(repo))
    sys.exit(run(repo, rev, branch))


@cli.group()
def hook() -> None:
    """Git hooks that enqueue each commit the moment it lands, not at the next poll."""


@hook.command("install")
@click.argument("repo")
@click.option("--kind", type=click.Choice(["post-commit", "post-receive"]),
              help="post-commit (a working repository: each commit made there) or "
                   "post-receive (a server repository: each pushed commit). "
                   "Default: post-receive for a bare repository, post-commit otherwise.")
@click.option("--force", is_flag=True,
              help="Another program's hook there is kept as KIND.pre-ciq and run first.")
def hook_install(repo: str, kind: str | None, force: bool) -> None:
    """Install ciq's hook in REPO, a local repository (its top folder).

    The hook runs `ciq enqueue` with this ciq, in the background: commits and pushes
    never wait for it nor fail because of it; it logs to ciq-hook.log in the git folder.
    It uses the CIQ_BROKER_URL / CIQ_RESULT_BACKEND / CIQ_QUEUE set here, if any.
    """
    from . import hooks

    settings = _settings()
    target = hooks.locate(repo)
    kind = kind or target.default_kind
    if kind == "post-commit" and target.bare:
        raise click.UsageError(f"{target.repo} is bare: nobody commits there; "
                               "use --kind post-receive")
    env = hooks.pinned(settings, os.environ)
    done = hooks.install(target, kind, hooks.ciq_command(), env, force)
    _say_installed(target, done, env)


def _say_installed(target: Target, done: Installed, env: dict[str, str]) -> None:
    from .hooks import redacted

    verb = {"installed": "installed", "updated": "updated",
            "unchanged": "already installed:"}[done.action]
    kind = done.path.name
    click.echo(f"ciq: {kind} hook {verb} {done.path}")
    url = env.get("CIQ_BROKER_URL")
    where = redacted(url) if url else "CIQ_BROKER_URL of the committer, or the default"
    click.echo(f"     enqueues each new commit of {target.repo} at once (Redis: {where}); "
               f"log: {target.log}")
    if done.saved is not None:
        click.echo(f"     runs {done.saved} (the hook that was there) first")
    click.echo(f"     remove it with: ciq hook uninstall {shlex.quote(target.repo)}")


@hook.command("uninstall")
@click.argument("repo")
def hook_uninstall(repo: str) -> None:
    """Remove ciq's hooks from REPO (another program's hook is never touched)."""
    from . import hooks

    target = hooks.locate(repo)
    removed = hooks.uninstall(target)
    for r in removed:
        back = f"; put back the hook it ran ({r.path.name}{hooks.SAVED_SUFFIX})" \
            if r.restored else ""
        click.echo(f"ciq: removed {r.path}{back}")
    if not removed:
        click.echo(f"ciq: no ciq hook in {target.hooks_dir}; nothing to do")


@hook.command("show")
@click.argument("repo")
def hook_show(repo: str) -> None:
    """Which hooks of REPO are ciq's, and the last line of their log."""
    from . import hooks

    target = hooks.locate(repo)
    owners = {"ciq": "ciq's", "other": "another program's (not ciq's)", "none": "none"}
    for kind in hooks.KINDS:
        state = hooks.state(target, kind)
        where = f" {target.hook(kind)}" if state != "none" else ""
        click.echo(f"{kind:<13} {owners[state]}{where}")
    last = hooks.last_log_line(target)
    click.echo(f"log           {target.log}" + (f"\n              last: {_printable(last)}"
                                                if last else " (empty)"))


def _age(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@cli.command()
@click.argument("repo", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1, 10000),
              help="Commits per repository.")
def status(repo: str | None, as_json: bool, limit: int) -> None:
    """Recent commits and their state, newest first (all repositories without REPO)."""
    from . import listing

    settings = _settings()
    with _reader(settings) as redis:
        known = listing.repos(redis)
        if repo:
            name = _repo_arg(repo) if repo.rstrip("/") not in known else repo.rstrip("/")
            repos = [name]
        else:
            repos = known
        rows = [row for r in repos for row in listing.recent(redis, r, limit)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no commits yet" + (f" for {repos[0]}" if repo else ""))
        return
    colour = sys.stdout.isatty()
    current = None
    header = f"{'SHA':<12}  {'BRANCH':<16} {'STATUS':<8} {'PASS':>5} {'FAIL':>5} " \
             f"{'TIME':>7}  {'WORKER':<16} {'AGE':>4}  SUBJECT"
    for r in rows:
        if r["repo"] != current:
            current = r["repo"]
            title = click.style(current, bold=True) if colour else current
            click.echo(("\n" if current != rows[0]["repo"] else "") + title)
            click.echo(header)
        s = r["summary"] or {}
        passed = str(s["passed"]) if s else "-"
        failed = str(s["failed"] + s["errors"]) if s else "-"
        took = f"{r['duration']:.1f}s" if r["duration"] is not None else "-"
        state = f"{r['status']:<8}"
        if colour:
            state = click.style(state, fg=STATUS_COLOURS.get(r["status"]))
        branch = _printable(r["branch"] or "-")[:16]
        worker = (r["worker"] or "-")[:16]
        click.echo(
            f"{r['commit'][:12]}  {branch:<16} {state} {passed:>5} {failed:>5} {took:>7}  "
            f"{worker:<16} {_age(r['enqueued_at']):>4}  {_printable(r['subject'])[:60]}"
        )


def _printable(text: str) -> str:
    """Text from a repository, safe for a terminal (no escape sequences)."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


@cli.command()
@click.argument("repo")
@click.argument("sha")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--junit", is_flag=True, help="Print the report as JUnit XML.")
@click.option("--wait", default=0.0, type=click.FloatRange(min=0), metavar="S",
              help="Wait up to S seconds for a report still being made.")
@click.option("--watch", is_flag=True,
              help="Follow the commit (queued, running) until its report is final; the "
                   "exit status is then 0 if it passed, 1 if not.")
def report(repo: str, sha: str, as_json: bool, junit: bool, wait: float,
           watch: bool) -> None:
    """One commit's report. SHA may be a unique prefix."""
    from .gitrepo import validate_sha_prefix

    if as_json and junit:
        fail("choose one of --json and --junit", 2)
    settings = _settings()
    prefix = validate_sha_prefix(sha)
    store = _store(settings)
    repo = _repo_arg(repo, store)
    if watch:
        found = _watch(store, repo, store.resolve(repo, prefix), sys.stdout.isatty())
        _show_report(found, as_json, junit)
        sys.exit(0 if found.status == "passed" else 1)
    deadline = time.monotonic() + wait
    while True:
        try:
            full = store.resolve(repo, prefix)
            found = store.report(repo, full)
        except NotFound:
            if time.monotonic() >= deadline:
                raise
            full, found = None, None
        if found is not None:
            break
        if time.monotonic() >= deadline:
            state = "running" if store.lease_holder(repo, full or "") else "queued"
            fail(f"{prefix} has no report yet ({state}); use --wait S to wait for it")
        time.sleep(0.1)
    _show_report(found, as_json, junit)


def _show_report(found: Any, as_json: bool, junit: bool) -> None:
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
    elif junit:
        from .junit import to_junit

        click.echo(to_junit(found))
    else:
        _print_report(found, sys.stdout.isatty())


#: Seconds between two looks at a watched commit.
WATCH_POLL = 0.5


def _watch(store: Store, repo: str, sha: str, tty: bool) -> Any:
    """Print a watched commit's state as it changes (on one line rewritten in place on a
    terminal, a line per change otherwise), on stderr so that stdout stays the report;
    return the final report."""
    shown = None
    started = time.monotonic()
    while (found := store.report(repo, sha)) is None:
        meta = store.commit(repo, sha)
        if store.lease_holder(repo, sha):
            state = f"running on {meta.get('worker') or '?'} (attempt {meta.get('attempts', 1)})"
        else:
            died = int(meta.get("attempts") or 0) > 0
            state = "queued" + (" again (its run died)" if died else "")
        line = f"{sha[:12]} {state}"
        if tty:
            waited = int(time.monotonic() - started)
            click.echo(f"\r\033[K{line}, {waited}s", nl=False, err=True)
        elif line != shown:
            click.echo(line, err=True)
        shown = line
        time.sleep(WATCH_POLL)
    if tty and shown:
        click.echo("\r\033[K", nl=False, err=True)
    return found


def _print_report(r: Any, colour: bool) -> None:
    def style(text: str, **kw: Any) -> str:
        return click.style(text, **kw) if colour else text

    s = r.summary
    click.echo(f"{style(r.status.upper(), fg=STATUS_COLOURS[r.status], bold=True)}  "
               f"{r.commit}  {r.branch or '-'}  {r.repo}")
    click.echo(f"{s.total} tests: {s.passed} passed, {s.failed} failed, {s.errors} errors, "
               f"{s.skipped} skipped in {r.duration:.2f}s on {r.worker} "
               f"(attempt {r.attempts}, {r.finished_at})")
    if r.command:
        click.echo(f"command: {_printable(r.command)}")
    if r.environment:
        e, t = r.environment, r.timings
        how = "cached" if e.get("cache_hit") else f"built in {e.get('build_seconds', 0):.1f}s"
        click.echo(f"environment: Python {e.get('python')}, {e.get('key')} ({how}); "
                   f"setup {t.get('setup', 0):.2f}s, tests {t.get('test', 0):.2f}s")
    if r.shards:
        chunks = r.shards.get("chunks", [])
        ran = ", ".join(f"{c.get('worker') or '-'} {c.get('seconds', 0):.1f}s"
                        for c in chunks if "seconds" in c)
        imbalance = r.shards.get("imbalance")
        click.echo(f"sharded: {r.shards.get('count')} chunks"
                   + (f", imbalance {imbalance:.2f} (longest ÷ mean)" if imbalance else "")
                   + (f"; {ran}" if ran else ""))
    if r.message:
        click.echo(_printable(r.message))
    if r.not_run:
        click.echo(f"not run ({len(r.not_run)}): "
                   + ", ".join(_printable(i) for i in r.not_run[:10])
                   + (" ..." if len(r.not_run) > 10 else ""))
    bad = [t for t in r.tests if t.outcome in ("failed", "error")]
    for t in bad:
        click.echo(style(f"\n{t.outcome.upper()} {_printable(t.id)}", fg="red"))
        click.echo("    " + _printable(t.message).replace("\n", "\n    ")[:2000])
    if r.status != "passed" and r.output:
        click.echo(style("\n--- output ---", dim=True))
        click.echo(_printable(r.output)[-8000:])


@cli.command()
@click.option("--older-than", "days", required=True, type=click.FloatRange(min=0),
              metavar="DAYS", help="Delete reports of commits first seen before this.")
@click.option("--repo", "repos", multiple=True, help="Only these repositories (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
def prune(days: float, repos: tuple[str, ...], dry_run: bool) -> None:
    """Delete old final reports. Nothing is ever pruned unless you run this (cron it)."""
    settings = _settings()
    store = _store(settings)
    targets = [_repo_arg(r, store) for r in repos] or store.repos()
    total = sum(store.prune(r, days * 86400, dry_run) for r in targets)
    click.echo(f"{'would prune' if dry_run else 'pruned'} {total} reports")


@cli.command()
@click.argument("repo", required=False)
@click.option("--once", is_flag=True,
              help="Stop after the reports of the first poll (exit 1 if one is red).")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between polls.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Test runs at once.")
@click.option("--hook", is_flag=True,
              help="Also install ciq's git hook in REPO, pointing at this Redis: each commit "
                   "is enqueued the moment it is made (it stays; `ciq hook uninstall`).")
def up(repo: str | None, once: bool, interval: float, concurrency: int, hook: bool) -> None:
    """Run Redis, a worker and an observer on REPO here (a sample project without REPO).

    Uses a private redis-server under CIQ_DATA_DIR unless CIQ_BROKER_URL is set.
    """
    from .up import up as run_up

    settings = _settings()
    colour = sys.stdout.isatty()

    def show(found: object) -> None:
        click.echo("")
        _print_report(found, colour)
        click.echo("")

    sys.exit(run_up(settings, repo, once, interval, concurrency, click.echo, show, hook))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: the UI has no login).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
def web(host: str, port: int) -> None:
    """The reports web UI and its JSON API (/api), read-only, until Ctrl-C."""
    from .web.server import serve

    settings = _settings()
    _store(settings)  # Redis down: one line now, not a 503 on every page later
    serve(settings, host, port, lambda url: click.echo(f"ciq: web UI on {url}"))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.UsageError as exc:  # one line, not click's three
        where = exc.ctx.command_path if exc.ctx else "ciq"
        fail(f"{exc.format_message()} (see `{where} --help`)", exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StoreUnavailable as exc:
        fail(str(exc))
    except CiqError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # redis and kombu errors reaching the CLI
        name = type(exc).__name__
        if any(part in name for part in (
                "Connection", "Timeout", "OperationalError", "MasterNotFound")):
            fail(f"cannot reach Redis ({exc}); check CIQ_BROKER_URL / CIQ_RESULT_BACKEND")
        raise


if __name__ == "__main__":
    main()
