"""The ``ciq`` commands, with click: every form that :mod:`ciq.cli` does not take on its
fast path. Every failure is one line on stderr and a non-zero exit.

The modules behind each command are imported inside it, so that `ciq --help` or `ciq
hook show` do not pay for redis-py, Celery or GitPython.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import BadInput, NotFound
from ..report import Report
from ..settings import Settings
from ..text import printable
from . import MAX_LIMIT, explain, fail
from . import enqueue as enqueue_commit
from . import status as status_command
from .hook import hook
from .quarantine import quarantine
from .render import report_text

if TYPE_CHECKING:
    from ..dispatch import Sender
    from ..store.store import Store


def _settings() -> Settings:
    return Settings.from_env()


def _store(settings: Settings) -> Store:
    from ..store.store import Store

    store = Store.from_url(settings.result_backend)
    store.ping()
    return store


def _sender(settings: Settings, store: Store) -> Sender:
    from ..dispatch import Sender

    return Sender.for_store(settings, store)


def _repo_arg(repo: str, store: Store | None = None) -> str:
    """Normalise a repository argument; a path that is gone may still name known reports."""
    from ..gitrepo import normalise_repo

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


cli.add_command(hook)
cli.add_command(quarantine)

CONFIG_OPTION = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    help="The operator's TOML settings: [[repo]] tables with url, branches, test, env, "
         "setup, timeout.")


def _operator_configs(store: Store, config_file: Path, repo: str | None) -> list[Any]:
    """The [[repo]] entries of FILE (only REPO's when given), published for workers."""
    from ..gitrepo import normalise_repo
    from ..repoconfig import operator_file

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
    from ..gitrepo import validate_rev
    from ..observer import Observer, Watch

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
    observer = Observer(watches, store, _sender(settings, store), settings.data_dir)
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
    if config_file is not None:
        _operator_configs(_store(_settings()), config_file, _repo_arg(repo))
    sys.exit(enqueue_commit(repo, rev, branch))


@cli.command()
@click.argument("repo", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--limit", "-n", default=20, show_default=True,
              type=click.IntRange(1, MAX_LIMIT), help="Commits per repository.")
def status(repo: str | None, as_json: bool, limit: int) -> None:
    """Recent commits and their state, newest first (all repositories without REPO)."""
    sys.exit(status_command(repo, as_json, limit))


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
    from ..gitrepo import validate_sha_prefix

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
        from ..junit import to_junit

        click.echo(to_junit(found))
    else:
        click.echo(report_text(found, sys.stdout.isatty()))


#: Seconds between two looks at a watched commit.
WATCH_POLL = 0.5


def _watch(store: Store, repo: str, sha: str, tty: bool) -> Any:
    """Print a watched commit's state as it changes (on one line rewritten in place on a
    terminal, a line per change otherwise), on stderr so that stdout stays the report;
    return the final report."""
    from ..store.live import first_failure

    shown = None
    started = time.monotonic()
    failure_told = False
    while (found := store.report(repo, sha)) is None:
        meta = store.commit(repo, sha)
        if not failure_told and (failure := first_failure(store, repo, sha)):
            # Seconds after it happened, long before the report: worth its own line.
            failure_told = True
            message = printable(str(failure.get("message") or ""))[:200]
            click.echo(f"{chr(13)}\033[K" if tty else "", nl=False, err=True)
            click.echo(f"first failure: {printable(str(failure.get('id')))}"
                       f"{': ' + message if message else ''}", err=True)
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

    def show(found: Report) -> None:
        click.echo(f"\n{report_text(found, colour)}\n")

    sys.exit(run_up(settings, repo, once, interval, concurrency, click.echo, show, hook))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: the UI has no login).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
def web(host: str, port: int) -> None:
    """The reports web UI and its JSON API (/api), until Ctrl-C.

    Read-only, except quarantining tests, which needs CIQ_OPERATOR_TOKEN set here and
    given by the caller."""
    from ..web.server import serve

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
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # ciq's own errors, and Redis away or refusing
        message = explain(exc)
        if message is None:
            raise
        fail(message)
