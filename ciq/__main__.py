"""``python -m ciq`` is the ``ciq`` command."""

from .cli import main

main()
