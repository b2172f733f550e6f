"""ciq's state in Redis: every key name (:mod:`.keys`), every atomic step (one Lua
script each under ``lua/``, loaded by :mod:`.scripts`), and the classes and functions
that read and write them. Nothing outside this package spells a key.

The light modules (keys, scripts, resp, claims, listing) are standard library only, for
the fast paths of `ciq enqueue` and `ciq status`; the rest use redis-py. So that those
paths stay light, this package imports nothing itself: ``from ciq.store import Store``
loads :mod:`.store` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import connect
    from .store import Store

__all__ = ["Store", "connect"]


def __getattr__(name: str) -> Any:
    # PEP 562: the heavy parts load when they are asked for, not with the package.
    if name == "Store":
        from .store import Store

        return Store
    if name == "connect":
        from .client import connect

        return connect
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
