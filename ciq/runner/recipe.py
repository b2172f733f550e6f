"""What goes into a commit's run environment, and the key that names it.

A run's dependencies live in a virtual environment built once per *key*, a hash of what
decides its contents: the dependency files of the commit, the setup steps, the extra
environment and the exact Python. Commits that leave their dependencies alone share it
and pay nothing for them. This module reads a checkout and its settings into a
:class:`Recipe` and says which commands build it (:func:`build_steps`); it runs none of
them (:mod:`.environments` does, through the sandbox).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shlex
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..repoconfig import RepoConfig

#: Bumped when the way environments are built changes, so that old entries are not used.
FORMAT = 2
#: Extras installed with the project when the repository does not name its own, and the
#: dependency groups (PEP 735) installed when pyproject.toml has them.
TEST_EXTRAS = ("test", "tests", "testing")
#: Requirement files holding test dependencies, installed when present.
TEST_REQUIREMENTS = (
    "requirements-test.txt", "requirements-tests.txt", "requirements_test.txt",
    "requirements-testing.txt", "test-requirements.txt", "test_requirements.txt",
    "requirements/test.txt", "requirements/tests.txt", "requirements/testing.txt",
    "tests/requirements.txt",
)  # fmt: skip
#: Files whose contents key the cache unless the repository names its own (`deps`).
DEPENDENCY_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt",
                    *TEST_REQUIREMENTS)
#: The parts of pyproject.toml that decide an environment (a version bump does not).
PYPROJECT_KEYS = {
    "build-system": None,
    "dependency-groups": None,
    "project": ("name", "dependencies", "optional-dependencies", "requires-python",
                "dynamic"),
}
#: The parts of setup.cfg that decide an environment (not [metadata] version, not the
#: configuration of other tools such as bumpversion or flake8).
SETUP_CFG_KEYS = {
    "options": ("install_requires", "setup_requires", "python_requires", "tests_require"),
    "options.extras_require": None,
}
#: Build backend of a project that names none (what pip assumes, PEP 517).
LEGACY_BUILD_REQUIRES = ("setuptools>=40.8.0", "wheel")


@dataclass(frozen=True)
class Python:
    """The interpreter of a run's environment."""

    executable: str
    #: "3.11.7"
    version: str
    #: Implementation, full version and real path: part of the key.
    identity: str

    @classmethod
    def own(cls) -> Python:
        """The worker's interpreter (the default), by its real path: the box has the
        installation it belongs to, not the worker's virtual environment."""
        return cls(os.path.realpath(sys.executable),
                   ".".join(map(str, sys.version_info[:3])),
                   f"{sys.implementation.name} {sys.version} {os.path.realpath(sys.executable)}")

    @classmethod
    def find(cls, request: str, uv: str, source: str, probe: Probe) -> Python:
        """The interpreter a repository asks for (`python = "3.12"`, "pypy3" or a path).
        Finding and asking it run in a box (``probe``): the commit names it, so it may
        be anything. The error names the key and the file, since the fix is in them or
        on the host."""
        path = request
        if "/" not in request:
            code, out = probe([uv, "python", "find", request], None)
            found = [line for line in out.splitlines() if line.startswith("/")]
            if code != 0 or not found:
                raise ConfigError(f"{source}: 'python' = {request!r}: no such Python on "
                                  f"worker host {os.uname().nodename}")
            path = found[-1].strip()
        code, out = probe([path, "-I", "-c", _ASK], Path(path))
        answer = [line[len(_MARK):] for line in out.splitlines() if line.startswith(_MARK)]
        if code != 0 or len(answer) != 2:
            raise ConfigError(f"{source}: 'python' = {request!r}: {path} does not run")
        version, identity = answer
        return cls(path, version, identity)


#: Runs a command in a box with one more installation in it (an interpreter's path);
#: returns its exit status and output.
Probe = Callable[[list[str], "Path | None"], tuple[int, str]]
_MARK = "ciq-python: "
_ASK = (f"import os, sys; print({_MARK!r} + '.'.join(map(str, sys.version_info[:3]))); "
        f"print({_MARK!r} + sys.implementation.name, sys.version.replace(chr(10), ' '), "
        "os.path.realpath(sys.executable))")


def _pyproject_digest(data: bytes) -> bytes:
    try:
        doc = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return data
    kept: dict[str, Any] = {}
    for table, keys in PYPROJECT_KEYS.items():
        value = doc.get(table)
        if isinstance(value, dict) and keys:
            value = {k: value[k] for k in keys if k in value}
        if value is not None:
            kept[table] = value
    return json.dumps(kept, sort_keys=True, default=str).encode()


def _setup_cfg_digest(data: bytes) -> bytes:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(data.decode())
    except (UnicodeDecodeError, configparser.Error):
        return data
    kept = {section: {k: v for k, v in parser[section].items() if keys is None or k in keys}
            for section, keys in SETUP_CFG_KEYS.items() if parser.has_section(section)}
    return json.dumps(kept, sort_keys=True).encode()


