"""``/metrics``: the whole cluster's figures in Prometheus's text format.

A custom collector (prometheus_client's ``Collector``) reads them from Redis at each
scrape (:mod:`ciq.store.scrape`): counters and histograms that the workers' own atomic
steps keep there (:mod:`ciq.store.metrics`), and gauges read from the state itself. So any
`ciq web` serves the same figures, whichever hosts the runs were on, and a restart of it
loses nothing. Labels are the repository, a status, a reason, a queue: never a SHA, a
test id or a process id. With ``CIQ_METRICS_TOKEN`` set a scraper must send it as
``Authorization: Bearer TOKEN``; when Redis does not answer, the answer is a 503 with one
line (Prometheus then records the target as down).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import StoreUnavailable
from ..settings import Settings
from ..store.client import connect
from ..store.metrics import COUNTERS, HISTOGRAMS
from ..store.scrape import Reader, Snapshot, saturation
from ..store.shards import WORKER_SEEN_WITHIN

#: Counters: (name without _total, help).
_COUNTERS = {
    "enqueued": ("ciq_commits_enqueued", "Commits claimed for a run (observer, hook, CLI)."),
    "outcome": ("ciq_reports", "Final reports stored, by status."),
    "attempt": ("ciq_run_attempts", "Runs of a commit started, by why: first, worker_lost "
                "(its last run's worker died), lease_lapsed (its last run's lease lapsed "
                "with no death seen), deflake (a pytest run rerunning failing tests)."),
    "environment": ("ciq_environment_setups", "Run environments set up: cache hit or miss "
                    "(built for the run)."),
    "deflaked": ("ciq_deflaked_tests", "Failing tests rerun on their commit, by verdict: "
                 "flaky, order-dependent, confirmed, not rerun."),
    "quarantined_failures": ("ciq_quarantined_failures",
                             "Failing tests that were quarantined: muted, they decided no "
                             "commit's status."),
}
#: Histograms: (name, help).
_HISTOGRAMS = {
    "queue_wait": ("ciq_queue_wait_seconds",
                   "Seconds from a commit's claim to its first run taking its lease."),
    "time_to_report": ("ciq_time_to_report_seconds",
                       "Seconds from a commit's claim to its final report."),
    "run_seconds": ("ciq_run_duration_seconds", "Seconds of a final report's run."),
    "setup_seconds": ("ciq_environment_setup_seconds",
                      "Seconds a run spent on its environment (cached, or built now)."),
    "time_to_first_failure": ("ciq_time_to_first_failure_seconds",
                              "Seconds from a commit's claim to its first failing test's "
                              "outcome (commits with a failure)."),
    "rerun_seconds": ("ciq_rerun_seconds",
                      "Seconds a commit's reruns of its failing tests took."),
    "imbalance": ("ciq_shard_imbalance_ratio",
                  "Sharded runs: seconds of the longest chunk over the mean chunk's."),
}


class ClusterCollector(Collector):
    """Yields ciq's metric families from one :class:`Snapshot` per scrape."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        yield from families(self.reader.read())


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one scrape's figures."""
    for name, (metric, help_text) in _COUNTERS.items():
        label = COUNTERS[name]
        family = CounterMetricFamily(metric, help_text,
                                     labels=["repo", label[0]] if label else ["repo"])
        for repo in snap.repos:
            for value, count in repo.counters[name].items():
                family.add_metric([repo.repo, value] if label else [repo.repo], count)
        yield family
    for name, (metric, help_text) in _HISTOGRAMS.items():
        histogram = HistogramMetricFamily(metric, help_text, labels=["repo"])
        bounds = [*HISTOGRAMS[name], "+Inf"]
        for repo in snap.repos:
            h = repo.histograms[name]
            histogram.add_metric([repo.repo], list(zip(bounds, h.buckets, strict=True)), h.sum)
        yield histogram
    queues = GaugeMetricFamily("ciq_queue_length", "Messages on a broker queue (runs and "
                               "chunks sent, not taken yet; its backfill list too).",
                               labels=["queue"])
    for queue, length in snap.queues.items():
        queues.add_metric([queue], length)
    yield queues
    gauges: list[tuple[str, str, float]] = [
        ("ciq_commits_waiting", "Commits claimed that no run has taken yet.", snap.waiting),
        ("ciq_oldest_waiting_commit_age_seconds", "Seconds the longest-waiting of them has "
         "waited since its claim (or since its lost run went back to the queue).",
         snap.oldest_waiting),
        ("ciq_runs_in_progress", "Runs (commits, or chunks of sharded commits) holding a "
         "lease.", snap.runs),
        ("ciq_workers", f"Worker nodes seen in the last {WORKER_SEEN_WITHIN:g} seconds.",
         snap.workers),
        ("ciq_worker_processes", "Processes of those workers (runs they take at once).",
         snap.processes),
        ("ciq_worker_saturation", "Runs in progress per worker process (NaN: no worker).",
         saturation(snap)),
    ]
    for gauge, text, figure in gauges:
        yield GaugeMetricFamily(gauge, text, value=figure)


def install(app: FastAPI, settings: Settings, client: Any) -> None:
    """Serve ``/metrics`` on ``app``, reading ``client`` (ciq's Redis) and the broker."""
    broker = client if settings.broker_is_backend else connect(settings.broker_url,
                                                               decode_responses=True)
    registry = CollectorRegistry()
    registry.register(ClusterCollector(Reader(client, broker, settings.queue)))
    token = settings.metrics_token

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus's text format; 401 without the token when one is set, 503 when
        Redis does not answer."""
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return PlainTextResponse(
                    "give the metrics token (CIQ_METRICS_TOKEN of this ciq web) as "
                    "`Authorization: Bearer TOKEN`\n", status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="ciq metrics"'})
        try:
            body = generate_latest(registry)
        except StoreUnavailable as exc:
            return PlainTextResponse(" ".join(str(exc).split()) + "\n", status_code=503)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
