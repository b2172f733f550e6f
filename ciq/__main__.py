"""``python -m ciq`` is the ``ciq`` command."""

from .launcher import main

main()
