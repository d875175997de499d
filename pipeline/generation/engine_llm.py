"""LlamaIndex's ``LLM`` for an OpenAI-compatible engine (``vllm serve``), streamed with
httpx and nothing in between.

Why not LlamaIndex's ``OpenAILike``: for every token it builds the ``openai`` SDK's chunk
model, a ``CompletionResponse``, a ``ChatResponse`` with its ``ChatMessage`` and two
instrumentation events, about 60 µs of the API process's CPU per token, under the GIL that
every stream and every question's retrieval share (``bench.api_relay``). Here a read of
the socket is parsed once (``json.loads`` per event) and becomes one ``ChatResponse``
whose delta joins every token that read brought. Streams send no instrumentation event
per token; the non-streaming calls (the condensing of a follow-up) keep LlamaIndex's
callbacks.

``ChatResponse.raw`` is ``{"finish_reason": …, "usage": …}`` from that read's events
(``usage`` when ``stream_options.include_usage`` asked for it). An HTTP error is an
:class:`EngineStatusError` with the engine's own message; a broken or malformed stream is
httpx's error or a ``ValueError``, as :mod:`pipeline.generation.failures` explains them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from pydantic import Field, PrivateAttr


class EngineStatusError(Exception):
    """The engine answered with an HTTP error; ``message`` is its own explanation."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


def error_message(response: httpx.Response) -> str:
    """vLLM's explanation in an error body (``{"error": {"message": …}}``, or the older
    ``{"message": …}``), else the body itself."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    found = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(found, dict) and "message" in found:
        return str(found["message"])
    return str(found)[:500]


def read_events(response: httpx.Response) -> Iterator[list[dict]]:
    """The server-sent events' JSON payloads, grouped by the read that brought them (httpx
    gives one per HTTP chunk: one event from vLLM, several through a proxy that merges
    chunks); ``[DONE]`` ends the stream, and a stream that ends without it was cut off
    (``httpx.RemoteProtocolError``). An event with an ``error`` (vLLM's way of failing
    mid-stream) raises :class:`EngineStatusError`.

    After ``[DONE]`` and the last events, one more read takes the body's end (the chunked
    encoding's last chunk), so that the connection can serve the next request; a failure
    there costs only the connection (the answer is whole), and a body that does not end
    there is left unread (its connection is closed with the response, not reused)."""
    pending = b""
    received_parts = response.iter_bytes()
    for received in received_parts:
        pending += received
        if b"\r" in pending:  # CRLF line breaks; a trailing CR waits for its LF
            pending = pending.replace(b"\r\n", b"\n")
        *complete, pending = pending.split(b"\n\n")
        events = []
        for block in complete:
            lines = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
            if not lines:
                continue  # a comment or a field without data
            data = b"\n".join(lines)
            if data == b"[DONE]":
                if events:
                    yield events
                with contextlib.suppress(httpx.HTTPError):
                    next(received_parts, None)
                return
            try:
                events.append(event_payload(data))
            except EngineStatusError:
                if events:  # what the same read brought before the error is shown too
                    yield events
                raise
        if events:
            yield events
    raise httpx.RemoteProtocolError("the engine's stream ended without [DONE]")


def event_payload(data: bytes) -> dict:
    """One event's JSON object; an ``error`` in it is the engine's failure."""
    event = json.loads(data)
    if not isinstance(event, dict):
        raise ValueError(f"an event that is not an object: {data[:200]!r}")
    if error := event.get("error"):
        error = error if isinstance(error, dict) else {"message": error}
        code = error.get("code")
        raise EngineStatusError(code if isinstance(code, int) else 500, str(error.get("message")))
    return event


def read_summary(events: list[dict], text_of: Callable[[dict], str | None]) -> tuple[str, dict]:
    """(the text of a read's events, its ``finish_reason`` and ``usage``): the engine sends
    them in the last events, which one read may bring together. Events of another shape
    than the API's are a ``ValueError``, as malformed JSON is."""
    text, finish_reason, usage = "", None, None
    try:
        for event in events:
            if choices := event.get("choices"):
                text += text_of(choices[0]) or ""
                finish_reason = choices[0].get("finish_reason") or finish_reason
            usage = event.get("usage") or usage
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"an event of an unexpected shape: {exc!r}") from exc
    if usage is not None and not isinstance(usage, dict):
        raise ValueError("an event of an unexpected shape")
    return text, {"finish_reason": finish_reason, "usage": usage}


