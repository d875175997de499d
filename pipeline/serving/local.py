"""The RAG service in this process: the shared retrieval service and LLM backend, and a
LlamaIndex chat engine built per request with that request's settings."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from pipeline.core.errors import RagError
from pipeline.core.schema import PassageContext, SearchResult, ServiceStatus, Turn
from pipeline.generation.chat_engine import RagChatEngine, history_messages
from pipeline.generation.llm import LLMBackend
from pipeline.generation.token_count import TokenCounter
from pipeline.retrieval.service import RetrievalService
from pipeline.serving import metrics
from pipeline.serving.interface import AnswerStream
from pipeline.settings.model import Settings
from pipeline.text.tokenizer import JapaneseTokenizer


class LocalRag:
    """Implements :class:`~pipeline.serving.interface.RagService` in-process."""

    def __init__(
        self, settings: Settings, retrieval: RetrievalService, backend: LLMBackend, token_counter: TokenCounter
    ) -> None:
        self.settings = settings
        self.retrieval = retrieval
        self.backend = backend
        self.token_counter = token_counter
        self.tokenizer = JapaneseTokenizer()

    def chat_engine(self, settings: Settings | None = None) -> RagChatEngine:
        """The LlamaIndex chat engine for one request's settings."""
        return RagChatEngine(
            self.retrieval, self.backend, self.token_counter, settings or self.settings, self.tokenizer
        )

    def answer(self, question: str, history: Sequence[Turn] = (), settings: Settings | None = None) -> AnswerStream:
        """The chat engine's answer; its steps, tokens and outcome go to the process's
        metrics when the stream ends (:mod:`pipeline.serving.metrics`)."""
        started = time.perf_counter()
        metrics.RUNNING.inc()
        try:
            response = self.chat_engine(settings).stream_chat(question, history_messages(history))
        except BaseException:
            metrics.RUNNING.dec()
            raise
        first_token_s: list[float] = []
        read = []  # the LLM is asked at the first read: a stream dropped unread asked nothing

        def chunks() -> Iterator[str]:
            read.append(True)
            for chunk in response.response_gen:
                if not first_token_s:
                    first_token_s.append(time.perf_counter() - started)
                yield chunk

        def finished() -> None:
            response.chat_stream.close()
            metrics.RUNNING.dec()
            if read:
                metrics.observe_answer(response.answer, time.perf_counter() - started, next(iter(first_token_s), None))

        return AnswerStream(response.answer, chunks(), finished)

    def search(self, query: str, settings: Settings | None = None) -> SearchResult:
        with metrics.SEARCH_SECONDS.time():
            return self.retrieval.search(query, settings)

    def passage(self, row: int) -> PassageContext:
        size = self.retrieval.size
        if not 0 <= row < size:
            raise RagError(
                en=f"row {row} is outside the corpus (0..{size - 1})",
                ja=f"行番号 {row} はコーパスの範囲（0〜{size - 1:,}）の外です。",
            )
        return self.retrieval.context(row)

    def status(self) -> ServiceStatus:
        llm = self.backend.status(self.settings)
        degraded = self.backend.generates and not llm.reachable
        return ServiceStatus(
            state="degraded" if degraded else "ready",
            retrieval=self.retrieval.status(),
            llm=llm,
            notices=self.retrieval.notices,
        )
