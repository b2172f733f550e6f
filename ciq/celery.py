"""The Celery app: ``celery -A ciq worker`` and ``celery -A ciq flower`` find ``app`` here.

Tasks are registered through ``include``; this module never imports :mod:`ciq.tasks`
itself (the circular import that ``celery -A`` reports as a missing attribute).
"""

from __future__ import annotations

import importlib
from typing import Any

from celery import Celery

from .errors import ConfigError
from .settings import Settings
from .urls import SentinelURL
from .worker.housekeeping import Housekeeping


def _celery_url(url: str) -> tuple[str, dict[str, Any]]:
    """The URL Celery is given for a ciq URL, and the transport options it needs."""
    if not url.startswith("sentinel://"):
        return url, {}
    sentinel = SentinelURL.parse(url)
    return sentinel.celery_url, {"master_name": sentinel.master_name}


def _config_module(settings: Settings) -> Any:
    try:
        return importlib.import_module(settings.celery_config)
    except ImportError as exc:
        var = settings.ENV["celery_config"]
        raise ConfigError(f"{var}={settings.celery_config!r} cannot be imported ({exc}); "
                          "name a module on the worker's path, e.g. worker_config.production"
                          ) from None


def create_app(settings: Settings) -> Celery:
    app = Celery("ciq", include=["ciq.tasks"])
    app.config_from_object(_config_module(settings))
    broker_url, broker_options = _celery_url(settings.broker_url)
    backend_url, backend_options = _celery_url(settings.result_backend)
    # Merged into the config module's transport options (an operator's socket_keepalive
    # or sentinel_kwargs stay), the values that must agree with ciq's settings on top.
    visibility = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        broker_url=broker_url,
        result_backend=backend_url,
        task_default_queue=settings.queue,
        task_time_limit=settings.hard_time_limit,
        task_soft_time_limit=settings.soft_time_limit,
        broker_transport_options={
            **app.conf.broker_transport_options, **broker_options, **visibility},
        result_backend_transport_options={
            **app.conf.result_backend_transport_options, **backend_options, **visibility},
    )  # fmt: skip
    app.ciq_settings = settings
    app.steps["worker"].add(Housekeeping)
    return app


app = create_app(Settings.from_env())
