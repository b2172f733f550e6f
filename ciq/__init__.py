"""ciq: distributed continuous integration for Python projects, on Celery and Redis.

Kept free of imports on purpose: `ciq enqueue` sits on the push path of a git hook, and
`celery -A ciq worker` finds the app in :mod:`ciq.celery` by itself.
"""

__version__ = "0.1.0"
