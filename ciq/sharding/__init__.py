"""Sharding one commit's suite over the workers: the plan (:mod:`.plan`) and the merge of
the chunks' reports (:mod:`.merge`). Pure: no Redis, no Celery, no callback into the
runner; the worker decides and runs (:mod:`ciq.worker.attempt`), the store keeps the
state (:mod:`ciq.store.shards`)."""
