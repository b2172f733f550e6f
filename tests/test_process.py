"""The process runner's pure parts: the capped output and the run's environment."""

from __future__ import annotations

from ciq.runner.process import OutputTail, run_environment


def test_output_tail_keeps_head_and_tail_of_a_flood() -> None:
    out = OutputTail(1024)
    out.feed(b"HEAD" + b"x" * 600)
    for _ in range(10_000):
        out.feed(b"y" * 100)
    out.feed(b"the end")
    text = out.text()
    assert text.startswith("HEAD") and text.endswith("the end")
    assert "bytes of output omitted" in text
    assert len(text) < 1200
    assert out.total == 604 + 1_000_000 + 7


def test_output_tail_keeps_short_output_whole() -> None:
    out = OutputTail(1024)
    out.feed(b"short \xff output")
    assert out.text() == "short \ufffd output"


def test_test_environment_hides_ciq_and_celery_variables() -> None:
    env = run_environment({"PATH": "/bin", "CIQ_BROKER_URL": "redis://:secret@h",
                            "CELERY_BROKER_URL": "x", "HOME": "/root"})
    assert env["PATH"] == "/bin" and env["HOME"] == "/root"
    assert not [k for k in env if k.startswith(("CIQ_", "CELERY_"))]
