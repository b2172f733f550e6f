"""``ciq hook``: the git hooks that enqueue each commit the moment it lands."""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING

import click

from ..settings import Settings
from ..text import printable

if TYPE_CHECKING:
    from ..hooks import Installed, Target


@click.group()
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
    from .. import hooks

    settings = Settings.from_env()
    target = hooks.locate(repo)
    kind = kind or target.default_kind
    if kind == "post-commit" and target.bare:
        raise click.UsageError(f"{target.repo} is bare: nobody commits there; "
                               "use --kind post-receive")
    env = hooks.pinned(settings, os.environ)
    done = hooks.install(target, kind, hooks.ciq_command(), env, force)
    _say_installed(target, done, env)


def _say_installed(target: Target, done: Installed, env: dict[str, str]) -> None:
    from ..urls import redacted

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
    from .. import hooks

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
    from .. import hooks

    target = hooks.locate(repo)
    owners = {"ciq": "ciq's", "other": "another program's (not ciq's)", "none": "none"}
    for kind in hooks.KINDS:
        state = hooks.state(target, kind)
        where = f" {target.hook(kind)}" if state != "none" else ""
        click.echo(f"{kind:<13} {owners[state]}{where}")
    last = hooks.last_log_line(target)
    click.echo(f"log           {target.log}" + (f"\n              last: {printable(last)}"
                                                if last else " (empty)"))
