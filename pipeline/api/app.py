"""The FastAPI application: resources loaded once at start-up, the routes, request size
limits, CORS closed unless origins are configured, errors as JSON."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.admin_routes import admin_router
from pipeline.api.errors import EXCEPTION_HANDLERS, Problem, RequestError, error_response
from pipeline.api.routes import open_router, router
from pipeline.api.service import ApiService
from pipeline.settings.model import Settings
from pipeline.settings.sources import load_settings

logger = logging.getLogger(__name__)


class BodyLimit:
    """413 for request bodies over ``limit`` bytes, however they are sent.

    The body is read here, up to the limit, before the app sees it: a declared length
    over the limit is refused at once; a chunked body is counted as it arrives and
    refused at the first byte over. (Raising from inside the app's own ``receive`` is
    not enough: FastAPI turns any failure while reading a body into a 400.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = Problem(
            None,
            f"request body over {self.limit:,} bytes",
            f"リクエストが大きすぎます（上限 {self.limit:,} バイト）。質問や会話を短くしてください。",
        )
        response = error_response(scope["path"], RequestError(413, problem, code="request_too_large"))
        await response(scope, receive, send)


#: Worker threads beyond the answers' own: retrieval-only searches, status, administration.
SPARE_THREADS = 8


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over these settings (default: the settings file and RAG_* variables)."""
    settings = settings or load_settings()
    api = ApiService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every admitted answer prepares in a worker thread (retrieval waits there for E5 and
        # the scan, which batch whoever waits together): AnyIO's default 40 threads would
        # queue the answers past 40 before their retrieval could start.
        threads = anyio.to_thread.current_default_thread_limiter()
        threads.total_tokens = max(threads.total_tokens, settings.api.max_concurrent_generations + SPARE_THREADS)
        if not settings.api.token.get_secret_value():
            logger.warning("api.token (RAG_API_TOKEN) is not set: only direct requests from this machine are answered")
        await run_in_threadpool(api.load)
        yield
        api.close()

    app = FastAPI(
        title="jawiki-rag API",
        version="1.0",
        description="Japanese Wikipedia question answering with cited passages. "
        "Seed-compatible `/question`, OpenAI-compatible `/v1/chat/completions`, retrieval-only `/v1/search`.",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.api = api
    app.include_router(open_router)
    app.include_router(router)
    app.include_router(admin_router)

    origins = [o.strip() for o in settings.api.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, limit=settings.api.max_body_bytes)
    return app
