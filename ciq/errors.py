"""Every error ciq raises on purpose. Messages say what went wrong and what to do next.

One hierarchy, so that a face (the CLI, the web UI) maps an error to its answer by type:
anything that is a :class:`CiqError` is one line to show as it is.
"""

from __future__ import annotations


class CiqError(Exception):
    """Base class for every error ciq raises on purpose."""


class ConfigError(CiqError):
    """Raised when a setting (environment variable, option or settings file) has a bad
    value; the message names the setting and, for a file, the file."""


class BadInput(CiqError):
    """Raised when a repository, revision or SHA given from outside is malformed."""


class RepositoryError(CiqError):
    """Raised when a repository cannot be read, fetched or checked out."""


class NotFound(CiqError):
    """Raised when no report or commit matches what was asked for."""


class StoreUnavailable(CiqError):
    """Raised when the Redis holding reports and leases cannot be reached."""


class RedisRefused(CiqError):
    """Raised by ciq's own small Redis client when Redis answers a command with an error
    (a wrong password, a read-only replica...); the text is Redis's."""


class BuildError(CiqError):
    """Raised when a step of a run environment's build fails; the message names the
    step, ``output`` holds what it printed."""

    def __init__(self, message: str, output: str = "", timed_out: bool = False) -> None:
        super().__init__(message)
        self.output = output
        self.timed_out = timed_out


class BoxUnavailable(CiqError):
    """Raised when this host cannot make the box untrusted code must run in (bubblewrap
    missing): nothing of the commit runs without it."""


class JUnitError(CiqError):
    """Raised when a JUnit XML file is missing, too large or not JUnit XML."""


class HookError(CiqError):
    """Raised when a git hook cannot be installed or removed: another program's hook is
    in the way, or the hooks folder cannot be written."""


class DeliveryError(CiqError):
    """Raised when a notification target did not take an event; it is tried again later."""


class UpError(CiqError):
    """Raised when `ciq up` cannot start a part of the system."""


class PortInUse(CiqError):
    """Raised when the web UI's port is taken by another program."""
