"""Likely failures first (ciq.ordering): the rule, its copy in the in-box plugin, the
plugin's static import graph on hostile files, the sharding plan's first chunks and the
`order` setting. Pure functions and files; pytest itself for the plugin's hook."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ciq.errors import ConfigError
from ciq.ordering import OrderHints, likely, order, tiers
from ciq.repoconfig import RepoConfig
from ciq.runner.outcome import default_command
from ciq.runner.plugin import changed_files, order_out, selection_folder
from ciq.sharding.plan import plan_chunks

from .helpers import GitRepo

SELECTION = Path(__file__).resolve().parent.parent / "ciq" / "runner" / "selection.py"


def plugin() -> ModuleType:
    """The in-box plugin's own file, imported as the box does (by itself)."""
    spec = importlib.util.spec_from_file_location("ciq_selection_under_test", SELECTION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IDS = [
    "tests/test_a.py::test_1", "tests/test_a.py::test_2", "tests/test_a.py::test_3",
    "tests/test_b.py::test_1", "tests/test_c.py::test_1", "tests/test_c.py::test_2",
    "tests/test_d.py::test_1", "tests/test_e.py::test_1", "tests/test_f.py::test_1",
]
DURATIONS = {i: 1.0 for i in IDS if "test_f" not in i} | {"tests/test_e.py::test_1": 5.0}


def test_the_tiers_go_failed_then_new_or_changed_then_importers_then_flaky_then_the_rest():
    ordered = order(IDS, failed={"tests/test_a.py::test_3"}, changed={"tests/test_c.py"},
                    importers={"tests/test_d.py"}, flaky={"tests/test_b.py::test_1"},
                    durations=DURATIONS)
    # test_f is new (never measured): with the changed file, tier 1, shortest first.
    assert ordered == [
        "tests/test_a.py::test_3", "tests/test_a.py::test_1", "tests/test_a.py::test_2",
        "tests/test_f.py::test_1", "tests/test_c.py::test_1", "tests/test_c.py::test_2",
        "tests/test_d.py::test_1", "tests/test_b.py::test_1", "tests/test_e.py::test_1",
    ]
    assert sorted(ordered) == sorted(IDS)


def test_whole_files_move_and_a_file_keeps_its_order_but_for_last_times_failures():
    ids = [f"t/test_x.py::test_{n}" for n in range(5)] + ["t/test_y.py::test_0"]
    ordered = order(ids, {"t/test_x.py::test_3", "t/test_y.py::test_0"}, (), (), (),
                    dict.fromkeys(ids, 1.0))
    # Both files are tier 0, the shorter first; each runs whole (one setup of its module
    # fixtures).
    assert ordered == ["t/test_y.py::test_0", "t/test_x.py::test_3", "t/test_x.py::test_0",
                       "t/test_x.py::test_1", "t/test_x.py::test_2", "t/test_x.py::test_4"]


def test_without_hints_the_rest_runs_longest_file_first_and_nothing_is_new_on_a_first_run():
    ids = ["a.py::t", "b.py::t", "b.py::u", "c.py::t"]
    assert order(ids, (), (), (), (), {"a.py::t": 1, "b.py::t": 1, "b.py::u": 1,
                                       "c.py::t": 3}) == ["c.py::t", "b.py::t", "b.py::u",
                                                          "a.py::t"]
    # No durations at all: every test would be "new"; none is, pytest's order stays.
    assert order(ids, (), (), (), (), {}) == ids
    assert set(tiers(ids, (), (), (), (), {}).values()) == {4}


def test_when_every_test_is_likely_none_stands_out_but_last_times_failures():
    ids = ["a.py::t", "b.py::t", "c.py::t"]
    durations = {"a.py::t": 1.0, "b.py::t": 9.0, "c.py::t": 5.0}
    # A root commit changed every file: longest first, as if nothing were known.
    assert order(ids, (), {"a.py", "b.py", "c.py"}, (), (), durations) == [
        "b.py::t", "c.py::t", "a.py::t"]
    assert likely(ids, (), {"a.py", "b.py", "c.py"}, (), (), durations) == []
    assert order(ids, {"a.py::t"}, {"b.py", "c.py"}, (), (), durations)[0] == "a.py::t"


def test_likely_is_the_ordered_prefix_of_the_likely_files():
    got = likely(IDS, {"tests/test_a.py::test_3"}, set(), set(), set(), DURATIONS)
    assert got == ["tests/test_a.py::test_3", "tests/test_a.py::test_1",
                   "tests/test_a.py::test_2", "tests/test_f.py::test_1"]


def _run_dir(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir(exist_ok=True)
    return tmp_path / "run"


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_the_import_graph_finds_transitive_importers_of_a_changed_module(tmp_path: Path):
    write(tmp_path, {
        "src/pkg/__init__.py": "",
        "src/pkg/core.py": "X = 1\n",
        "src/pkg/mid.py": "from . import core\n",
        "src/pkg/other.py": "import os\n",
        "tests/helpers.py": "from pkg.mid import core\n",
        "tests/test_direct.py": "from pkg import core\n",
        "tests/test_deep.py": "try:\n    import helpers\nexcept ImportError:\n    pass\n",
        "tests/test_lazy.py": "def test():\n    import pkg.core\n",  # not module level
        "tests/test_other.py": "import pkg.other\n",
    })
    root = os.path.realpath(tmp_path)
    tests = [os.path.join(root, "tests", n) for n in
             ("test_direct.py", "test_deep.py", "test_lazy.py", "test_other.py")]
    found = plugin().importers(root, tests, {os.path.join(root, "src/pkg/core.py")})
    assert {Path(f).name for f in found} == {"test_direct.py", "test_deep.py"}
    # A changed conftest.py: every test file under its folder.
    conf = {os.path.join(root, "tests", "conftest.py")}
    assert len(plugin().importers(root, tests, conf)) == 4


def test_the_import_graph_survives_hostile_files(tmp_path: Path):
    deep = "x = " + "(" * 50_000 + ")" * 50_000 + "\n"  # RecursionError in ast.parse
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/core.py": "",
        "pkg/big.py": "# " + "x" * (2 << 20) + "\nimport pkg.core\n",
        "pkg/deep.py": deep,
        "pkg/nul.py": b"import pkg.core\x00\n",
        "pkg/bad.py": "def (:\n",
        "pkg/warn.py": "import pkg.core\ns = '\\d'\n",  # a SyntaxWarning
        "pkg/loop_a.py": "import pkg.loop_b\nimport pkg.core\n",
        "pkg/loop_b.py": "import pkg.loop_a\n",
        "test_all.py": "import pkg.big, pkg.deep, pkg.nul, pkg.bad, pkg.loop_a\n"
                       "from ...... import nothing\nimport pkg.warn\n",
        "test_warn_only.py": "import pkg.warn\n",
    })
    (tmp_path / "pkg" / "fifo.py").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "pkg" / "fifo.py")  # reading it would block forever
    (tmp_path / "pkg" / "out.py").symlink_to("/etc/passwd")  # outside the checkout
    write(tmp_path, {"test_fifo.py": "import pkg.fifo, pkg.out\n"})
    root = os.path.realpath(tmp_path)
    tests = [os.path.join(root, n) for n in ("test_all.py", "test_warn_only.py",
                                             "test_fifo.py")]
    found = plugin().importers(root, tests, {os.path.join(root, "pkg", "core.py")})
    # Through the loop and the module with a warning; not through the big one (skipped).
    assert {Path(f).name for f in found} == {"test_all.py", "test_warn_only.py"}


