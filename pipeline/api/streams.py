"""Answers as HTTP streams: the seed's server-sent events and OpenAI's chat completion
chunks. Text comes from a worker thread; when the client goes away the answer stream is
closed, which closes the upstream HTTP stream, so vLLM stops generating."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from pipeline.api.errors import Problem, RequestError, openai_body
from pipeline.api.service import ApiService
from pipeline.core.schema import Answer
from pipeline.serving import metrics
from pipeline.serving.interface import AnswerStream

logger = logging.getLogger(__name__)


def openai_finish_reason(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def record(answer: Answer) -> dict[str, Any]:
    """The answer's record as JSON-ready data (the ``rag`` field)."""
    return answer.model_dump(mode="json")


async def text_chunks(stream: AnswerStream, service: ApiService, request: Request) -> AsyncIterator[str]:
    """The answer's text chunks; the generation slot is released however it ends.

    One thread of its own iterates the whole answer and hands each chunk to the event
    loop: a thread-pool round trip per token cost more than relaying the token (bench
    api_relay), and under many streams it delayed every new question. Chunks that piled
    up meanwhile go out as one. When the client has gone, the thread stops at the next
    chunk and closes the answer's stream itself (a generator is closed by the thread
    that runs it), which closes the upstream HTTP stream, so vLLM stops generating. The
    first text's wait for the event loop is the answer's ``relay`` timing."""
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue = asyncio.Queue()
    left = threading.Event()
    end = object()
    first_chunk_at: list[float] = []

    def produce() -> None:
        try:
            for chunk in stream:
                if not first_chunk_at:
                    first_chunk_at.append(time.perf_counter())
                loop.call_soon_threadsafe(handed.put_nowait, chunk)
                if left.is_set():
                    break
        except BaseException as exc:  # re-raised in the event loop
            loop.call_soon_threadsafe(handed.put_nowait, exc)
        finally:
            stream.close()
            loop.call_soon_threadsafe(handed.put_nowait, end)

    threading.Thread(target=produce, name="answer-stream", daemon=True).start()
    try:
        finished = False
        while not finished:
            parts = [await handed.get()]
            while not handed.empty():
                parts.append(handed.get_nowait())
            for part in parts:
                if isinstance(part, BaseException):
                    raise part
            finished = parts[-1] is end
            text = "".join(p for p in parts if p is not end)
            if not text:
                continue
            if await request.is_disconnected():
                logger.info("client disconnected: stopping the generation")
                break
            if "relay" not in stream.answer.timings and first_chunk_at:
                # The first text from the engine's stream to this response: the hand-over
                # from the relay thread to the event loop, which all streams share.
                stream.answer.timings["relay"] = (time.perf_counter() - first_chunk_at[0]) * 1000.0
                metrics.observe_step("relay", stream.answer.timings["relay"])
            yield text
    finally:
        left.set()
        service.release_slot()


#: What ends a line in a server-sent event stream: CRLF, a lone CR or a lone LF.
SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse(data: str, event: str | None = None) -> str:
    """One server-sent event. Data with line breaks of any kind (model output may hold a
    bare CR, which a parser reads as the end of a line) becomes several ``data:`` lines
    of the same event, which the client joins back with LF: no text can start a field
    or an event of its own."""
    lines = [f"event: {event}"] if event else []
    lines += [f"data: {line}" for line in SSE_LINE_BREAK.split(data)]
    return "\n".join(lines) + "\n\n"


def interrupted_error(answer: Answer, **kwargs: Any) -> RequestError:
    """An answer the LLM cut short, as an error (502): a client must not take the part
    it got for a whole answer."""
    notice = answer.error
    problem = Problem(
        None,
        notice.en if notice else "the answer was cut short",
        notice.ja if notice else "回答の生成が途中で止まりました。",
    )
    return RequestError(502, problem, code=notice.code if notice else "llm_interrupted", **kwargs)


async def question_events(stream: AnswerStream, service: ApiService, request: Request) -> AsyncIterator[str]:
    """``/question``: the sources, the answer text as data events, an error event if
    generation failed, and a closing ``done`` event with the whole record."""
    answer = stream.answer
    yield sse(json.dumps([s.model_dump(mode="json") for s in answer.sources], ensure_ascii=False), "sources")
    async for chunk in text_chunks(stream, service, request):
        yield sse(chunk)
    if answer.error is not None:
        yield sse(answer.error.model_dump_json(), "error")
    yield sse(answer.model_dump_json(), "done")


async def chat_chunks(stream: AnswerStream, service: ApiService, request: Request, model: str) -> AsyncIterator[str]:
    """OpenAI ``chat.completion.chunk`` events. The first chunk carries ``rag`` with the
    sources (known before any text), the last one the completed record."""
    ident, created = completion_id(), int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, rag=record(stream.answer))
    async for text in text_chunks(stream, service, request):
        yield chunk({"content": text})
    if not stream.answer.complete:
        # Cut short: the record so far, then an error event, as vLLM sends one (the SDK
        # raises APIError with its message) and no finish_reason nor [DONE].
        yield chunk({}, None, rag=record(stream.answer))
        error = interrupted_error(stream.answer)
        yield f"data: {json.dumps(openai_body(error.status, error.problems, error.code), ensure_ascii=False)}\n\n"
        return
    yield chunk({}, openai_finish_reason(stream.answer), rag=record(stream.answer))
    yield "data: [DONE]\n\n"
