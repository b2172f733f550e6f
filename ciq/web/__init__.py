"""The reports web UI and JSON API (`ciq web`): read-only over ciq's Redis.

:mod:`.app` builds the FastAPI app, :mod:`.server` serves it with uvicorn,
:mod:`.queries` reads Redis, :mod:`.api` and :mod:`.pages` are the routes,
:mod:`.history` the per-test history and :mod:`.badge` the SVG badges.
"""
