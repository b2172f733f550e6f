"""The house rules of ``ciq/``, held by tests: small modules, every Redis name and Lua
script in ``ciq/store``, every error in ``ciq/errors.py``, and fast paths that stay fast
(`ciq enqueue` and `ciq status` import neither click, redis-py, Celery nor GitPython)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ciq.settings import Settings
from ciq.store import scripts

from .helpers import PASSING, ciq_env

PACKAGE = Path(__file__).resolve().parent.parent / "ciq"
#: Lines a module may have (dramatiq keeps its modules under ~700; we keep them smaller).
MAX_LINES = 400
#: What the fast paths must not load: each costs 0.1 to 0.3 s of start-up.
HEAVY = ("celery", "kombu", "redis", "click", "git")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module (f-strings' literal parts too), with lines."""
    tree = ast.parse(path.read_text())
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_module_is_over_the_limit() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_only_the_store_spells_a_redis_key_or_holds_lua() -> None:
    key = re.compile(r"\bciq:[a-z]|celery-task-meta")
    found = []
    for path in modules():
        if PACKAGE / "store" in path.parents:
            continue
        for line, text in strings(path):
            if key.search(text) or "redis.call(" in text:
                found.append(f"{path.relative_to(PACKAGE)}:{line}: {text[:60]!r}")
    assert not found, "\n".join(found)


def test_every_lua_script_is_a_file_loaded_once() -> None:
    loaded = {v.name: v for v in vars(scripts).values() if isinstance(v, scripts.Script)}
    files = {p.stem for p in (PACKAGE / "store" / "lua").glob("*.lua")}
    assert set(loaded) == files
    for script in loaded.values():
        assert "redis.call" in script.text and len(script.sha) == 40


def test_every_error_class_lives_in_errors_and_is_a_ciq_error() -> None:
    from ciq import errors

    elsewhere = []
    for path in modules():
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases):
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert not elsewhere, elsewhere
    ours = [v for v in vars(errors).values() if isinstance(v, type) and
            issubclass(v, Exception)]
    assert len(ours) > 5 and all(issubclass(e, errors.CiqError) for e in ours)


def loaded_by(settings: Settings, cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess,
                                                                  set[str]]:
    """Run the ``ciq`` command with ``args`` (as ``python -m ciq`` does) and return what
    it did and the top-level modules it had imported by its exit."""
    out = cwd / "modules.json"
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = ['ciq', *{list(args)!r}]\n"
        "runpy.run_module('ciq', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ciq_env(settings), cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    return done, {name.split(".")[0] for name in json.loads(out.read_text())}


@pytest.mark.parametrize("form", [
    ["enqueue", "{repo}"],
    ["enqueue", "--branch", "main", "{repo}", "{sha}"],
    ["status"],
    ["status", "{repo}", "--json", "--limit", "5"],
    ["status", "-n", "3", "{repo}"],
])
def test_the_fast_paths_load_no_heavy_module(settings: Settings, make_repo, tmp_path: Path,
                                             form: list[str]) -> None:
    repo = make_repo(PASSING)
    args = [a.format(repo=repo.path, sha=repo.head()) for a in form]
    done, loaded = loaded_by(settings, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    if form[0] == "enqueue":
        assert done.stdout.strip() == repo.head()
        again, loaded = loaded_by(settings, tmp_path, *args)
        assert again.returncode == 0 and "enqueued before" in again.stderr, again.stderr
        assert not loaded & set(HEAVY)


def test_the_fast_paths_answer_errors_in_one_line_without_heavy_modules(
    settings: Settings, tmp_path: Path
) -> None:
    done, loaded = loaded_by(settings, tmp_path, "enqueue", "/no/such/repo")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "no such directory" in done.stderr and not loaded & set(HEAVY)


def test_other_forms_go_to_click(settings: Settings, tmp_path: Path) -> None:
    # The check above can fail: a form the fast path does not take loads click.
    done, loaded = loaded_by(settings, tmp_path, "status", "--limit", "0")
    assert done.returncode == 2 and "--limit" in done.stderr
    assert "click" in loaded
