"""Text from repositories made fit to show: on a terminal, in a web page, in XML, in a
mail. A commit's message, a test's name and its output are written by the code under
test, so they may hold escape sequences, control characters or anything else.

Standard library only: `ciq status` uses it on its fast path.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# ANSI colour and cursor sequences, which pytest writes when it thinks it has a terminal.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# Characters XML 1.0 cannot carry; test output is full of them (colours, NULs).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def printable(text: str | None) -> str:
    """Text without colour sequences (dropped) or any other character that is not
    printable (each becomes ``?``: control characters, terminal titles, bidirectional
    overrides), safe for a terminal and readable in a page; newlines and tabs stay."""
    text = _ANSI.sub("", text or "").replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


def xml_safe(text: str) -> str:
    """Text that XML 1.0 can carry: each character it cannot becomes ``?``."""
    return _NOT_XML.sub("?", text)


def first_line(text: str | None, limit: int | None = None) -> str:
    """The first line that is not blank, stripped; cut to ``limit`` characters (the last
    one an ellipsis) when it is longer."""
    line = next((x.strip() for x in (text or "").splitlines() if x.strip()), "")
    if limit is not None and len(line) > limit:
        return line[: limit - 1] + "…"
    return line


def age(iso: str | None, now: datetime | None = None, unknown: str = "–") -> str:
    """How long ago an ISO 8601 time was: "12s", "5m", "3h", "2d"; ``unknown`` if it is
    missing or unreadable."""
    if not iso:
        return unknown
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return unknown
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0.0, ((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
