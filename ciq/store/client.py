"""Opening ciq's Redis with redis-py: plain, TLS, a Unix socket or through Sentinel."""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel

from ..urls import SentinelURL


def connect(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for a ciq Redis URL: ``redis://``, ``rediss://``, ``unix://``, or
    ``sentinel://...?master_name=NAME`` (see :class:`~ciq.urls.SentinelURL`), whose
    client asks the sentinels for the master again after a failover."""
    options = {"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 30,
               "retry_on_timeout": True, **options}
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **options)
    where = SentinelURL.parse(url)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(where.sentinels), sentinel_kwargs=timeouts)
    return sentinel.master_for(where.master_name, db=where.db, username=where.username,
                               password=where.password, **options)
