"""Per-repository settings: parsing, precedence, and real runs that use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciq.errors import ConfigError
from ciq.repoconfig import RepoConfig, from_checkout, operator_file
from ciq.settings import Settings
from ciq.store import Store

from .helpers import run_ciq, wait_report


def test_settings_parse_and_the_commit_wins_key_by_key() -> None:
    operator = RepoConfig.parse({"url": "/r", "test": "make test", "timeout": 60,
                                 "env": {"A": "1", "B": "2"}}, "ops.toml")
    own = RepoConfig.parse({"test": "python -m pytest t", "env": {"B": "3"}}, "ciq.toml")
    merged = own.over(operator)
    assert merged.test == "python -m pytest t" and merged.timeout == 60
    assert merged.env == {"A": "1", "B": "3"} and merged.url == "/r"
    assert RepoConfig.parse(merged.to_dict(), "again").to_dict() == merged.to_dict()


@pytest.mark.parametrize("data, words", [
    ({"tset": "x"}, ["'tset'", "ciq.toml", "unknown key"]),
    ({"timeout": -3}, ["'timeout'", "ciq.toml", "positive number"]),
    ({"timeout": True}, ["'timeout'"]),
    ({"env": {"A": 1}}, ["'env'", "table of strings"]),
    ({"setup": "pip install ."}, ["'setup'", "list of strings"]),
    ({"test": ""}, ["'test'"]),
    ({"shard": "sometimes"}, ["'shard'", '"auto", "always" or "never"']),
    ({"fail_fast": "yes"}, ["'fail_fast'", "true or false"]),
])
def test_bad_settings_name_the_key_and_the_file(data: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        RepoConfig.parse(data, "ciq.toml")
    for word in words:
        assert word in str(caught.value)


def test_shard_settings_take_words_or_booleans_and_the_commit_wins() -> None:
    assert RepoConfig.parse({"shard": True}, "f").shard == "always"
    assert RepoConfig.parse({"shard": False}, "f").shard == "never"
    operator = RepoConfig.parse({"shard": "never", "fail_fast": True}, "ops.toml")
    mine = RepoConfig.parse({"shard": "always"}, "ciq.toml").over(operator)
    assert (mine.shard, mine.fail_fast) == ("always", True)
    assert RepoConfig.parse(mine.to_dict(), "x").to_dict() == mine.to_dict()


def test_the_commit_settings_come_from_ciq_toml_or_pyproject(tmp_path: Path) -> None:
    assert from_checkout(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.ciq]\ntest = "a"\n')
    found = from_checkout(tmp_path)
    assert found is not None and found.test == "a" and "pyproject.toml" in found.source
    (tmp_path / "ciq.toml").write_text('test = "b"\n')
    found = from_checkout(tmp_path)
    assert found is not None and found.test == "b"
    (tmp_path / "ciq.toml").write_text('test = "unclosed\n')
    with pytest.raises(ConfigError, match="ciq.toml: not valid TOML"):
        from_checkout(tmp_path)


def test_operator_files_need_repo_tables_with_urls(tmp_path: Path) -> None:
    path = tmp_path / "ops.toml"
    path.write_text('[[repo]]\nurl = "/a"\nbranches = ["main"]\n[[repo]]\ntest = "x"\n')
    with pytest.raises(ConfigError, match=r"#2: 'url' is required"):
        operator_file(path)
    path.write_text('[repos]\nurl = "/a"\n')
    with pytest.raises(ConfigError, match="unknown table 'repos'"):
        operator_file(path)
    with pytest.raises(ConfigError, match="cannot read it"):
        operator_file(tmp_path / "absent.toml")


CHECKS = """\
import os

def test_env_reaches_the_tests():
    assert os.environ["GREETING"] == "hi"

def test_another():
    pass
"""

UNITTESTS = """\
import unittest

class T(unittest.TestCase):
    def test_good(self):
        pass

    def test_bad(self):
        self.assertEqual(1, 2)
