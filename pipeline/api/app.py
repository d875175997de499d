"""The FastAPI application: resources loaded once at start-up, the routes, request size
limits, CORS closed unless origins are configured, errors as JSON."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.routes import open_router, router
from pipeline.api.service import ApiService, RequestError
from pipeline.core.settings import Settings
from pipeline.core.settings_files import load_settings

logger = logging.getLogger(__name__)


class BodyLimit:
    """413 for request bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise RequestError(413, f"request body over {self.limit} bytes")
            return message

        try:
            await self.app(scope, counting_receive, send)
        except RequestError as exc:
            if exc.status != 413:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        await response(scope={"type": "http"}, receive=None, send=send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over these settings (default: the settings file and RAG_* variables)."""
    settings = settings or load_settings()
    api = ApiService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(api.load)
        yield
        api.close()

    app = FastAPI(
        title="jawiki-rag API",
        version="1.0",
        description="Japanese Wikipedia question answering with cited passages. "
        "Seed-compatible `/question`, OpenAI-compatible `/v1/chat/completions`, retrieval-only `/v1/search`.",
        lifespan=lifespan,
    )
    app.state.api = api
    app.include_router(open_router)
    app.include_router(router)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    origins = [o.strip() for o in settings.api.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    app.add_middleware(BodyLimit, limit=settings.api.max_body_bytes)
    return app
