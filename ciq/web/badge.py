"""A status badge (SVG) in the flat style of shields.io: "ciq | passing"."""

from __future__ import annotations

from html import escape

from ..text import xml_safe

#: Message and colour per status (a report's, or the state of a commit not finished).
BADGES: dict[str | None, tuple[str, str]] = {
    "passed": ("passing", "#2da44e"),
    "failed": ("failing", "#d73a49"),
    "error": ("error", "#b3287f"),
    "timeout": ("timeout", "#c99a06"),
    "flaky": ("flaky", "#8a9a2c"),
    # Superseded by a newer commit (ciq.supersede): no verdict, so no alarm colour.
    "cancelled": ("cancelled", "#8c8c8c"),
    "running": ("running", "#5b7fa6"),
    "queued": ("queued", "#6f8aa8"),
    None: ("unknown", "#8c8c8c"),
}

def _xml(text: str) -> str:
    """Text for the SVG (branch names come from repositories): escaped, XML-safe."""
    return escape(xml_safe(text), quote=True)


def _width(text: str) -> int:
    """Pixels of ``text`` in 11px Verdana, near enough for a badge."""
    narrow = sum(c in "fijlrt.,:;|!'() " for c in text)
    wide = sum(c in "mwMW@%" for c in text)
    return round(6.6 * (len(text) - narrow - wide) + 4 * narrow + 9.5 * wide) + 10


def badge(status: str | None, title: str, label: str = "ciq") -> str:
    """The SVG of a badge for ``status`` (an unknown one shows "unknown"); ``title`` is
    the tooltip, e.g. the branch."""
    message, colour = BADGES.get(status, BADGES[None])
    lw, mw = _width(label), _width(message)
    total = lw + mw
    return f"""\
<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" \
aria-label="{_xml(label)}: {message}">
<title>{_xml(title)}: {message}</title>
<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>\
<stop offset="1" stop-opacity=".1"/></linearGradient>
<clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath>
<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>\
<rect x="{lw}" width="{mw}" height="20" fill="{colour}" class="status"/>\
<rect width="{total}" height="20" fill="url(#s)"/></g>
<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" \
font-size="11">
<text x="{lw / 2}" y="15" fill="#010101" fill-opacity=".3">{_xml(label)}</text>\
<text x="{lw / 2}" y="14">{_xml(label)}</text>
<text x="{lw + mw / 2}" y="15" fill="#010101" fill-opacity=".3">{message}</text>\
<text x="{lw + mw / 2}" y="14">{message}</text>
</g>
</svg>
"""
