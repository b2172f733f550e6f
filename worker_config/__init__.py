"""Celery configuration of ciq workers; see :mod:`worker_config.celeryconfig`."""