class EngineLLM(LLM):
    """An OpenAI-compatible completions or chat endpoint (see the module's docstring).
    ``http_client`` may be a pool shared with other answers: :meth:`close` ends this
    LLM's streams still open, and with them their connections, which makes vLLM abort
    those requests."""

    model: str
    api_base: str = Field(description="the engine's URL up to /v1")
    api_key: str = "EMPTY"
    is_chat_model: bool = False
    context_window: int = 4096
    timeout_s: float | None = Field(default=None, description="each request's timeout in seconds (None: the client's)")
    _client: httpx.Client = PrivateAttr()
    _open: set[httpx.Response] = PrivateAttr(default_factory=set)

    def __init__(self, http_client: httpx.Client, **fields: Any) -> None:
        super().__init__(**fields)
        self._client = http_client

    def close(self) -> None:
        """End the streams still open; their connections close instead of going back to
        the pool, as a response closed before its end does."""
        for response in list(self._open):
            response.close()

    @classmethod
    def class_name(cls) -> str:
        return "EngineLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, is_chat_model=self.is_chat_model, model_name=self.model)

    # -- the requests --------------------------------------------------------------------

    def _body(self, messages: Sequence[ChatMessage] | None, prompt: str | None, stream: bool, **kwargs: Any) -> dict:
        extra_body = kwargs.pop("extra_body", None) or {}
        body: dict[str, Any] = {"model": self.model, "stream": stream, **kwargs, **extra_body}
        if messages is not None:
            body["messages"] = [{"role": m.role.value, "content": m.content} for m in messages]
        else:
            body["prompt"] = prompt
        return body

    def _post(self, path: str, body: dict, text_of: Callable[[dict], str | None]) -> str:
        """The whole answer's text."""
        url, headers = f"{self.api_base}{path}", self._headers()
        response = self._client.post(url, json=body, headers=headers, timeout=self._timeout)
        if not response.is_success:
            raise EngineStatusError(response.status_code, error_message(response))
        text, _ = read_summary([response.json()], text_of)
        return text

    def _stream(self, path: str, body: dict, text_of: Callable[[dict], str | None]) -> Iterator[tuple[str, dict]]:
        """(the text a read brought, its ``finish_reason`` and ``usage``) until the end."""
        request = self._client.build_request(
            "POST", f"{self.api_base}{path}", json=body, headers=self._headers(), timeout=self._timeout
        )
        response = self._client.send(request, stream=True)
        self._open.add(response)
        try:
            if not response.is_success:
                response.read()
                raise EngineStatusError(response.status_code, error_message(response))
            for events in read_events(response):
                yield read_summary(events, text_of)
        finally:
            response.close()
            self._open.discard(response)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def _timeout(self) -> Any:  # a float, or httpx's USE_CLIENT_DEFAULT
        return httpx.USE_CLIENT_DEFAULT if self.timeout_s is None else self.timeout_s

    # -- LlamaIndex's interface ----------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        if not self.is_chat_model:
            completion = self.complete(self.messages_to_prompt(messages), formatted=True, **kwargs)
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=completion.text))
        content = self._post("/chat/completions", self._body(messages, None, False, **kwargs), _chat_message)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=content))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(
            text=self._post("/completions", self._body(None, prompt, False, **kwargs), _completion_text)
        )

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        if self.is_chat_model:
            path, body = "/chat/completions", self._body(messages, None, True, **kwargs)
            text_of = _chat_delta
        else:
            path, body = "/completions", self._body(None, self.messages_to_prompt(messages), True, **kwargs)
            text_of = _completion_text
        text = ""
        for delta, raw in self._stream(path, body, text_of):
            text += delta
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta, raw=raw)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = ""
        for delta, raw in self._stream("/completions", self._body(None, prompt, True, **kwargs), _completion_text):
            text += delta
            yield CompletionResponse(text=text, delta=delta, raw=raw)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self.complete, prompt, formatted, **kwargs)

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return _in_thread(self.stream_chat(messages, **kwargs))

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return _in_thread(self.stream_complete(prompt, formatted, **kwargs))


def _completion_text(choice: dict) -> str | None:
    return choice.get("text")


def _chat_delta(choice: dict) -> str | None:
    return (choice.get("delta") or {}).get("content")


def _chat_message(choice: dict) -> str | None:
    return (choice.get("message") or {}).get("content")


async def _in_thread(stream: Iterator[Any]) -> AsyncIterator[Any]:
    """A blocking stream read in worker threads, for LlamaIndex's async interface."""
    end = object()
    while (item := await asyncio.to_thread(next, stream, end)) is not end:
        yield item
