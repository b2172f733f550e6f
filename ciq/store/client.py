"""Opening ciq's Redis with redis-py: plain, TLS, a Unix socket or through Sentinel."""

from __future__ import annotations

import os
import re
import socket
import uuid
from typing import Any

import redis
from redis.sentinel import Sentinel

from ..urls import SentinelURL

#: TCP keepalive of ciq's connections: a Redis host that vanished silently is noticed
#: in about KEEPIDLE + KEEPINTVL * KEEPCNT seconds instead of the kernel's two hours.
KEEPALIVE = {socket.TCP_KEEPIDLE: 3, socket.TCP_KEEPINTVL: 1, socket.TCP_KEEPCNT: 3}


def process_name(role: str) -> str:
    """The name (``CLIENT SETNAME``) of this process's connections: ``ciq-<role>-<host>-
    <pid>-<random>``, unique to the process, so that the leases it takes are freed as
    soon as Redis sees its connections go (:mod:`.liveness`)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", os.uname().nodename)[:64]
    return f"ciq-{role}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def connect(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for a ciq Redis URL: ``redis://``, ``rediss://``, ``unix://``, or
    ``sentinel://...?master_name=NAME`` (see :class:`~ciq.urls.SentinelURL`), whose
    client asks the sentinels for the master again after a failover."""
    options = {"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 30,
               "retry_on_timeout": True, "socket_keepalive": True,
               "socket_keepalive_options": KEEPALIVE, **options}
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **options)
    where = SentinelURL.parse(url)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(where.sentinels), sentinel_kwargs=timeouts)
    return sentinel.master_for(where.master_name, db=where.db, username=where.username,
                               password=where.password, **options)
