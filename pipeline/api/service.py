"""The serving logic behind the API routes: one answer engine per process, settings per
request, a bounded number of concurrent generations, and streams that stop the upstream
generation when the client goes away. No per-user state: any replica serves any request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from pipeline.api.protocol import RagInfo, ReadyResponse, SourceOut
from pipeline.config import Settings, with_values
from pipeline.engine import Answer, AnswerEngine, Source, Turn
from pipeline.errors import EmptyQueryError, SettingsError
from pipeline.llm import open_backend, resolve_backend
from pipeline.retrieval import RetrievalService
from pipeline.supervisor import EngineSupervisor
from pipeline.tokens import load_token_counter

logger = logging.getLogger(__name__)

#: Request fields that set generation settings.
SAMPLING_FIELDS = {
    "max_new_tokens": "generation.max_new_tokens",
    "max_tokens": "generation.max_new_tokens",
    "max_completion_tokens": "generation.max_new_tokens",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "do_sample": "generation.do_sample",
    "repetition_penalty": "generation.repetition_penalty",
    "rag_mode": "retrieval.mode",
    "rag_top_k": "retrieval.top_k",
}
SEARCH_FIELDS = {"top_k": "retrieval.top_k"}


class RequestError(Exception):
    """A request the API refuses: HTTP status and FastAPI-style error details."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def field_error(field: str, en: str, ja: str) -> RequestError:
    return RequestError(422, [{"loc": ["body", field], "msg": en, "type": "value_error", "ja": ja}])


class RagService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = "loading"
        self.error = ""
        self.engine: AnswerEngine | None = None
        self.supervisor: EngineSupervisor | None = None
        self._slots = threading.BoundedSemaphore(settings.api.max_concurrent_generations)

    def load(self) -> None:
        """Load retrieval and connect the LLM (called once, at start-up)."""
        try:
            retrieval = RetrievalService.load(self.settings)
            if resolve_backend(self.settings) == "local":
                self.supervisor = EngineSupervisor(self.settings.resolved_cache_dir / "logs")
            backend = open_backend(self.settings, self.supervisor)
            self.engine = AnswerEngine(retrieval, backend, load_token_counter(self.settings), self.settings)
            self.state = "ready"
        except Exception as exc:  # the process stays up and /readyz says why
            logger.exception("loading failed")
            self.state, self.error = "failed", getattr(exc, "en", str(exc))

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()

    # -- requests ----------------------------------------------------------------------

    def request_settings(self, values: dict[str, Any], fields: dict[str, str] = SAMPLING_FIELDS) -> Settings:
        """The settings for one request (``fields`` maps request fields to settings);
        out-of-range values are a 422 naming the request field."""
        updates = {fields[k]: v for k, v in values.items() if k in fields and v is not None}
        temperature = updates.get("generation.temperature")
        if isinstance(temperature, int | float) and temperature > 0 and values.get("do_sample") is None:
            updates["generation.do_sample"] = True  # an explicit temperature asks for sampling
        try:
            return with_values(self.settings, updates) if updates else self.settings
        except SettingsError as exc:
            reverse = {path: name for name, path in fields.items() if name in values}
            details = [
                {"loc": ["body", reverse.get(p.field, p.field)], "msg": p.en, "type": "value_error", "ja": p.ja}
                for p in exc.problems
            ]
            raise RequestError(422, details) from None

    def check_question(self, question: str, field: str = "question") -> None:
        if not question.strip():
            error = EmptyQueryError()
            raise field_error(field, error.en, error.ja)
        limit = self.settings.retrieval.max_query_chars
        if len(question) > limit:
            raise field_error(
                field,
                f"the question has {len(question):,} characters; the limit is {limit:,}",
                f"質問が長すぎます（{len(question):,} 文字）。{limit:,} 文字以内にしてください。",
            )

    def acquire_slot(self) -> None:
        """Take a generation slot or refuse at once (no unbounded queue)."""
        if not self._slots.acquire(blocking=False):
            raise RequestError(
                429,
                f"more than {self.settings.api.max_concurrent_generations} generations are running; retry later",
                {"Retry-After": str(self.settings.api.retry_after_s)},
            )

    def release_slot(self) -> None:
        self._slots.release()

    async def answer(self, question: str, history: list[Turn], settings: Settings) -> Answer:
        """Retrieve and start generating, holding a generation slot (429 when none is
        free). The slot is released here on failure, else when the answer's stream ends
        (:func:`stream_chunks`)."""
        self.acquire_slot()
        try:
            return await run_in_threadpool(self.engine.answer, question, history, settings)
        except BaseException:
            self.release_slot()
            raise

    def ready(self) -> tuple[int, ReadyResponse]:
        if self.engine is None:
            status = "loading" if self.state == "loading" else "failed"
            return 503, ReadyResponse(status=status, components={"error": self.error})
        retrieval = self.engine.retrieval
        ok, llm_en, _ = self.engine.backend.health(self.settings)
        components = {
            "corpus": {"loaded": True, "passages": len(retrieval.passages)},
            "retrievers": {"modes": retrieval.modes, "auto": retrieval.auto_mode},
            "embedding": {"loaded": retrieval.embedding is not None,
                          "model": retrieval.embedding.name if retrieval.embedding else None},
            "llm": {"backend": self.engine.backend.kind, "reachable": ok, "detail": llm_en},
        }  # fmt: skip
        status = "ready" if ok or self.engine.backend.kind == "none" else "degraded"
        return 200, ReadyResponse(status=status, components=components)


