"""``ciq quarantine``: mute a test's failures for a while, with an owner and a reason."""

from __future__ import annotations

import getpass
import json
import socket
from typing import TYPE_CHECKING

import click

from ..quarantine import DEFAULT_DAYS, MAX_DAYS, Entry, until
from ..text import printable

if TYPE_CHECKING:
    from ..store.quarantine import Quarantine


def _open(repo: str | None) -> tuple[Quarantine, str | None]:
    from ..store.quarantine import Quarantine
    from .commands import _repo_arg, _settings, _store

    store = _store(_settings())
    return Quarantine(store), _repo_arg(repo, store) if repo is not None else None


def _who() -> str:
    """Who ran the command, for the entry's ``added_by``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = "?"
    return f"{user}@{socket.gethostname()}"


@click.group()
def quarantine() -> None:
    """Tests whose failures do not decide their commit's status for a while.

    A quarantined test still runs and its outcome is kept; a commit whose only failures
    are quarantined tests is `passed` ("passed, 2 quarantined failures"). Errors of the
    run itself (collection, environment, time limit) are never muted.
    """


@quarantine.command("add")
@click.argument("repo")
@click.argument("test_id")
@click.option("--owner", required=True, metavar="EMAIL",
              help="Who looks after the test (an e-mail address).")
@click.option("--reason", required=True, metavar="TEXT",
              help="Why it is muted: what flakes, a ticket.")
@click.option("--days", default=DEFAULT_DAYS, show_default=True, type=int, metavar="N",
              help=f"Days until the quarantine ends by itself (1 to {MAX_DAYS}).")
def quarantine_add(repo: str, test_id: str, owner: str, reason: str, days: int) -> None:
    """Mute TEST_ID's failures in REPO for a while.

    TEST_ID as `ciq report` names it (tests/test_x.py::test_y[param]). Quarantining a
    test again renews its entry (owner, reason and days anew)."""
    from ..quarantine import entry

    made = entry(test_id, owner, reason, days, added_by=_who())
    q, name = _open(repo)
    assert name is not None
    new = q.add(name, made)
    verb = "quarantined" if new else "renewed the quarantine of"
    click.echo(f"ciq: {verb} {printable(made.test)} in {name} until {made.expires_at} "
               f"(owner {made.owner})")


@quarantine.command("remove")
@click.argument("repo")
@click.argument("test_id")
def quarantine_remove(repo: str, test_id: str) -> None:
    """Release TEST_ID of REPO: its failures count again."""
    q, name = _open(repo)
    assert name is not None
    q.remove(name, test_id)
    click.echo(f"ciq: released {printable(test_id)} in {name}; its failures count again")


@quarantine.command("list")
@click.argument("repo", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def quarantine_list(repo: str | None, as_json: bool) -> None:
    """List the quarantined tests of REPO (or of all).

    Expired entries are listed too, as expired, for 30 days after their end."""
    q, name = _open(repo)
    found = {name: q.entries(name)} if name is not None else q.everywhere()
    if as_json:
        rows = [{"repo": r, **e.to_dict()} for r, entries in found.items() for e in entries]
        click.echo(json.dumps(rows, indent=2))
        return
    if not any(found.values()):
        click.echo("no quarantined tests" + (f" in {name}" if name else ""))
        return
    click.echo("\n\n".join(_text(r, entries) for r, entries in found.items()))


def _text(repo: str, entries: list[Entry]) -> str:
    lines = [repo]
    for e in entries:
        lines.append(f"  {printable(e.test)}")
        lines.append(f"      {until(e.expires_at)} ({e.expires_at}) · owner {e.owner} · "
                     f"added {e.added_at} by {printable(e.added_by) or '?'}")
        lines.append(f"      {printable(e.reason)}")
    return "\n".join(lines)
