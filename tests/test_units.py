"""Pure functions: settings, validation, report round trips, output capping."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciq.errors import BadInput, ConfigError
from ciq.gitrepo import normalise_repo, validate_rev, validate_sha, validate_sha_prefix
from ciq.report import Report, Summary, TestResult
from ciq.runner import OutputTail, run_environment
from ciq.settings import Settings


def test_settings_from_env_reads_each_variable() -> None:
    s = Settings.from_env({"CIQ_BROKER_URL": "redis://h:1/2", "CIQ_DATA_DIR": "/d",
                           "CIQ_TIME_LIMIT": "30", "CIQ_MAX_ATTEMPTS": "5"})
    assert s.broker_url == "redis://h:1/2"
    assert s.result_backend == "redis://h:1/2"  # defaults to the broker
    assert s.data_dir == Path("/d") and s.time_limit == 30.0 and s.max_attempts == 5
    assert s.visibility_timeout > s.hard_time_limit > s.soft_time_limit > s.time_limit


@pytest.mark.parametrize("env, named", [
    ({"CIQ_TIME_LIMIT": "soon"}, "CIQ_TIME_LIMIT"),
    ({"CIQ_TIME_LIMIT": "-1"}, "CIQ_TIME_LIMIT"),
    ({"CIQ_MAX_ATTEMPTS": "0"}, "CIQ_MAX_ATTEMPTS"),
    ({"CIQ_BROKER_URL": "amqp://guest@localhost//"}, "CIQ_BROKER_URL"),
    ({"CIQ_RESULT_BACKEND": "rpc://"}, "CIQ_RESULT_BACKEND"),
    ({"CELERY_BROKER_URL": "redis://elsewhere:6379/0"}, "unset CELERY_BROKER_URL"),
    ({"CIQ_BROKER_URL": "redis://a:1/0", "CELERY_RESULT_BACKEND": "redis://b:1/0"},
     "CELERY_RESULT_BACKEND is set and differs from CIQ_RESULT_BACKEND"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_celery_variables_that_agree_with_ciq_are_fine() -> None:
    url = "redis://a:1/0"
    assert Settings.from_env({"CIQ_BROKER_URL": url, "CELERY_BROKER_URL": url}).broker_url == url


@pytest.mark.parametrize("value", ["--upload-pack=touch x", "-x", "HEAD..main", "a b", "",
                                   "main;rm", "$(id)"])
def test_revisions_that_git_could_misread_are_refused(value: str) -> None:
    with pytest.raises(BadInput):
        validate_rev(value)


def test_plain_revisions_pass() -> None:
    for rev in ("HEAD", "main", "v1.0", "HEAD~2", "feature/x", "refs/heads/main", "abc123^"):
        assert validate_rev(rev) == rev


def test_shas_are_full_hex_and_prefixes_have_four_digits() -> None:
    assert validate_sha("A" * 40) == "a" * 40
    for bad in ("a" * 39, "g" * 40, "--all", "-" + "a" * 39):
        with pytest.raises(BadInput):
            validate_sha(bad)
    assert validate_sha_prefix("abcd") == "abcd"
    with pytest.raises(BadInput):
        validate_sha_prefix("abc")


def test_repositories_normalise(tmp_path: Path) -> None:
    assert normalise_repo(str(tmp_path) + "/") == str(tmp_path.resolve())
    assert normalise_repo("https://example.org/lib.git/") == "https://example.org/lib.git"
    assert normalise_repo("git@example.org:team/lib.git") == "git@example.org:team/lib.git"
    for bad in ("--upload-pack=x", "ext::sh -c touch% /tmp/pwned", "/no/such/dir",
                "https://exa mple.org/x"):
        with pytest.raises(BadInput):
            normalise_repo(bad)


def test_report_round_trips_through_json_dict() -> None:
    tests = (TestResult("t::a", "passed", 0.1), TestResult("t::b", "failed", 0.2, "no"))
    report = Report(repo="/r", commit="a" * 40, status="failed", branch="main",
                    summary=Summary.of(list(tests)), tests=tests, attempts=2)
    data = report.to_dict()
    assert data["summary"] == {"total": 2, "passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    assert data["tests"][1] == {"id": "t::b", "outcome": "failed", "duration": 0.2,
                                "message": "no"}
    assert Report.from_dict({**data, "added_later": 1}) == report
    with pytest.raises(ValueError):
        Report(repo="/r", commit="a" * 40, status="green")


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


def test_celery_configuration_keeps_its_promises() -> None:
    from ciq.celery import create_app

    s = Settings(time_limit=120)
    conf = create_app(s).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_default_queue == "ciq"
    assert s.time_limit < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.worker_hijack_root_logger is False
    assert conf.result_expires is None


def test_printed_urls_hide_every_password() -> None:
    from ciq.hooks import redacted

    url = "sentinel://:pw1@h1:26379/0;sentinel://:pw2@h2:26379/0?master_name=m"
    assert redacted(url) == ("sentinel://:***@h1:26379/0;"
                             "sentinel://:***@h2:26379/0?master_name=m")
    assert redacted("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"
