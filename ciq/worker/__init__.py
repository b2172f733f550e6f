"""What a Celery worker does for ciq: one attempt at a commit or a chunk under its lease
(:mod:`.attempt`, :mod:`.lease`), and the housekeeping threads beside the pool
(:mod:`.housekeeping`: reconciler, stale-run sweeper, outbox, notifications). The Celery
tasks (:mod:`ciq.tasks`) are thin wrappers over :class:`.attempt.Attempts`.
"""
