"""pagedserve.server: the OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn).

`build_app` (server.app) makes the app; `pagedserve serve` (server.cli) runs it.
"""
