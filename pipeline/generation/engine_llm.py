"""LlamaIndex's ``LLM`` for an OpenAI-compatible engine (``vllm serve``), streamed with
httpx and nothing in between.

Why not LlamaIndex's ``OpenAILike``: for every token it builds the ``openai`` SDK's chunk
model, a ``CompletionResponse``, a ``ChatResponse`` with its ``ChatMessage`` and two
instrumentation events, about 60 µs of the API process's CPU per token, under the GIL that
every stream and every question's retrieval share (``bench.api_relay``). Here a read of
the socket is parsed once (``json.loads`` per event) and becomes one ``ChatResponse``
whose delta joins every token that read brought: when the reader keeps up that is one
token, under load several. Streams send no instrumentation event per token; the
non-streaming calls (the condensing of a follow-up) keep LlamaIndex's callbacks.

``ChatResponse.raw`` is the engine's last event of that read as a dict, with ``usage``
(when ``stream_options.include_usage`` asked for it) and ``choices``. An HTTP error is an
:class:`EngineStatusError` with the engine's own message; a broken or malformed stream is
httpx's error or a ``ValueError``, as :mod:`pipeline.generation.failures` explains them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
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
    """The server-sent events' JSON payloads, grouped by the socket read that brought
    them; ``[DONE]`` ends the stream. An event with an ``error`` (vLLM's way of failing
    mid-stream) raises :class:`EngineStatusError`."""
    pending = b""
    for received in response.iter_bytes():
        pending += received.replace(b"\r\n", b"\n") if b"\r" in received else received
        *complete, pending = pending.split(b"\n\n")
        events = []
        for block in complete:
            for line in block.splitlines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    if events:
                        yield events
                    return
                event = json.loads(data)
                if not isinstance(event, dict):
                    raise ValueError(f"an event that is not an object: {data[:200]!r}")
                if "error" in event:
                    error = event["error"] if isinstance(event["error"], dict) else {"message": event["error"]}
                    raise EngineStatusError(int(error.get("code") or 500), str(error.get("message")))
                events.append(event)
        if events:
            yield events


class EngineLLM(LLM):
    """An OpenAI-compatible completions or chat endpoint (see the module's docstring).
    The caller owns ``http_client``: closing it mid-stream makes vLLM abort the request."""

    model: str
    api_base: str = Field(description="the engine's URL up to /v1")
    api_key: str = "EMPTY"
    is_chat_model: bool = False
    context_window: int = 4096
    _client: httpx.Client = PrivateAttr()

    def __init__(self, http_client: httpx.Client, **fields: Any) -> None:
        super().__init__(**fields)
        self._client = http_client

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

    def _post(self, path: str, body: dict) -> dict:
        response = self._client.post(f"{self.api_base}{path}", json=body, headers=self._headers())
        if response.status_code >= 400:
            raise EngineStatusError(response.status_code, error_message(response))
        return response.json()

    def _stream(self, path: str, body: dict, text_of: Any) -> Iterator[tuple[str, dict]]:
        """(the text a read brought, that read's last event) until the engine's end."""
        request = self._client.build_request("POST", f"{self.api_base}{path}", json=body, headers=self._headers())
        response = self._client.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise EngineStatusError(response.status_code, error_message(response))
            for events in read_events(response):
                text = "".join(text_of(choices[0]) or "" for e in events if (choices := e.get("choices")))
                yield text, events[-1]
        finally:
            response.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    # -- LlamaIndex's interface ----------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        if not self.is_chat_model:
            completion = self.complete(self.messages_to_prompt(messages), formatted=True, **kwargs)
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=completion.text))
        answer = self._post("/chat/completions", self._body(messages, None, False, **kwargs))
        content = answer["choices"][0]["message"].get("content") or ""
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=content), raw=answer)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        answer = self._post("/completions", self._body(None, prompt, False, **kwargs))
        return CompletionResponse(text=answer["choices"][0].get("text") or "", raw=answer)

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


async def _in_thread(stream: Iterator[Any]) -> AsyncIterator[Any]:
    """A blocking stream read in worker threads, for LlamaIndex's async interface."""
    end = object()
    while (item := await asyncio.to_thread(next, stream, end)) is not end:
        yield item
