"""Entry point of the ``ciq`` command.

A plain ``ciq enqueue REPO [REV]`` (what git hooks run) goes straight to
:mod:`ciq.push` without loading click; everything else — options, help, other
commands — goes to :mod:`ciq.cli`.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["enqueue"] and 2 <= len(args) <= 3 and not any(
        a.startswith("-") for a in args[1:]
    ):
        from .push import run

        sys.exit(run(args[1], args[2] if len(args) == 3 else None))
    from .cli import main as cli_main

    cli_main()
