"""The stateless RAG API (FastAPI): `python -m pipeline.api` or
`gunicorn -w 1 --timeout 0 -k uvicorn.workers.UvicornWorker pipeline.api:app`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def __getattr__(name: str) -> FastAPI:
    """``pipeline.api:app`` for ASGI servers, built on first access (so that importing
    the package does not read settings or load models)."""
    if name == "app":
        from pipeline.api.app import create_app

        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)