"""


@pytest.mark.slow
def test_runs_follow_the_commit_and_operator_settings(
    make_repo, worker, store: Store, settings: Settings, tmp_path: Path
) -> None:
    worker()
    # Given a project whose pyproject sets its test command and environment
    own = make_repo({
        "checks/test_checks.py": CHECKS,
        "pyproject.toml": '[tool.ciq]\ntest = "python -m pytest checks -q"\n'
                          'env = { GREETING = "hi" }\n',
    })
    # And one tested with unittest, which writes no JUnit
    plain = make_repo({"checks/test_plain.py": UNITTESTS,
                       "ciq.toml": 'test = "python -m unittest discover -s checks"\n'})
    # And one whose settings have a typo
    typo = make_repo({"tests/test_x.py": "def test_x():\n    pass\n",
                      "ciq.toml": 'tset = "python -m pytest"\n'})
    # And one configured only by the operator, with a setup step that fails
    spec = make_repo({"spec/test_spec.py": "def test_spec():\n    pass\n"})
    ops = tmp_path / "ops.toml"
    ops.write_text(f'[[repo]]\nurl = "{spec.path}"\ntest = "python -m pytest spec"\n'
                   f'setup = ["true", "exit 3"]\n')

    for repo in (own, plain, typo):
        assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    done = run_ciq(settings, "enqueue", "--config", str(ops), str(spec.path))
    assert done.returncode == 0, done.stderr

    # Then each run did what its settings say
    r = wait_report(store, str(own.path), own.head())
    assert r.status == "passed" and r.command == "python -m pytest checks -q"
    assert {t.id for t in r.tests} == {"checks/test_checks.py::test_env_reaches_the_tests",
                                       "checks/test_checks.py::test_another"}
    r = wait_report(store, str(plain.path), plain.head())
    assert r.status == "failed" and r.summary.total == 0 and r.exit_code == 1
    assert "FAILED (failures=1)" in r.output
    r = wait_report(store, str(typo.path), typo.head())
    assert r.status == "error" and "'tset'" in r.message and "ciq.toml" in r.message
    r = wait_report(store, str(spec.path), spec.head())
    assert r.status == "error" and "setup step 2 (`exit 3`)" in r.message

    # And once the operator fixes the setup, a new commit passes with the operator's command
    ops.write_text(f'[[repo]]\nurl = "{spec.path}"\ntest = "python -m pytest spec"\n')
    sha = spec.commit({"spec/test_more.py": "def test_more():\n    pass\n"}, "more")
    assert run_ciq(settings, "enqueue", "--config", str(ops), str(spec.path)).returncode == 0
    r = wait_report(store, str(spec.path), sha)
    assert r.status == "passed" and r.summary.passed == 2


@pytest.mark.slow
def test_without_settings_tests_are_found_where_pytest_would_find_them(
    make_repo, worker, store: Store, settings: Settings
) -> None:
    worker()
    # Given a test/ folder, tests inside the package, and a src/ layout
    singular = make_repo({"test/test_a.py": "def test_a():\n    pass\n"})
    inside = make_repo({"pkg/__init__.py": "", "pkg/test_inside.py":
                        "def test_inside():\n    pass\n"})
    src = make_repo({"src/lib/__init__.py": "VALUE = 42\n", "tests/test_lib.py":
                     "from lib import VALUE\n\ndef test_value():\n    assert VALUE == 42\n"})
    for repo in (singular, inside, src):
        assert run_ciq(settings, "enqueue", str(repo.path)).returncode == 0
    # Then each is tested with the right command and its tests are reported
    r = wait_report(store, str(singular.path), singular.head())
    assert (r.status, r.command, r.summary.passed) == ("passed", "python -m pytest test", 1)
    r = wait_report(store, str(inside.path), inside.head())
    assert (r.status, r.command) == ("passed", "python -m pytest")
    assert [t.id for t in r.tests] == ["pkg/test_inside.py::test_inside"]
    r = wait_report(store, str(src.path), src.head())
    assert (r.status, r.summary.passed) == ("passed", 1), r.output


def test_a_queue_must_be_a_plain_name(tmp_path: Path):
    from ciq.errors import ConfigError
    from ciq.repoconfig import RepoConfig

    assert RepoConfig.parse({"queue": "gpu-2"}, "ops.toml").queue == "gpu-2"
    with pytest.raises(ConfigError, match="'queue' must be a plain name"):
        RepoConfig.parse({"queue": "a b"}, "ops.toml")


def test_only_the_operator_may_give_a_repository_the_network() -> None:
    from ciq.errors import ConfigError
    from ciq.repoconfig import RepoConfig

    operator = RepoConfig.parse({"network": True}, "ops.toml")
    assert operator.network is True and operator.to_dict() == {"network": True}
    with pytest.raises(ConfigError, match="'network' may be set only in the operator's"):
        RepoConfig.parse({"network": True}, "ciq.toml", from_commit=True)
    # the commit's other settings win key by key; the network is the operator's alone
    own = RepoConfig.parse({"test": "pytest -x"}, "ciq.toml", from_commit=True)
    assert own.over(operator).network is True and own.over(None).network is None
