"""The RAG chat engine: a LlamaIndex chat engine that condenses a follow-up, retrieves,
fits the numbered passages into the model's context and streams a cited answer, with a
search-only answer whenever no model can answer.

    engine = RagChatEngine(retrieval, backend, token_counter, settings)
    response = engine.stream_chat("梅雨とは？", chat_history=[...])
    for delta in response.response_gen: ...
    response.answer.sources  # known before the first token

Like LlamaIndex's ``CondensePlusContextChatEngine`` (condense, retrieve, answer over the
context), but it holds no memory: the history comes with each call, and an engine is
built per request with that request's settings, over the process's shared retrieval
service and LLM backend, so that one engine class serves every session and replica.
The answer's record (:class:`~pipeline.core.schema.Answer`) rides on the response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.chat_engine.types import AgentChatResponse, BaseChatEngine, StreamingAgentChatResponse

from pipeline.core import timing
from pipeline.core.schema import Answer, Turn
from pipeline.generation.budget import fit_request
from pipeline.generation.condense import standalone_question
from pipeline.generation.failures import GENERATION_ERRORS, NO_LLM, generation_failure
from pipeline.generation.grounding import check_citations, search_only_text
from pipeline.generation.llm import LLMBackend, request_kwargs
from pipeline.generation.prompt_formats import prompt_format
from pipeline.generation.token_count import TokenCounter
from pipeline.retrieval.nodes import node_sources
from pipeline.retrieval.service import RetrievalService
from pipeline.settings.model import Settings
from pipeline.text.tokenizer import JapaneseTokenizer

logger = logging.getLogger(__name__)


@dataclass
class RagChatResponse(StreamingAgentChatResponse):
    """A streaming chat response that also carries the answer's record."""

    answer: Answer | None = None


def turns_of(chat_history: Sequence[ChatMessage]) -> list[Turn]:
    """User/assistant message pairs as turns (system messages play no part)."""
    messages = [m for m in chat_history if m.role in (MessageRole.USER, MessageRole.ASSISTANT)]
    return [
        Turn(question=q.content or "", answer=a.content or "")
        for q, a in zip(messages[::2], messages[1::2], strict=False)
        if q.role == MessageRole.USER and a.role == MessageRole.ASSISTANT
    ]