def test_the_plugin_orders_a_real_pytest_run_and_writes_what_it_found(tmp_path: Path):
    write(tmp_path, {
        "lib.py": "def f():\n    return 1\n",
        "tests/test_1_plain.py": "def test_plain():\n    pass\n",
        "tests/test_2_user.py": "import lib\n\ndef test_user():\n    assert lib.f() == 1\n",
        "tests/test_3_was_red.py": "def test_ok():\n    pass\n\ndef test_red():\n    pass\n",
        # Over the graph's bound of a file: read by pytest, not by the plugin.
        "tests/test_4_weird.py": "# " + "x" * (1 << 20) + "\nimport lib\n\n"
                                 "def test_weird():\n    pass\n",
        "pytest.ini": "[pytest]\npythonpath = .\nfilterwarnings = error\n",
    })
    ids = ["tests/test_1_plain.py::test_plain", "tests/test_2_user.py::test_user",
           "tests/test_3_was_red.py::test_ok", "tests/test_3_was_red.py::test_red"]
    hints = OrderHints(failed=("tests/test_3_was_red.py::test_red",),
                       durations=dict.fromkeys(ids, 0.01))
    (tmp_path / "order.json").write_text(json.dumps(hints.to_dict(["lib.py"], str(tmp_path))))
    live, out = tmp_path / "live.jsonl", tmp_path / "order-out.json"
    cmd = default_command(tmp_path / "junit.xml", tmp_path, sys.executable, live=live,
                          order=tmp_path / "order.json") + [f"--ciq-order-out={out}"]
    # The plugin's folder as the box gets it: the plugin and the rule, nothing of ciq.
    env = {**os.environ, "PYTEST_ADDOPTS": "",
           "PYTHONPATH": str(selection_folder(_run_dir(tmp_path)))}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ran = [json.loads(line)["id"] for line in live.read_text().splitlines()]
    # The weird file is new (never measured): tier 1, but the red one's file goes first.
    assert ran == ["tests/test_3_was_red.py::test_red", "tests/test_3_was_red.py::test_ok",
                   "tests/test_4_weird.py::test_weird", "tests/test_2_user.py::test_user",
                   "tests/test_1_plain.py::test_plain"]
    assert order_out(out) == (set(), {"tests/test_2_user.py"})


