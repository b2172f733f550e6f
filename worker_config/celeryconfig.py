"""Celery settings every ciq process loads (``app.config_from_object``).

Values that depend on ciq settings — broker and backend URLs, the default queue, the
time limits and the Redis visibility timeout — are derived from ``CIQ_*`` variables in
:func:`ciq.celery.create_app`, which keeps them consistent with each other:

    run time limit (CIQ_TIME_LIMIT, default 900 s)   ciq kills the test tree, `timeout`
  < soft time limit  = limit + 60 s                 Celery's backstop, raises in the task
  < hard time limit  = limit + 90 s                 Celery's backstop, kills the pool child
  < visibility_timeout = hard + 600 s               Redis redelivers an unacked message

so a run that is still alive is never redelivered to a second worker.
"""

# -- Serialisation: only JSON crosses the broker; a pickled message is rejected. -------
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# -- Delivery: at least once. -----------------------------------------------------------
# Acknowledge after the run, not before: a worker that dies mid-run leaves its message
# unacknowledged, so the broker (and ciq's reconciler, much sooner) hands it on.
task_acks_late = True
# A pool process killed mid-run (OOM killer, kill -9) requeues its message at once
# instead of acknowledging it as failed. The lease stops the copy from overlapping a
# run that is still alive; ciq's attempt counter stops a poison commit from looping.
task_reject_on_worker_lost = True
# One message reserved per pool process (count): a slow commit never holds others
# hostage in a busy worker's prefetch buffer while other workers sit idle.
worker_prefetch_multiplier = 1
# Runs, not results, are ciq's business: the task stores its own report (exactly once,
# compare-and-set) in the results backend. Celery's result of the task is not kept.
task_ignore_result = True
# No expiry of results (seconds; None = keep forever): reports are history.
result_expires = None

# -- Connections ------------------------------------------------------------------------
broker_connection_retry_on_startup = True
# Retry for ever (None) while the broker is away: a worker outlives a Redis restart.
broker_connection_max_retries = None
# Seconds between Redis health checks of the broker connection.
broker_heartbeat = 10

# -- Events: Flower and `celery events` need them. --------------------------------------
worker_send_task_events = True
task_send_sent_event = True

# -- Logging: Celery must not take over the root logger of the process. ---------------
worker_hijack_root_logger = False

# -- Worker processes -------------------------------------------------------------------
# Recycle a pool process after this many runs (count) to bound slow memory leaks.
worker_max_tasks_per_child = 200
# Let a run finish when the broker connection drops: its report goes to the results
# backend, and the redelivered copy of its message finds the report and stands down.
worker_cancel_long_running_tasks_on_connection_loss = False