class RagChatEngine(BaseChatEngine):
    """Stateless question answering over a retrieval service and an LLM backend."""

    def __init__(
        self,
        retrieval: RetrievalService,
        backend: LLMBackend,
        token_counter: TokenCounter,
        settings: Settings,
        tokenizer: JapaneseTokenizer | None = None,
    ) -> None:
        self.retrieval = retrieval
        self.backend = backend
        self.tokens = token_counter
        self.settings = settings
        self.tokenizer = tokenizer or JapaneseTokenizer()

    # -- LlamaIndex's chat engine interface ----------------------------------------------

    def stream_chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> RagChatResponse:
        """Retrieve and prepare; the text comes from ``response_gen``. Raises
        EmptyQueryError for an empty question."""
        history = turns_of(chat_history or [])
        settings = self.settings
        with timing.collect() as timings:
            started = time.perf_counter()
            question, notices = self.retrieval.prepare_query(message)
            standalone = standalone_question(question, history, settings, self.backend, self.tokens, notices)
            plan = self.retrieval.plan(standalone, settings)
            hits = self.retrieval.retrieve(plan)
            answer = Answer(
                question=question,
                standalone_question=standalone,
                retriever=plan.mode,
                sources=node_sources(hits),
                notices=[*notices, *plan.notices],
            )
            stream = self._prepare(answer, history)
            timings["prepare"] = (time.perf_counter() - started) * 1000.0
        answer.timings.update(timings)
        return RagChatResponse(chat_stream=stream, source_nodes=hits, is_writing_to_memory=False, answer=answer)

    def chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AgentChatResponse:
        response = self.stream_chat(message, chat_history)
        text = "".join(response.response_gen)
        metadata = {"answer": response.answer}
        return AgentChatResponse(response=text, source_nodes=response.source_nodes, metadata=metadata)

    async def achat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AgentChatResponse:
        return await asyncio.to_thread(self.chat, message, chat_history)

    async def astream_chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> RagChatResponse:
        return await asyncio.to_thread(self.stream_chat, message, chat_history)

    def reset(self) -> None:
        """Nothing to forget: the engine keeps no conversation."""

    @property
    def chat_history(self) -> list[ChatMessage]:
        return []

    # -- steps ---------------------------------------------------------------------------

    def _prepare(self, answer: Answer, history: Sequence[Turn]) -> Iterator[ChatResponse]:
        """The response stream: generated, or search-only when no LLM is configured or
        the question leaves no room for an answer."""
        if not self.backend.generates:
            answer.notices.append(NO_LLM)
            return self._search_only(answer)
        request_format = prompt_format(self.settings, self.tokens)
        with timing.step("prompt"):
            fitted = fit_request(answer.question, answer.sources, history, self.settings, request_format)
        answer.sources, answer.prompt, answer.prompt_format = fitted.sources, fitted.prompt, request_format.name
        answer.notices.extend(fitted.notices)
        counted = "prompt_tokens" if fitted.prompt_tokens_exact else "prompt_tokens_estimated"
        answer.timings[counted] = float(fitted.prompt_tokens)
        if fitted.messages is None:
            answer.prompt = answer.prompt_format = None
            return self._search_only(answer)
        answer.mode = "demo" if self.settings.demo else "full"
        return self._generate(answer, fitted.messages, fitted.max_tokens, prepared_at=time.perf_counter())

    def _generate(
        self, answer: Answer, messages: list[ChatMessage], max_tokens: int, prepared_at: float
    ) -> Iterator[ChatResponse]:
        settings = self.settings
        started = time.perf_counter()
        # From the end of the preparation to the engine's request: the caller's hand-off of
        # the stream (in the API, the relay thread it starts in the preparing thread).
        answer.timings["handoff"] = (started - prepared_at) * 1000.0
        first_token_at = None
        completion_tokens = 0
        llm = self.backend.connect(settings)
        kwargs = {**request_kwargs(settings, max_tokens), "stream_options": {"include_usage": True}}
        try:
            for response in llm.stream_chat(messages, **kwargs):
                # What the engine said of this read's events, on both endpoints (EngineLLM).
                usage = response.raw["usage"] or {}
                completion_tokens = usage.get("completion_tokens") or completion_tokens
                answer.finish_reason = response.raw["finish_reason"] or answer.finish_reason
                if not response.delta:
                    continue
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    answer.timings["ttft"] = (first_token_at - started) * 1000.0
                answer.text += response.delta
                yield response
            answer.complete = True
        except GENERATION_ERRORS as exc:
            answer.error = generation_failure(exc, self.backend.base_url, settings.llm.timeout_s, bool(answer.text))
            answer.notices.append(answer.error)
            logger.warning("generation failed: %s", answer.error.en)
            if not answer.text:
                yield from self._search_only(answer)
                return
        finally:
            llm.close()  # also when the reader went away: vLLM then aborts the request
            finished = time.perf_counter()
            tokens = completion_tokens or (self.tokens.count(answer.text) if answer.text else 0)
            if tokens:  # the engine's count even when its tokens decoded to no text
                answer.timings["completion_tokens"] = float(tokens)
            if first_token_at is not None:
                answer.timings["generation"] = (finished - first_token_at) * 1000.0
                if finished > first_token_at and tokens > 1:
                    answer.timings["tokens_per_s"] = (tokens - 1) / (finished - first_token_at)
        check_citations(answer, self.tokenizer)

    def _search_only(self, answer: Answer) -> Iterator[ChatResponse]:
        text = search_only_text(answer, self.tokenizer)
        yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=text)


def history_messages(history: Sequence[Turn]) -> list[ChatMessage]:
    """Earlier turns as LlamaIndex chat messages (the inverse of :func:`turns_of`)."""
    return [
        ChatMessage(role=role, content=text)
        for turn in history
        for role, text in ((MessageRole.USER, turn.question), (MessageRole.ASSISTANT, turn.answer))
    ]
