"""The RAG service in this process: the shared retrieval service and LLM backend, and a
LlamaIndex chat engine built per request with that request's settings."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.errors import RagError
from pipeline.core.schema import PassageContext, SearchResult, ServiceStatus, Turn
from pipeline.core.settings import Settings
from pipeline.generation.chat_engine import RagChatEngine, history_messages
from pipeline.generation.llm import LLMBackend
from pipeline.generation.token_count import TokenCounter
from pipeline.retrieval.service import RetrievalService
from pipeline.serving.interface import AnswerStream
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
        response = self.chat_engine(settings).stream_chat(question, history_messages(history))
        return AnswerStream(response.answer, response.response_gen, response.chat_stream.close)

    def search(self, query: str, settings: Settings | None = None) -> SearchResult:
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
