"""The Celery app: ``celery -A ciq worker`` and ``celery -A ciq flower`` find ``app`` here.

Tasks are registered through ``include``; this module never imports :mod:`ciq.tasks`
itself (the circular import that ``celery -A`` reports as a missing attribute).
"""

from __future__ import annotations

from celery import Celery

from .settings import Settings
from .worker import Housekeeping


def create_app(settings: Settings) -> Celery:
    app = Celery("ciq", include=["ciq.tasks"])
    app.config_from_object("worker_config.celeryconfig")
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        task_default_queue=settings.queue,
        task_time_limit=settings.hard_time_limit,
        task_soft_time_limit=settings.soft_time_limit,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
    )
    app.ciq_settings = settings
    app.steps["worker"].add(Housekeeping)
    return app


app = create_app(Settings.from_env())