#: Files of which only some parts count, and how to find them.
_PARTIAL = {"pyproject.toml": _pyproject_digest, "setup.cfg": _setup_cfg_digest}


def dependency_digests(root: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each dependency file of a checkout, by path. Of pyproject.toml and
    setup.cfg only the parts that decide dependencies count (a release that bumps a
    version reuses the environment), unless the repository names its files itself."""
    digests: dict[str, str] = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if not path.is_file() or path.is_symlink():
                continue
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes()
            if rel in _PARTIAL and patterns is DEPENDENCY_FILES:
                data = _PARTIAL[rel](data)
            digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def _pyproject(root: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """``doc[name]`` when it is a table, else empty: a project's TOML may hold anything."""
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Recipe:
    """How a commit's environment is made, and the key that names it."""

    python: Python
    #: The repository's setup steps; empty: install its dependencies the default way.
    setup: tuple[str, ...]
    env: dict[str, str]
    #: The project can be pip-installed (pyproject.toml with a build system or a
    #: [project] table, or setup.py).
    installable: bool
    extras: tuple[str, ...]
    #: PEP 735 dependency groups of pyproject.toml named like test extras.
    groups: tuple[str, ...]
    requirements: tuple[str, ...]
    build_requires: tuple[str, ...]
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        what = {
            "format": FORMAT, "python": self.python.identity, "setup": self.setup,
            "env": self.env, "installable": self.installable, "extras": self.extras,
            "requirements": self.requirements, "build_requires": self.build_requires,
            "groups": self.groups,
            "files": self.digests,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def recipe_for(root: Path, config: RepoConfig | None, python: Python) -> Recipe:
    """The recipe of a checkout's environment, from its files and its settings."""
    pyproject = _pyproject(root)
    installable = (root / "setup.py").is_file() or bool(
        {"build-system", "project"} & set(pyproject))
    build = _table(pyproject, "build-system")
    requires = build.get("requires")
    build_requires = tuple(r for r in requires if isinstance(r, str)) if isinstance(
        requires, list) else ()
    if installable and not build_requires:
        build_requires = LEGACY_BUILD_REQUIRES
    if config is not None and config.extras is not None:
        extras = config.extras
    else:
        declared = _table(_table(pyproject, "project"), "optional-dependencies")
        # Unless the extras are declared statically, they are not known without building
        # the project: ask for the usual test extras (one a project lacks is a warning).
        extras = tuple(e for e in TEST_EXTRAS if e in declared or not declared)
    groups = tuple(g for g in TEST_EXTRAS if g in _table(pyproject, "dependency-groups"))
    requirements = tuple(
        name for name in ("requirements.txt", *TEST_REQUIREMENTS) if (root / name).is_file())
    patterns = config.deps if config is not None and config.deps else DEPENDENCY_FILES
    return Recipe(
        python=python, setup=config.setup if config else (),
        env=dict(config.env) if config else {}, installable=installable, extras=extras,
        groups=groups, requirements=requirements, build_requires=build_requires,
        digests=dependency_digests(root, patterns),
    )  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One command of a build, run in the checkout under the runner's sandbox."""

    label: str
    argv: tuple[str, ...]


def build_steps(recipe: Recipe, env_dir: Path, checkout: Path, uv: str) -> list[Step]:
    """The commands that build ``recipe`` into ``env_dir`` from ``checkout``."""
    py = str(env_dir / "bin" / "python")
    install = (uv, "pip", "install", "--python", py)
    steps = [Step("create the virtual environment",
                  (uv, "venv", "--quiet", "--seed", "--python", recipe.python.executable,
                   str(env_dir)))]
    if recipe.setup:
        steps += [Step(f"setup step {n} (`{s}`)", ("/bin/sh", "-c", s))
                  for n, s in enumerate(recipe.setup, 1)]
    else:
        what: list[str] = []
        if recipe.installable:
            extras = f"[{','.join(recipe.extras)}]" if recipe.extras else ""
            what += ["-e", f"{checkout}{extras}"]
        for name in recipe.requirements:
            what += ["-r", name]
        for group in recipe.groups:
            what += ["--group", group]
        if what:
            steps.append(Step("install the dependencies", (*install, *what)))
    if recipe.installable:
        # Each run installs the project editable without build isolation: its build
        # backend must be here, so that runs never need the package index.
        steps.append(Step("install the build backend", (*install, *recipe.build_requires)))
    # pytest, when the project's dependencies do not bring it: the default test command
    # needs it, and a `test` line naming it should not need a setup step for it.
    steps.append(Step("install pytest", (
        "/bin/sh", "-c",
        f"{shlex.quote(py)} -c 'import pytest' 2>/dev/null || {shlex.join(install)} pytest")))
    return steps


def install_step(overlay: Path, checkout: Path, uv: str) -> Step:
    """Install the commit's project into the run's environment: editable, without its
    dependencies (the cached environment has them) and without the network."""
    return Step("install the project", (
        uv, "pip", "install", "--quiet", "--python", str(overlay / "bin" / "python"),
        "--no-deps", "--no-build-isolation", "--offline", "-e", str(checkout)))
