"""Per-repository settings: the operator's TOML file and the commit's own.

An operator lists repositories in a TOML file (``[[repo]]`` tables, `ciq observe
--config FILE`); a repository may carry the same keys in ``ciq.toml`` at its root or in
``[tool.ciq]`` of its ``pyproject.toml``. The commit's own settings win, key by key.
Unknown keys and bad values are a :class:`~ciq.errors.ConfigError` that names the key
and the file; a run turns it into an `error` report.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: What each key holds; `url` and `branches` only make sense in the operator's file.
_KINDS: dict[str, str] = {
    "url": "a string",
    "branches": "a list of strings",
    "test": "a string",
    "env": "a table of strings",
    "setup": "a list of strings",
    "timeout": "a positive number of seconds",
    "python": "a Python version like \"3.12\", a name like \"pypy3\", or a path",
    "deps": "a list of file names or glob patterns inside the repository",
    "extras": "a list of extra names (may be empty)",
    "install": "true or false",
    "queue": "a plain name like \"heavy\" (letters, digits, - and _)",
}


def _valid(key: str, value: Any) -> bool:
    if key in ("url", "test", "python"):
        return isinstance(value, str) and bool(value.strip())
    if key in ("branches", "setup"):
        return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    if key == "deps":  # inside the checkout
        return isinstance(value, list) and all(
            isinstance(v, str) and v and not v.startswith("/") and ".." not in v.split("/")
            for v in value)
    if key == "extras":
        return isinstance(value, list) and all(
            isinstance(v, str) and v.replace("-", "").replace("_", "").isalnum() for v in value)
    if key == "env":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if key == "queue":
        return isinstance(value, str) and bool(value) and value.replace("-", "").replace(
            "_", "").isalnum()
    if key == "install":
        return isinstance(value, bool)
    if key == "timeout":
        return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return False


@dataclass(frozen=True)
class RepoConfig:
    """Settings of one repository; None / empty means "not set here"."""

    source: str = ""
    url: str | None = None
    branches: tuple[str, ...] = ()
    test: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    timeout: float | None = None
    #: Interpreter of the run's environment; None: the worker's own.
    python: str | None = None
    #: Files (glob patterns) whose contents key the cached environment; empty: defaults.
    deps: tuple[str, ...] = ()
    #: Extras installed with the project; None: its test extras (test, tests, testing).
    extras: tuple[str, ...] | None = None
    #: Install the commit's project into its run's environment; None: when it is a
    #: package (false: the tests import it from the checkout, `src/` on the path).
    install: bool | None = None
    #: Broker queue of this repository's runs (the operator's file only: a commit's own
    #: settings are read after its run was queued); None: CIQ_QUEUE.
    queue: str | None = None

    @classmethod
    def parse(cls, data: Any, source: str) -> RepoConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: ciq settings must be a table")
        for key, value in data.items():
            if key not in _KINDS:
                known = ", ".join(sorted(_KINDS))
                raise ConfigError(f"{source}: unknown key {key!r} (known: {known})")
            if not _valid(key, value):
                raise ConfigError(f"{source}: {key!r} must be {_KINDS[key]}, not {value!r}")
        return cls(
            source=source,
            url=data.get("url"),
            branches=tuple(data.get("branches", ())),
            test=data.get("test"),
            env=dict(data.get("env", {})),
            setup=tuple(data.get("setup", ())),
            timeout=float(data["timeout"]) if "timeout" in data else None,
            python=data.get("python"),
            deps=tuple(data.get("deps", ())),
            extras=tuple(data["extras"]) if "extras" in data else None,
            install=data.get("install"),
            queue=data.get("queue"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings that were given, as TOML/JSON data (for Redis)."""
        out: dict[str, Any] = {}
        if self.url:
            out["url"] = self.url
        if self.branches:
            out["branches"] = list(self.branches)
        if self.test:
            out["test"] = self.test
        if self.env:
            out["env"] = dict(self.env)
        if self.setup:
            out["setup"] = list(self.setup)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.python:
            out["python"] = self.python
        if self.deps:
            out["deps"] = list(self.deps)
        if self.extras is not None:
            out["extras"] = list(self.extras)
        if self.install is not None:
            out["install"] = self.install
        if self.queue:
            out["queue"] = self.queue
        return out

    def over(self, base: RepoConfig | None) -> RepoConfig:
        """These settings, falling back to ``base`` key by key (env merged)."""
        if base is None:
            return self
        return RepoConfig(
            source=", ".join(s for s in (self.source, base.source) if s),
            url=self.url or base.url,
            branches=self.branches or base.branches,
            test=self.test or base.test,
            env={**base.env, **self.env},
            setup=self.setup or base.setup,
            timeout=self.timeout if self.timeout is not None else base.timeout,
            python=self.python or base.python,
            deps=self.deps or base.deps,
            extras=self.extras if self.extras is not None else base.extras,
            install=self.install if self.install is not None else base.install,
            queue=base.queue or self.queue,
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML ({exc})") from None


def operator_file(path: Path) -> list[RepoConfig]:
    """The ``[[repo]]`` entries of an operator's settings file; each needs a `url`."""
    try:
        data = _read_toml(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    unknown = set(data) - {"repo"}
    if unknown:
        raise ConfigError(f"{path}: unknown table {sorted(unknown)[0]!r}; use [[repo]]")
    repos = data.get("repo", [])
    if not isinstance(repos, list) or not repos:
        raise ConfigError(f"{path}: no [[repo]] entries")
    configs = []
    for i, entry in enumerate(repos, 1):
        config = RepoConfig.parse(entry, f"{path} [[repo]] #{i}")
        if not config.url:
            raise ConfigError(f"{path} [[repo]] #{i}: 'url' is required")
        configs.append(config)
    return configs


def from_checkout(root: Path) -> RepoConfig | None:
    """The commit's own settings: ``ciq.toml``, else ``[tool.ciq]`` of pyproject.toml."""
    own = root / "ciq.toml"
    if own.is_file():
        return RepoConfig.parse(_read_toml(own), "ciq.toml")
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {})
        if isinstance(tool, dict) and "ciq" in tool:
            return RepoConfig.parse(tool["ciq"], "pyproject.toml [tool.ciq]")
    return None
