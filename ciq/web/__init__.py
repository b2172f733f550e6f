"""The reports web UI and JSON API (`ciq web`): read-only over ciq's Redis.

:mod:`.app` builds the FastAPI app, :mod:`.server` serves it with uvicorn,
:mod:`.queries` reads Redis (through the store), :mod:`.api` and :mod:`.pages` are the
routes and :mod:`.params` what they share, :mod:`.history` the per-test history,
:mod:`.badge` the SVG badges and :mod:`.filters` the templates' filters.
"""
