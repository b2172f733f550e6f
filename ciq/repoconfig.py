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
from .quarantine import Policy
from .settings import FIRST_FAILURE, NOTIFY_ON
from .supersede import problem as supersede_problem
from .urls import email_problem, webhook_problem

_POLICY = supersede_problem(None) or ""
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
    "notify": "a table with webhook, secret, email, on, first_failure",
    "shard": "\"auto\", \"always\" or \"never\" (or true / false)",
    "fail_fast": "true or false",
    "order": "\"likely-failures\" or \"none\"",
    "network": "true or false",
    "quarantine": "a table with mode, flaky_commits, window, release_after, days",
    "supersede": _POLICY,
    "supersede_default": _POLICY,
    "supersede_branches": f"a table of branch patterns (like \"release/*\") to {_POLICY}",
    "default_branch": "a branch name like \"main\"",
}
#: Keys only the operator's file may set: a commit may not widen its own box or say
#: where its notifications go.
_OPERATOR_ONLY = {
    "notify": "[repo.notify] of its [[repo]] entry",
    "network": "`network = true` in its [[repo]] entry",
    # A commit that could turn on auto-quarantine would mute its own flaky tests.
    "quarantine": "[repo.quarantine] of its [[repo]] entry",
    # Decided when a commit is claimed, before any commit's own settings are read.
    "supersede": "`supersede = ...` in its [[repo]] entry",
    "supersede_default": "`supersede_default = ...` in its [[repo]] entry",
    "supersede_branches": "[repo.supersede_branches] of its [[repo]] entry",
    "default_branch": "`default_branch = ...` in its [[repo]] entry",
}

#: Keys of a ``notify`` table and what each holds.
_NOTIFY_KINDS: dict[str, str] = {
    "webhook": "an http:// or https:// URL with a host",
    "secret": "a non-empty string",
    "email": "a list of addresses like \"dev@example.org\"",
    "on": " or ".join(f'"{o}"' for o in NOTIFY_ON),
    "first_failure": " or ".join(f'"{o}"' for o in FIRST_FAILURE),
}


