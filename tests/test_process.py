"""The process runner's pure parts: the capped output and the run's environment."""

from __future__ import annotations

from pathlib import Path

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


def test_the_run_environment_is_an_allow_list_never_the_workers() -> None:
    env = run_environment({"PATH": "/root/.pyenv/shims:/bin", "CIQ_BROKER_URL": "redis://:s@h",
                           "CELERY_BROKER_URL": "x", "HOME": "/root", "AWS_SECRET_KEY": "k",
                           "LANG": "de_DE.UTF-8", "LD_PRELOAD": "/x.so"}, Path("/run/home"))
    assert env["HOME"] == "/run/home" and env["LANG"] == "de_DE.UTF-8"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and env["CI"] == "true"
    assert env["GIT_CONFIG_VALUE_0"] == "/dev/null"  # git in the checkout runs no hooks
    assert not {"CIQ_BROKER_URL", "CELERY_BROKER_URL", "AWS_SECRET_KEY", "LD_PRELOAD"} & set(env)
