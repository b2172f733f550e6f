"""Entry point of the ``ciq`` command.

A plain ``ciq enqueue [--branch B] REPO [REV]`` (what git hooks run) goes straight to
:mod:`ciq.push` without loading click; everything else — options, help, other
commands — goes to :mod:`ciq.cli`.
"""

from __future__ import annotations

import sys


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


def main() -> None:
    plain = _plain_enqueue(sys.argv[1:])
    if plain is not None:
        from .push import run

        sys.exit(run(*plain))
    from .cli import main as cli_main

    cli_main()
