"""Jinja filters of the web pages. Autoescaping does the HTML; these make text from a
repository readable (no control characters) and numbers short."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from markupsafe import Markup, escape

from ..text import age, printable
from ..text import first_line as _first_line


def first_line(text: str | None) -> str:
    return printable(_first_line(text))


def duration(seconds: float | None) -> str:
    """Seconds as "0.42s", "12.3s", "4m 05s"; "–" if unknown."""
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m {rest:02d}s"


def when(iso: str | None) -> str:
    """An ISO 8601 time as "2024-05-01 12:03:04 UTC"."""
    if not iso:
        return "-"
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return printable(iso)
    if then.tzinfo is not None:
        then = then.astimezone(UTC)
    return then.strftime("%Y-%m-%d %H:%M:%S UTC")


def path(text: str) -> str:
    """Text as a URL path (a branch may hold '/', which stays)."""
    return quote(text, safe="/")


def query(text: str) -> str:
    """Text as one URL query value."""
    return quote(text, safe="")


def code_spans(text: str) -> Markup:
    """Escaped text with `backquoted` parts in <code> (the API's own descriptions)."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


FILTERS: dict[str, Any] = {"printable": printable, "first_line": first_line, "age": age,
                           "duration": duration, "when": when, "path": path, "query": query,
                           "code_spans": code_spans}
