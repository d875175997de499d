"""Answers as HTTP streams: the seed's server-sent events and OpenAI's chat completion
chunks. Text comes from a worker thread; when the client goes away the answer stream is
closed, which closes the upstream HTTP stream, so vLLM stops generating."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from pipeline.api.errors import Problem, RequestError, openai_body
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


class Relay:
    """An answer's stream, iterated on a thread of its own from the moment it is prepared.

    The thread starts in the worker thread that prepared the answer, so the engine's
    request goes out at once; started by the response's body, it waited for the event
    loop that relays every other stream: 42 and 48 ms p50 (the ``handoff`` step) at 32
    and 64 users on the H200, 2026-12-05. One thread per answer hands each chunk to the
    event loop (a thread-pool round trip per token cost more than relaying it, bench
    api_relay); the consumer, :func:`text_chunks`, takes what piled up meanwhile as one.
    Only a chunk that finds the consumer's last take done wakes the event loop: each wake
    writes to the loop's self-pipe, and under load (8 streams on the dev machine) those
    writes were the API's largest single cost, 19 % of its CPU samples (py-spy); chunks
    that come while a wake is pending join it.
    When the consumer leaves, the thread stops at the next chunk and closes the answer's
    stream itself (a generator is closed by the thread that runs it), which closes the
    upstream HTTP stream, so vLLM stops generating. ``on_end`` (the generation slot's
    release) runs when the thread ends, before the consumer sees the end, also when no
    consumer ever came."""

    def __init__(self, stream: AnswerStream, loop: asyncio.AbstractEventLoop, on_end: Callable[[], None]) -> None:
        #: The answer, completed by the relay thread: read it whole once the text has ended.
        self.answer = stream.answer
        #: The answer as prepared (sources, prompt, no text yet), for what is sent before
        #: the text: the relay thread fills ``answer`` from the start.
        self.prepared = stream.answer.model_copy(deep=True)
        self.left = threading.Event()
        #: When the first text left the engine's stream (for the ``relay`` timing).
        self.first_chunk_at: float | None = None
        self._stream = stream
        self._loop = loop
        self._on_end = on_end
        #: Chunks handed and not yet taken, and whether a wake of the consumer is pending.
        self._handed: list[object] = []
        #: What the consumer took and has not yet returned: an error after some text.
        self._taken: list[object] = []
        self._wake_pending = False
        self._handing = threading.Lock()
        self._ready = asyncio.Event()
        self._end = object()
        threading.Thread(target=self._produce, name="answer-stream", daemon=True).start()

    def _produce(self) -> None:
        try:
            for chunk in self._stream:
                if self.first_chunk_at is None:
                    self.first_chunk_at = time.perf_counter()
                self._hand(chunk)
                if self.left.is_set():
                    break
        except BaseException as exc:  # re-raised in the event loop
            self._hand(exc)
        finally:
            with contextlib.ExitStack() as ending:  # each runs even if the one before raised
                ending.callback(self._hand, self._end)
                ending.callback(self._on_end)
                self._stream.close()

    def _hand(self, item: object) -> None:
        with self._handing:
            self._handed.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the event loop is closed (the server stopped): nobody to take it
            self._loop.call_soon_threadsafe(self._ready.set)

    async def handed(self) -> tuple[str, bool]:
        """The text that came since the last call, and whether the stream ended. An error
        (the engine gone mid-answer) is raised once the text handed before it is returned."""
        if not self._taken:
            await self._ready.wait()
            with self._handing:
                self._taken, self._handed = self._handed, []
                self._wake_pending = False
                self._ready.clear()
        parts, self._taken = self._taken, []
        for index, part in enumerate(parts):
            if isinstance(part, BaseException):
                if index == 0:
                    raise part
                parts, self._taken = parts[:index], parts[index:]
                break
        return "".join(p for p in parts if p is not self._end), parts[-1] is self._end


async def text_chunks(relay: Relay) -> AsyncIterator[str]:
    """The answer's text chunks, until it ends or this generator is closed. The first
    text's wait from the engine's stream to this response is the answer's ``relay`` timing.

    In a streamed response the client's leaving is Starlette's to notice and
    :class:`RelayedResponse`'s to act on; asking ``request.is_disconnected()`` per chunk
    here as well took 0.15 ms of the API's one event loop per chunk (dev machine), for
    every token of every stream."""
    try:
        finished = False
        while not finished:
            text, finished = await relay.handed()
            if not text:
                continue
            if "relay" not in relay.answer.timings and relay.first_chunk_at is not None:
                relay.answer.timings["relay"] = (time.perf_counter() - relay.first_chunk_at) * 1000.0
                metrics.observe_step("relay", relay.answer.timings["relay"])
            yield text
    finally:
        relay.left.set()


async def joined_text(relay: Relay, request: Request) -> str:
    """The whole text, for a response that is not streamed: nothing else watches the
    client while it is made, so each chunk asks whether the client is still there, and
    its leaving stops the generation at the next chunk."""
    parts = []
    async with contextlib.aclosing(text_chunks(relay)) as chunks:
        async for text in chunks:
            if await request.is_disconnected():
                logger.info("client disconnected: stopping the generation")
                break
            parts.append(text)
    return "".join(parts)


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


class RelayedResponse(StreamingResponse):
    """The server-sent events of a relay's answer, which stop the relay however the
    response ends. Starlette notices a client that leaves (ASGI spec < 2.4, uvicorn's 2.3:
    it listens for ``http.disconnect`` and cancels the sending; 2.4: the send fails) but
    does not close the body: a body parked at a ``yield`` whose send was pending when the
    client left would never run its ``finally``, and the engine would generate the whole
    answer for nobody. So the relay stops when this response's call ends, for whatever
    reason, and when the response is dropped without ever being sent (the client gone
    before the route returned). The relay's thread then stops at its next chunk."""

    def __init__(self, relay: Relay, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream")
        self._relay = relay
        weakref.finalize(self, relay.left.set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._relay.left.set()


async def question_events(relay: Relay) -> AsyncIterator[str]:
    """``/question``: the sources, the answer text as data events, an error event if
    generation failed, and a closing ``done`` event with the whole record."""
    answer = relay.answer
    yield sse(json.dumps([s.model_dump(mode="json") for s in relay.prepared.sources], ensure_ascii=False), "sources")
    async for chunk in text_chunks(relay):
        yield sse(chunk)
    if answer.error is not None:
        yield sse(answer.error.model_dump_json(), "error")
    yield sse(answer.model_dump_json(), "done")


async def chat_chunks(relay: Relay, model: str) -> AsyncIterator[str]:
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

    yield chunk({"role": "assistant", "content": ""}, rag=record(relay.prepared))
    async for text in text_chunks(relay):
        yield chunk({"content": text})
    if not relay.answer.complete:
        # Cut short: the record so far, then an error event, as vLLM sends one (the SDK
        # raises APIError with its message) and no finish_reason nor [DONE].
        yield chunk({}, None, rag=record(relay.answer))
        error = interrupted_error(relay.answer)
        yield f"data: {json.dumps(openai_body(error.status, error.problems, error.code), ensure_ascii=False)}\n\n"
        return
    yield chunk({}, openai_finish_reason(relay.answer), rag=record(relay.answer))
    yield "data: [DONE]\n\n"
