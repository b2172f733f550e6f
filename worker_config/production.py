"""Celery settings for production workers: ``CIQ_CELERY_CONFIG=worker_config.production``.

Everything in :mod:`worker_config.celeryconfig` holds here too (each value there says
why); this module restates what an operator of a fleet of test hosts decides, and is
the one to copy into a module of their own (``CIQ_CELERY_CONFIG=ciq_celery`` with
``/etc/ciq/ciq_celery.py``: the systemd worker runs in /etc/ciq, and Celery's ``-A``
imports from its working directory) when they want other values.

What wins, from strongest to weakest:

1. the values ciq derives from ``CIQ_*`` variables in :func:`ciq.celery.create_app`,
   whatever a config module says: ``broker_url`` / ``result_backend`` (CIQ_BROKER_URL,
   CIQ_RESULT_BACKEND), ``task_default_queue`` (CIQ_QUEUE), the time limits and the
   Redis visibility timeout (CIQ_TIME_LIMIT, below), and ``master_name`` in the
   transport options for a ``sentinel://`` URL. Other transport options set here are
   kept (merged);
2. options of ``celery -A ciq worker`` on the command line (``--concurrency``,
   ``--autoscale``, ``--loglevel``, ``--prefetch-multiplier``, ``-E``...), which win
   over this module;
3. this module.

Two environment variables of Celery's own win over even (1) and must stay unset on ciq
hosts: ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` (also set by ``celery -b`` /
``--result-backend``): the worker would take runs from that Redis while ciq's leases and
reports stay in CIQ_RESULT_BACKEND. ``celery --config`` / ``CELERY_CONFIG_MODULE`` are
ignored (ciq loads CIQ_CELERY_CONFIG).
"""

from worker_config.celeryconfig import *  # noqa: F403  (the defaults, then changes below)

# -- Capacity -----------------------------------------------------------------------------
# Runs at once per worker process (count). A run is a pytest process tree: one per core
# is a good start; fewer when test suites are themselves parallel (pytest-xdist) or need
# much memory. Per host, not per cluster: start more hosts to test more commits at once.
# `--concurrency N` or `--autoscale MAX,MIN` on the command line win over it.
worker_concurrency = 4
# Prefetch: one message reserved per pool process (count), never a queue of them, so
# that a slow commit never holds others back on a busy worker while another sits idle.
worker_prefetch_multiplier = 1
# Recycle a pool process after this many runs (count), and after a run that left it
# above this much resident memory (KiB): the tests run in their own processes, so a
# large pool process is a slow leak of ciq's or a library's, not a test's.
worker_max_tasks_per_child = 200
worker_max_memory_per_child = 512 * 1024

# -- Delivery ---------------------------------------------------------------------------
# Acknowledge after the run, requeue when a pool process is killed (see celeryconfig):
# with ciq's lease, a run lost with its worker is rerun, never run twice at once.
task_acks_late = True
task_reject_on_worker_lost = True

# -- Events: Flower, `celery events` and `celery inspect` need them. -----------------------
worker_send_task_events = True
task_send_sent_event = True
# Seconds an event queue of a gone monitor (Flower restarted) lives, and an event waits
# in it: bounded, so a monitor that never comes back leaves nothing growing in Redis.
event_queue_expires = 60.0
event_queue_ttl = 5.0

# -- Logging ------------------------------------------------------------------------------
# Under systemd the worker's stdout goes to journald, which timestamps every line; the
# level comes from `--loglevel` (INFO in the unit). Celery must not take over the root
# logger (ciq's modules log through it), and print() output of the task code is logged
# at WARNING like Celery's default.
worker_hijack_root_logger = False
worker_redirect_stdouts_level = "WARNING"
worker_log_format = "%(levelname)s/%(processName)s %(name)s: %(message)s"
worker_task_log_format = (
    "%(levelname)s/%(processName)s %(task_name)s[%(task_id)s]: %(message)s")

# -- Time limits --------------------------------------------------------------------------
# Not set here: task_soft_time_limit, task_time_limit and the visibility timeout are
# derived from CIQ_TIME_LIMIT (seconds, 900 by default) by ciq.celery.create_app, so that
#   CIQ_TIME_LIMIT < soft limit (+60 s) < hard limit (+90 s) < visibility (+690 s)
# always holds. Change CIQ_TIME_LIMIT in /etc/ciq/ciq.env (and TimeoutStopSec of the
# worker unit with it); a value set here would be overwritten.

# -- Results ------------------------------------------------------------------------------
# Reports are history: never expire them (None); `ciq prune --older-than DAYS` from cron
# deletes old ones when you decide to.
result_expires = None
task_ignore_result = True

# -- Broker transport -----------------------------------------------------------------------
# Merged with what ciq sets (visibility_timeout, Sentinel's master_name). Seconds between
# health checks of an idle connection, and TCP keepalive: a Redis behind a firewall or a
# load balancer that drops idle connections is noticed within a minute, not at the next
# message.
# Keep `global_keyprefix`, `sep` and `priority_steps` unset: `ciq enqueue` and ciq's
# reconciler push run messages straight to the queue's Redis list, as kombu names it
# by default (and the backfill of older commits of the default branch to the list of
# priority 9, which every worker consuming the queue takes last: ciq.supersede).
broker_transport_options = {
    "health_check_interval": 25,
    "socket_keepalive": True,
}
