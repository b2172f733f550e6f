"""The URLs and addresses ciq is given: Redis through Sentinel, SMTP servers, webhooks,
mail recipients and git repositories; and how to print a URL without its passwords.

Standard library only: the push path (`ciq enqueue`) uses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError

#: Port of a Sentinel given without one (Redis's own default for sentinels).
SENTINEL_PORT = 26379
# scp-like git URLs: user@host:path.
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


def is_url(repo: str) -> bool:
    """Whether a repository is named by a URL (``https://...``, ``user@host:path``)
    rather than by a local path."""
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def repo_name(repo: str) -> str:
    """A repository's short name: the last part of its path or URL, without ``.git``."""
    path = urlsplit(repo).path if "://" in repo else repo
    last = path.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return last.removesuffix(".git") or repo


def redacted(url: str) -> str:
    """A URL fit to print: every password in it (a Sentinel URL lists several hosts,
    ``;``-separated) replaced by ``***``."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return url.replace(f"{netloc[0]}@", f"{user}:***@", 1)


@dataclass(frozen=True)
class SentinelURL:
    """A Redis reached through Sentinel, as one URL that every ciq process understands:

        sentinel://[[USER]:PASSWORD@]HOST[:PORT][/DB][;sentinel://HOST2[:PORT]...]?master_name=NAME

    Celery's own form (sentinels separated by ``;``; database, user and password taken
    from the first) plus the master's name, which Celery takes as a transport option
    instead: ciq strips it from the URL it gives Celery and sets ``master_name`` in
    ``broker_transport_options`` / ``result_backend_transport_options``. Keeping it in the
    URL lets everything that passes the URL around (workers, git hooks) carry it along.
    """

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: The URL without the master's name: what Celery and kombu are given.
    celery_url: str = ""

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        sentinels: list[tuple[str, int]] = []
        names: set[str] = set()
        chunks = []
        for chunk in url.split(";"):
            parts = urlsplit(chunk.strip())
            if parts.scheme != "sentinel" or not parts.hostname:
                raise ConfigError(f"{chunk!r} is not of the form sentinel://HOST[:PORT][/DB]")
            query = parse_qs(parts.query, keep_blank_values=True)
            unknown = sorted(set(query) - {"master_name"})
            if unknown:
                raise ConfigError(f"a Sentinel URL takes only ?master_name=NAME, not {unknown[0]}")
            names.update(query.get("master_name", []))
            try:
                sentinels.append((parts.hostname, parts.port or SENTINEL_PORT))
            except ValueError:
                raise ConfigError(f"{chunk!r} has a bad port") from None
            chunks.append(parts._replace(query="").geturl())
        if len(names) != 1 or not next(iter(names)):
            raise ConfigError("a Sentinel URL needs the master's name, once: add "
                              "?master_name=NAME (the name in `sentinel monitor NAME ...`)")
        first = urlsplit(url.split(";")[0])
        path = first.path.strip("/")
        if path and not path.isdigit():
            raise ConfigError(f"{path!r} is not a database number")
        return cls(
            sentinels=tuple(sentinels), master_name=names.pop(), db=int(path or 0),
            username=unquote(first.username) if first.username else None,
            password=unquote(first.password) if first.password is not None else None,
            celery_url=";".join(chunks),
        )  # fmt: skip


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook (None if it can): an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http:// or https:// URL with a host"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "has a bad port"
    return None


def email_problem(address: str) -> str | None:
    """Why ``address`` cannot be a recipient (None if it can): one plain user@domain."""
    local, at, domain = address.partition("@")
    if not (at and local and domain.strip(".")) or any(
            c in address for c in " \t\r\n,;<>\"") or address.count("@") != 1:
        return "is not an address like dev@example.org"
    return None


@dataclass(frozen=True)
class SmtpURL:
    """Where notification mail goes, as one URL:

        smtp://[USER:PASSWORD@]HOST[:PORT]            plain (port 25), e.g. a local relay
        smtp+starttls://USER:PASSWORD@HOST[:PORT]     STARTTLS (port 587)
        smtps://USER:PASSWORD@HOST[:PORT]             TLS from the start (port 465)

    The user and password are percent-decoded (``%40`` for an ``@`` in a user name).
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}

    @classmethod
    def parse(cls, url: str) -> SmtpURL:
        parts = urlsplit(url)
        if parts.scheme not in cls.PORTS or not parts.hostname:
            raise ConfigError("is not of the form smtp://HOST[:PORT], "
                              "smtp+starttls://USER:PASSWORD@HOST[:PORT] or smtps://...")
        try:
            port = parts.port or cls.PORTS[parts.scheme]
        except ValueError:
            raise ConfigError("has a bad port") from None
        return cls(
            scheme=parts.scheme, host=parts.hostname, port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )  # fmt: skip
