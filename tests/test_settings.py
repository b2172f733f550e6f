"""Settings read once from the environment, and the Celery configuration made of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciq.errors import ConfigError
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


def test_box_settings_are_checked(tmp_path: Path) -> None:
    s = Settings.from_env({"CIQ_MEMORY_LIMIT_MB": "256", "CIQ_PROCESS_LIMIT": "64",
                           "CIQ_TMP_MB": "8", "CIQ_BOX_SHARED": str(tmp_path / "shared"),
                           "CIQ_DATA_DIR": str(tmp_path / "data")})
    assert (s.memory_limit_mb, s.process_limit, s.tmp_mb) == (256, 64, 8)
    for env, named in (({"CIQ_PROCESS_LIMIT": "3"}, "CIQ_PROCESS_LIMIT"),
                       ({"CIQ_MEMORY_LIMIT_MB": "-1"}, "CIQ_MEMORY_LIMIT_MB"),
                       ({"CIQ_TMP_MB": "0"}, "CIQ_TMP_MB"),
                       ({"CIQ_BOX_SHARED": str(tmp_path / "data" / "x"),
                         "CIQ_DATA_DIR": str(tmp_path / "data")}, "CIQ_BOX_SHARED"),
                       ({"CIQ_BOX_SHARED": str(tmp_path),
                         "CIQ_DATA_DIR": str(tmp_path / "data")}, "CIQ_BOX_SHARED")):
        with pytest.raises(ConfigError, match=named):
            Settings.from_env(env)
