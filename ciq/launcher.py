"""Kept for one release: ``ciq`` scripts installed from an older checkout call this."""
from .cli import main as main  # noqa: F401