def source_out(source: Source) -> SourceOut:
    return SourceOut(**source.as_dict())


def rag_info(answer: Answer) -> RagInfo:
    return RagInfo.model_validate(answer.as_dict())


def openai_finish_reason(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


async def stream_chunks(answer: Answer, service: RagService, request: Request) -> AsyncIterator[str]:
    """The answer's text chunks from a worker thread. When the client has gone, the
    answer stream is closed, which closes the upstream HTTP stream, so vLLM stops
    generating; the generation slot is released either way."""
    chunks: Iterator[str] = answer.stream()
    done = object()
    try:
        while (chunk := await run_in_threadpool(next, chunks, done)) is not done:
            if await request.is_disconnected():
                logger.info("client disconnected: stopping the generation")
                break
            yield chunk
    finally:
        service.release_slot()
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(chunks.close)


def sse(data: str, event: str | None = None) -> str:
    """One server-sent event; multi-line data becomes several data lines."""
    lines = [f"event: {event}"] if event else []
    lines += [f"data: {line}" for line in data.split("\n")]
    return "\n".join(lines) + "\n\n"


async def question_events(answer: Answer, service: RagService, request: Request) -> AsyncIterator[str]:
    """``/question``: the sources, the answer text as data events, an error event if
    generation failed, and a closing ``done`` event with timings."""
    yield sse(json.dumps([s.as_dict() for s in answer.sources], ensure_ascii=False), "sources")
    async for chunk in stream_chunks(answer, service, request):
        yield sse(chunk)
    if answer.error is not None:
        yield sse(json.dumps(answer.error.as_dict(), ensure_ascii=False), "error")
    yield sse(rag_info(answer).model_dump_json(), "done")


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


async def chat_chunks(answer: Answer, service: RagService, request: Request, model: str) -> AsyncIterator[str]:
    """OpenAI ``chat.completion.chunk`` events. The first chunk carries ``rag`` with the
    sources (known before any text), the last one the whole ``rag`` with timings."""
    ident, created = completion_id(), int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, rag=json.loads(rag_info(answer).model_dump_json()))
    async for text in stream_chunks(answer, service, request):
        yield chunk({"content": text})
    yield chunk({}, openai_finish_reason(answer), rag=json.loads(rag_info(answer).model_dump_json()))
    yield "data: [DONE]\n\n"
