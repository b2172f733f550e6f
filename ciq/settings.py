"""Settings of a ciq process, read once from the environment.

Every process (worker, observer, CLI) builds one frozen :class:`Settings` with
:meth:`Settings.from_env` and passes it down; tests build ``Settings(...)`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError
from .urls import SentinelURL, SmtpURL, email_problem, webhook_problem

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: The Celery configuration module workers load unless CIQ_CELERY_CONFIG names another.
DEFAULT_CELERY_CONFIG = "worker_config.celeryconfig"
#: When a branch's report is worth a notification (CIQ_NOTIFY_ON, a repository's
#: ``notify.on``): when it goes from passed to not (``broken``) and back (``fixed``);
#: also every non-passed report (``failure``); every report (``always``); never.
NOTIFY_ON = ("change", "failure", "always", "never")
#: Where a commit's first failing test is told as it happens, before the report
#: (CIQ_NOTIFY_FIRST_FAILURE, a repository's ``notify.first_failure``): nowhere, or to
#: the webhooks (never by mail: the report's own event mails the verdict).
FIRST_FAILURE = ("off", "webhook")


def _default_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ciq"


@dataclass(frozen=True)
class Settings:
    #: Celery broker (Redis).
    broker_url: str = DEFAULT_BROKER_URL
    #: Celery results backend; reports, leases and observer positions live there too.
    result_backend: str = DEFAULT_BROKER_URL
    #: Mirrors, worktrees and run records of this host's workers and observer.
    data_dir: Path = field(default_factory=lambda: _default_data_dir(os.environ))
    #: Broker queue the runs go to.
    queue: str = "ciq"
    #: Seconds a whole test run may take before it is killed and reported as `timeout`.
    time_limit: float = 900.0
    #: Seconds a run lease lives without a heartbeat. A dead worker's commit is rerun
    #: about this long after it died (plus one reconciler pass).
    lease_ttl: float = 5.0
    #: Seconds between two reconciler passes in each worker.
    reconcile_interval: float = 1.0
    #: Seconds between two looks (by one worker of the cluster) for leases whose worker
    #: process died: its commit is rerun that long after the death, not lease_ttl later.
    liveness_interval: float = 0.1
    #: Runs of one commit before ciq gives up with an `error` report (poison commits).
    max_attempts: int = 3
    #: Bytes of test output kept in a report: half from the head, half from the tail.
    output_limit: int = 64 * 1024
    #: MiB that must stay free on the disk of the worktrees: a run that eats into them is
    #: stopped with an `error` report, so that a test filling the disk cannot starve the
    #: worker, its outbox or a Redis on the same disk.
    min_free_mb: int = 64
    #: User the code under test runs as (a worker running as root only): it then cannot
    #: reach the mirrors, the outbox or other runs. None: the worker's own user.
    run_as: str | None = None
    #: MiB of memory the processes of one run's box may use together (a memory cgroup
    #: where the host offers one, else each process's address space); 0: no limit.
    memory_limit_mb: int = 4096
    #: Processes (and threads) one run's box may have at once; 0: no limit.
    process_limit: int = 512
    #: MiB of the box's private /tmp and /dev/shm (each; in memory, so part of the limit).
    tmp_mb: int = 512
    #: A folder of the host that every run's box may write (same path inside): for
    #: artefacts or a cache the operator chooses to share between runs. Anything in it
    #: is readable by every later run: never a folder with secrets. None: no such folder.
    box_shared: Path | None = None
    #: More package index hosts (``host[:port]``, comma-separated) that build steps may
    #: reach besides the ones of the worker's UV_/PIP_ index settings and PyPI.
    index_hosts: str = ""
    #: Name written in reports as `worker`; None: the Celery node name (name@host).
    worker_name: str | None = None
    #: Cached virtual environments of this host, shared by its workers; None: DATA/envs.
    env_dir: Path | None = None
    #: Cached environments kept per host; the least recently used go first.
    env_cache_size: int = 10
    #: The Celery configuration module (import path) workers load, e.g.
    #: ``worker_config.production``; values derived from the settings above win over it.
    celery_config: str = DEFAULT_CELERY_CONFIG
    #: Sharding one commit's suite over the workers (ciq.sharding): "auto" (when two
    #: worker processes or more take the queue and the suite took shard_min_seconds or
    #: more last time), "always" or "never". A repository's `shard` setting wins.
    shard: str = "auto"
    #: Seconds of tests (the last report's) from which "auto" shards a suite.
    shard_min_seconds: float = 60.0
    #: Seconds of tests below which a chunk is not worth its own checkout.
    shard_min_chunk: float = 2.0
    #: Notifications (ciq.notify): a URL that gets a JSON POST per notification; None: none.
    #: Kept out of reprs: chat webhooks carry their token in the URL.
    webhook_url: str | None = field(default=None, repr=False)
    #: Key of the webhook's X-Ciq-Signature (HMAC-SHA256 of the body); None: unsigned.
    webhook_secret: str | None = field(default=None, repr=False)
    #: Addresses (comma-separated) that get a mail per notification; needs smtp_url.
    notify_email: str | None = None
    #: The SMTP server of notification mail (see :class:`SmtpURL`).
    smtp_url: str | None = field(default=None, repr=False)
    #: Sender of notification mail; None: ciq@<this host's name>.
    mail_from: str | None = None
    #: Which reports of a branch notify (one of NOTIFY_ON); a repository may say otherwise.
    notify_on: str = "change"
    #: Whether the first failure of a commit goes to the webhooks as it happens (one of
    #: FIRST_FAILURE); a repository may say otherwise.
    notify_first_failure: str = "off"
    #: Address of `ciq web` as people reach it, e.g. https://ci.example.org: notifications
    #: then link to the commit's page.
    web_url: str | None = None
    #: Seconds one webhook call or SMTP conversation may take before it is retried later.
    notify_timeout: float = 10.0
    #: The secret that lets a caller of `ciq web` change things (quarantine tests): an
    #: ``Authorization: Bearer`` header of the API, a field of the pages' forms. None:
    #: the web UI changes nothing.
    operator_token: str | None = field(default=None, repr=False)
    #: A token that scrapers of `ciq web`'s /metrics must send (Authorization: Bearer);
    #: None: /metrics is open, like the pages. It grants nothing else.
    metrics_token: str | None = field(default=None, repr=False)

    #: Environment variable for each field, in one place.
    ENV = {
        "broker_url": "CIQ_BROKER_URL",
        "result_backend": "CIQ_RESULT_BACKEND",
        "data_dir": "CIQ_DATA_DIR",
        "queue": "CIQ_QUEUE",
        "time_limit": "CIQ_TIME_LIMIT",
        "lease_ttl": "CIQ_LEASE_TTL",
        "reconcile_interval": "CIQ_RECONCILE_INTERVAL",
        "liveness_interval": "CIQ_LIVENESS_INTERVAL",
        "max_attempts": "CIQ_MAX_ATTEMPTS",
        "output_limit": "CIQ_OUTPUT_LIMIT",
        "min_free_mb": "CIQ_MIN_FREE_MB",
        "run_as": "CIQ_RUN_AS",
        "memory_limit_mb": "CIQ_MEMORY_LIMIT_MB",
        "process_limit": "CIQ_PROCESS_LIMIT",
        "tmp_mb": "CIQ_TMP_MB",
        "index_hosts": "CIQ_INDEX_HOSTS",
        "box_shared": "CIQ_BOX_SHARED",
        "worker_name": "CIQ_WORKER_NAME",
        "env_dir": "CIQ_ENV_DIR",
        "env_cache_size": "CIQ_ENV_CACHE_SIZE",
        "celery_config": "CIQ_CELERY_CONFIG",
        "shard": "CIQ_SHARD",
        "shard_min_seconds": "CIQ_SHARD_MIN_SECONDS",
        "shard_min_chunk": "CIQ_SHARD_MIN_CHUNK",
        "webhook_url": "CIQ_WEBHOOK_URL",
        "webhook_secret": "CIQ_WEBHOOK_SECRET",
        "notify_email": "CIQ_NOTIFY_EMAIL",
        "smtp_url": "CIQ_SMTP_URL",
        "mail_from": "CIQ_MAIL_FROM",
        "notify_on": "CIQ_NOTIFY_ON",
        "notify_first_failure": "CIQ_NOTIFY_FIRST_FAILURE",
        "web_url": "CIQ_WEB_URL",
        "notify_timeout": "CIQ_NOTIFY_TIMEOUT",
        "operator_token": "CIQ_OPERATOR_TOKEN",
        "metrics_token": "CIQ_METRICS_TOKEN",
    }

    def __post_init__(self) -> None:
        for name in ("time_limit", "lease_ttl", "reconcile_interval", "liveness_interval",
                     "notify_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{self.ENV[name]} must be a positive number of seconds")
        if self.max_attempts < 1:
            raise ConfigError(f"{self.ENV['max_attempts']} must be at least 1")
        if self.env_cache_size < 1:
            raise ConfigError(f"{self.ENV['env_cache_size']} must be at least 1")
        if self.min_free_mb < 0:
            raise ConfigError(f"{self.ENV['min_free_mb']} must be a number of MiB, 0 or more")
        if self.run_as:
            import pwd

            try:
                pwd.getpwnam(self.run_as)
            except KeyError:
                raise ConfigError(f"{self.ENV['run_as']}={self.run_as!r}: no such user") from None
        for name in ("memory_limit_mb", "process_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.ENV[name]} must be 0 (no limit) or more")
        if self.process_limit and self.process_limit < 16:
            raise ConfigError(f"{self.ENV['process_limit']} must be at least 16: pytest, "
                              "its interpreter and the box need a few")
        if self.box_shared is not None:
            shared, data = self.box_shared.resolve(), self.data_dir.resolve()
            if not self.box_shared.is_absolute() or shared == data or data in shared.parents \
                    or shared in data.parents:
                raise ConfigError(f"{self.ENV['box_shared']} must be an absolute folder "
                                  "apart from CIQ_DATA_DIR (the box would see the mirrors "
                                  "and the outbox)")
        if self.tmp_mb < 1:
            raise ConfigError(f"{self.ENV['tmp_mb']} must be at least 1 (MiB)")
        if self.output_limit < 1024:
            raise ConfigError(f"{self.ENV['output_limit']} must be at least 1024 bytes")
        for name in ("broker_url", "result_backend"):
            url = getattr(self, name)
            if not url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
                raise ConfigError(
                    f"{self.ENV[name]}={url!r} is not a Redis URL; "
                    "use redis://host:port/db (rediss:// for TLS, or "
                    "sentinel://host:port/db?master_name=NAME)"
                )
            if url.startswith("sentinel://"):
                try:
                    SentinelURL.parse(url)
                except ConfigError as exc:
                    raise ConfigError(f"{self.ENV[name]}: {exc}") from None
        if not self.queue or not self.queue.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{self.ENV['queue']} must be a plain name like 'ciq'")
        if self.shard not in ("auto", "always", "never"):
            raise ConfigError(f"{self.ENV['shard']} must be auto, always or never")
        if self.shard_min_seconds < 0 or self.shard_min_chunk <= 0:
            raise ConfigError(f"{self.ENV['shard_min_seconds']} must be 0 or more and "
                              f"{self.ENV['shard_min_chunk']} more than 0 (seconds)")
        if not all(part.isidentifier() for part in self.celery_config.split(".")):
            raise ConfigError(f"{self.ENV['celery_config']}={self.celery_config!r} is not a "
                              "module path like worker_config.production")
        self._check_notifications()
        token = self.operator_token
        if token is not None and (len(token) < 16 or not token.isascii() or not all(
                c.isalnum() or c in "-._~+/=" for c in token)):
            raise ConfigError(f"{self.ENV['operator_token']} must be 16 characters or more "
                              "of letters, digits and -._~+/= (e.g. `openssl rand -hex 32`)")
        metrics = self.metrics_token
        if metrics is not None and not (metrics.isascii() and metrics.isprintable()
                                        and " " not in metrics):
            raise ConfigError(f"{self.ENV['metrics_token']} must be printable ASCII without "
                              "spaces (e.g. `openssl rand -hex 32`)")

    def _check_notifications(self) -> None:
        env = self.ENV
        if self.notify_on not in NOTIFY_ON:
            raise ConfigError(f"{env['notify_on']}={self.notify_on!r} must be one of "
                              f"{', '.join(NOTIFY_ON)}")
        if self.notify_first_failure not in FIRST_FAILURE:
            raise ConfigError(f"{env['notify_first_failure']}={self.notify_first_failure!r} "
                              f"must be one of {', '.join(FIRST_FAILURE)}")
        for name in ("webhook_url", "web_url"):
            url = getattr(self, name)
            problem = url and webhook_problem(url)
            if problem:  # the value itself stays out: a webhook URL may hold a token
                raise ConfigError(f"{env[name]} {problem}")
        if self.smtp_url:
            try:
                SmtpURL.parse(self.smtp_url)
            except ConfigError as exc:
                raise ConfigError(f"{env['smtp_url']} {exc}") from None
        for address in self.notify_emails:
            problem = email_problem(address)
            if problem:
                raise ConfigError(f"{env['notify_email']}: {address!r} {problem}")
        if self.notify_emails and not self.smtp_url:
            raise ConfigError(f"{env['notify_email']} needs {env['smtp_url']}: the SMTP "
                              "server to send the mail through, e.g. smtp://127.0.0.1:25")
        if self.mail_from and email_problem(self.mail_from):
            raise ConfigError(f"{env['mail_from']}={self.mail_from!r} "
                              f"{email_problem(self.mail_from)}")

    @property
    def notify_emails(self) -> tuple[str, ...]:
        """The addresses of CIQ_NOTIFY_EMAIL."""
        return tuple(a.strip() for a in (self.notify_email or "").split(",") if a.strip())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``CIQ_*`` variables; the error names the bad variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            kind = types[name]
            try:
                if kind == "float":
                    values[name] = float(raw)
                elif kind == "int":
                    values[name] = int(raw)
                elif kind in ("Path", "Path | None"):
                    values[name] = Path(raw).expanduser()
                else:
                    values[name] = raw
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a valid {kind}") from None
        if "result_backend" not in values and "broker_url" in values:
            values["result_backend"] = values["broker_url"]
        if "data_dir" not in values:
            values["data_dir"] = _default_data_dir(environ)
        settings = cls(**values)  # type: ignore[arg-type]
        # Celery reads these over any configuration: a worker would then take runs from
        # one Redis while ciq keeps leases and reports in another.
        for var, ours in (("CELERY_BROKER_URL", settings.broker_url),
                          ("CELERY_RESULT_BACKEND", settings.result_backend)):
            if environ.get(var) and environ[var] != ours:
                mine = var.replace("CELERY_", "CIQ_")
                raise ConfigError(f"{var} is set and differs from {mine}; ciq takes its "
                                  f"Redis from {mine}: unset {var}")
        return settings

    @property
    def broker_is_backend(self) -> bool:
        """Whether the broker is the Redis of reports and leases: a message can then go
        on the queue in the same atomic step as the state change that calls for it."""
        return self.broker_url == self.result_backend

    @property
    def env_root(self) -> Path:
        return self.env_dir or self.data_dir / "envs"

    # Celery's limits sit above ciq's own so that ciq, which kills the whole process
    # group and writes a `timeout` report, always acts first; Celery's are a backstop.
    @property
    def soft_time_limit(self) -> float:
        return self.time_limit + 60

    @property
    def hard_time_limit(self) -> float:
        return self.time_limit + 90

    @property
    def visibility_timeout(self) -> float:
        """Seconds before the Redis transport redelivers an unacknowledged run.

        It must stay above the hard time limit, or a long run that is still alive would
        be handed to a second worker (the lease makes that copy stand down anyway).
        """
        return self.hard_time_limit + 600
