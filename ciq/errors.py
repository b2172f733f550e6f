"""Errors raised by ciq. Messages say what went wrong and what to do next."""


class CiqError(Exception):
    """Base class for every error ciq raises on purpose."""


class ConfigError(CiqError):
    """Raised when a setting (environment variable or option) has a bad value."""


class BadInput(CiqError):
    """Raised when a repository, revision or SHA given from outside is malformed."""


class RepositoryError(CiqError):
    """Raised when a repository cannot be read, fetched or checked out."""


class NotFound(CiqError):
    """Raised when no report or commit matches what was asked for."""


class StoreUnavailable(CiqError):
    """Raised when the Redis holding reports and leases cannot be reached."""
