"""Text written by the code under test, made fit for a terminal, a page and XML."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ciq.text import age, first_line, printable, xml_safe


def test_printable_drops_colours_and_marks_every_other_control() -> None:
    assert printable("\x1b[31mred\x1b[0m ok") == "red ok"
    assert printable("a\x07b\x1b]0;title\x07c") == "a?b?]0;title?c"
    assert printable("evil\u202etxt.exe") == "evil?txt.exe"  # a bidirectional override
    assert printable("one\r\ntwo\rthree\tfour") == "one\ntwo\nthree\tfour"
    assert printable(None) == ""


def test_xml_safe_keeps_what_xml_can_carry() -> None:
    assert xml_safe("nul\x00 esc\x1b ok\n\ttab é") == "nul? esc? ok\n\ttab é"


def test_first_line_skips_blanks_and_cuts_long_lines() -> None:
    assert first_line("\n  \n  subject  \nbody") == "subject"
    assert first_line("abcdefgh", limit=5) == "abcd…"
    assert first_line(None) == ""


def test_age_in_the_largest_whole_unit() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert age((now - timedelta(seconds=12)).isoformat(), now) == "12s"
    assert age((now - timedelta(hours=3, minutes=5)).isoformat(), now) == "3h"
    assert age("2026-01-01T00:00:00", now) == "1d"  # a naive time is UTC
    assert age("yesterday", now) == "–" and age(None, now, unknown="?") == "?"