def test_a_broken_hints_file_leaves_pytests_order(tmp_path: Path):
    write(tmp_path, {"tests/test_b.py": "def test_b():\n    pass\n",
                     "tests/test_a.py": "def test_a():\n    pass\n",
                     "order.json": "{nope"})
    live = tmp_path / "live.jsonl"
    cmd = default_command(tmp_path / "junit.xml", tmp_path, sys.executable, live=live,
                          order=tmp_path / "order.json")
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ,
                               "PYTHONPATH": str(selection_folder(_run_dir(tmp_path)))})
    assert done.returncode == 0 and "ciq: not ordering the tests" in done.stdout
    assert [json.loads(x)["id"] for x in live.read_text().splitlines()] == [
        "tests/test_a.py::test_a", "tests/test_b.py::test_b"]


def test_order_out_refuses_what_is_not_its_shape(tmp_path: Path):
    bad = tmp_path / "bad.json"
    for text in ("[]", '{"changed": [1], "importers": []}', "{", '{"changed": []}'):
        bad.write_text(text)
        assert order_out(bad) is None
    link = tmp_path / "link.json"
    link.symlink_to(bad)
    assert order_out(link) is None and order_out(tmp_path / "none.json") is None


def test_changed_files_of_a_commit_and_of_a_root_commit(tmp_path: Path):
    repo = GitRepo(tmp_path / "r")
    first = repo.commit({"a.py": "1", "tests/test_a.py": "2"}, "root")
    second = repo.commit({"a.py": "3", "b.py": "4"}, "change")
    git_dir = repo.path / ".git"
    assert sorted(changed_files(git_dir, first) or []) == ["a.py", "tests/test_a.py"]
    assert sorted(changed_files(git_dir, second) or []) == ["a.py", "b.py"]
    assert changed_files(git_dir, "f" * 40) is None
    assert changed_files(git_dir, "--output=/tmp/x") is None


def test_the_first_chunks_are_small_and_hold_the_likely_failures():
    d = {f"t/test_slow{i}.py::t": 2.0 for i in range(12)}
    d |= {f"t/test_fast{i}.py::t": 0.1 for i in range(20)}
    red = ["t/test_fast7.py::t", "t/test_slow3.py::t"]
    chunks = plan_chunks(list(d), d, workers=4, min_chunk=1.0, likely=red)
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == sorted(d) and len(flat) == len(set(flat))
    assert chunks[0][0] == "t/test_fast7.py::t"
    assert set(red) <= set(chunks[0] + chunks[1])
    sizes = [sum(d[i] for i in c) for c in chunks]
    assert sizes[0] <= sum(d.values()) / 4 / 4 + 2.0
    # Without likely failures the plan is what it was.
    assert plan_chunks(list(d), d, 4, 1.0) == plan_chunks(list(d), d, 4, 1.0, likely=[])
    # Likely failures are at most one small chunk per worker: the rest as usual.
    many = plan_chunks(list(d), d, workers=2, min_chunk=1.0, likely=list(d))
    assert sorted(i for c in many for i in c) == sorted(d)
    assert all(sum(d[i] for i in c) <= max(1.0, 25.6 / 8) + 2.0 for c in many[:2])


def test_the_order_setting():
    assert RepoConfig.parse({"order": "none"}, "ciq.toml", from_commit=True).order == "none"
    assert RepoConfig.parse({}, "x").over(RepoConfig.parse({"order": "none"}, "op")).order == (
        "none")
    assert RepoConfig.parse({"order": "none"}, "x").to_dict() == {"order": "none"}
    with pytest.raises(ConfigError, match="'order' must be"):
        RepoConfig.parse({"order": "random"}, "ciq.toml")