@dataclass(frozen=True)
class Notify:
    """Where a repository's notifications go besides the global targets (CIQ_WEBHOOK_URL,
    CIQ_NOTIFY_EMAIL), and when (``on``: over CIQ_NOTIFY_ON). The operator's file only: a
    commit choosing where its reports are sent could aim the workers at any URL or mail
    anyone, and a commit must never see the webhook's secret."""

    webhook: str | None = field(default=None, repr=False)  # may hold a token
    #: Key of X-Ciq-Signature for ``webhook``; None: CIQ_WEBHOOK_SECRET.
    secret: str | None = field(default=None, repr=False)
    email: tuple[str, ...] = ()
    on: str | None = None
    #: Over CIQ_NOTIFY_FIRST_FAILURE: whether the webhooks hear of a first failure.
    first_failure: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], source: str) -> Notify:
        for key, value in data.items():
            if key not in _NOTIFY_KINDS:
                known = ", ".join(sorted(_NOTIFY_KINDS))
                raise ConfigError(f"{source}: unknown key 'notify.{key}' (known: {known})")
            if not _valid_notify(key, value):
                # Neither a secret nor a webhook URL (chat webhooks hold a token) is shown.
                shown = "" if key in ("secret", "webhook") else f", not {value!r}"
                raise ConfigError(f"{source}: 'notify.{key}' must be {_NOTIFY_KINDS[key]}"
                                  f"{shown}")
        return cls(webhook=data.get("webhook"), secret=data.get("secret"),
                   email=tuple(data.get("email", ())), on=data.get("on"),
                   first_failure=data.get("first_failure"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.webhook:
            out["webhook"] = self.webhook
        if self.secret:
            out["secret"] = self.secret
        if self.email:
            out["email"] = list(self.email)
        if self.on:
            out["on"] = self.on
        if self.first_failure:
            out["first_failure"] = self.first_failure
        return out


def _valid_notify(key: str, value: Any) -> bool:
    if key == "webhook":
        return isinstance(value, str) and webhook_problem(value) is None
    if key == "secret":
        return isinstance(value, str) and bool(value)
    if key == "email":
        return isinstance(value, list) and all(
            isinstance(v, str) and email_problem(v) is None for v in value)
    if key == "on":
        return value in NOTIFY_ON
    if key == "first_failure":
        return value in FIRST_FAILURE
    return False


def _valid(key: str, value: Any) -> bool:
    if key in ("supersede", "supersede_default"):
        return supersede_problem(value) is None
    if key == "supersede_branches":
        return isinstance(value, dict) and all(
            isinstance(k, str) and k and supersede_problem(v) is None for k, v in value.items())
    if key in ("url", "test", "python", "default_branch"):
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
    if key in ("install", "fail_fast", "network"):
        return isinstance(value, bool)
    if key == "shard":
        return isinstance(value, bool) or value in ("auto", "always", "never")
    if key == "order":
        return value in ("likely-failures", "none")
    if key in ("notify", "quarantine"):  # their keys are checked by their own parse
        return isinstance(value, dict)
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
    #: Notification targets and policy of this repository (the operator's file only).
    notify: Notify | None = None
    #: Split the suite over the workers (ciq.sharding): auto, always, never; None:
    #: CIQ_SHARD.
    shard: str | None = None
    #: A sharded run reports `failed` at its first failing chunk; the rest do not run.
    fail_fast: bool | None = None
    #: The order of the tests (ciq.ordering): "likely-failures" first, or pytest's own
    #: ("none", the baseline of bench/ordering.py); None: likely failures first.
    order: str | None = None
    #: The tests may use the network (the operator's file only); None: they may not.
    network: bool | None = None
    #: Automatic quarantine of flaky tests (the operator's file only); None: the
    #: default :class:`~ciq.quarantine.Policy` (mode "suggest").
    quarantine: Policy | None = None
    #: What a newer commit does to older ones (:mod:`ciq.supersede`; the operator's file
    #: only): on other branches, on the default branch, per branch pattern; None / empty:
    #: "cancel", "deprioritise", none.
    supersede: str | None = None
    supersede_default: str | None = None
    supersede_branches: dict[str, str] = field(default_factory=dict)
    #: The repository's default branch; None: "main" or "master".
    default_branch: str | None = None

    @classmethod
    def parse(cls, data: Any, source: str, from_commit: bool = False) -> RepoConfig:
        """``from_commit``: the settings come from the commit under test, which may not
        say where notifications go (see :class:`Notify`)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: ciq settings must be a table")
        for key, value in data.items():
            if key not in _KINDS:
                known = ", ".join(sorted(_KINDS))
                raise ConfigError(f"{source}: unknown key {key!r} (known: {known})")
            if key in _OPERATOR_ONLY and from_commit:
                raise ConfigError(f"{source}: {key!r} may be set only in the operator's "
                                  f"settings file ({_OPERATOR_ONLY[key]})")
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
            notify=Notify.parse(data["notify"], source) if "notify" in data else None,
            shard=_shard_mode(data["shard"]) if "shard" in data else None,
            fail_fast=data.get("fail_fast"),
            order=data.get("order"),
            network=data.get("network"),
            quarantine=Policy.parse(data["quarantine"], source) if "quarantine" in data
            else None,
            supersede=data.get("supersede"),
            supersede_default=data.get("supersede_default"),
            supersede_branches=dict(data.get("supersede_branches", {})),
            default_branch=data.get("default_branch"),
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
        if self.notify is not None:
            out["notify"] = self.notify.to_dict()
        if self.shard is not None:
            out["shard"] = self.shard
        if self.fail_fast is not None:
            out["fail_fast"] = self.fail_fast
        if self.order is not None:
            out["order"] = self.order
        if self.network is not None:
            out["network"] = self.network
        if self.quarantine is not None:
            out["quarantine"] = self.quarantine.to_dict()
        for key in ("supersede", "supersede_default", "default_branch"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.supersede_branches:
            out["supersede_branches"] = dict(self.supersede_branches)
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
            notify=base.notify or self.notify,
            shard=self.shard or base.shard,
            fail_fast=self.fail_fast if self.fail_fast is not None else base.fail_fast,
            order=self.order or base.order,
            network=base.network,
            quarantine=base.quarantine,
            supersede=base.supersede,
            supersede_default=base.supersede_default,
            supersede_branches=base.supersede_branches,
            default_branch=base.default_branch,
        )


def _shard_mode(value: bool | str) -> str:
    if isinstance(value, bool):
        return "always" if value else "never"
    return value


def policy_of(stored: tuple[str, dict[str, Any]] | None) -> Policy:
    """The automatic quarantine of a repository from its stored operator settings
    (:meth:`~ciq.store.store.Store.repo_config`); the default when none is set."""
    if stored is None:
        return Policy()
    config = RepoConfig.parse(stored[1], stored[0])
    return config.quarantine or Policy()


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
        return RepoConfig.parse(_read_toml(own), "ciq.toml", from_commit=True)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {})
        if isinstance(tool, dict) and "ciq" in tool:
            return RepoConfig.parse(tool["ciq"], "pyproject.toml [tool.ciq]", from_commit=True)
    return None
