"""What the pages (and the CLI) need from a RAG service, as one interface: the local
service (:class:`~pipeline.serving.local.LocalRag`) and the RAG API's client
(:class:`~pipeline.serving.client.RagApiClient`) both implement it, with the same
schema types (:mod:`pipeline.core.schema`) coming back."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from pipeline.core.schema import Answer, PassageContext, SearchResult, ServiceStatus, Turn
from pipeline.settings.model import Settings


class AnswerStream:
    """An answer being produced. ``answer`` holds the sources, notices and prompt before
    the first token; iterating yields the text as it is generated and completes the
    answer (text, citations, timings) when the stream ends. Single use; :meth:`close`
    (or leaving the iteration early) stops the generation upstream."""

    def __init__(self, answer: Answer, chunks: Iterator[str], on_close: Callable[[], None] | None = None) -> None:
        self.answer = answer
        self._chunks: Iterator[str] | None = chunks
        # Called once: at close(), or when a stream nobody read nor closed is let go (a
        # rerun between asking and reading), so that its generation and count end too.
        self._on_close = weakref.finalize(self, on_close) if on_close is not None else None
        if self._on_close is not None:
            self._on_close.atexit = False

    def __iter__(self) -> Iterator[str]:
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            return
        try:
            yield from chunks
        finally:
            self.close()

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    def consume(self) -> Answer:
        for _ in self:
            pass
        return self.answer


class RagService(Protocol):
    """Search, passages, answers and status, with per-request settings."""

    def status(self) -> ServiceStatus:
        """What is loaded and working, and what is missing or degraded (its notices)."""

    def search(self, query: str, settings: Settings) -> SearchResult:
        """Retrieval only, as the settings ask (retrieval mode, top-k, ...). Raises a
        RagError (empty question, refused request)."""

    def passage(self, row: int) -> PassageContext:
        """A passage by corpus row with its neighbours. Raises a RagError outside the corpus."""

    def answer(self, question: str, history: Sequence[Turn], settings: Settings) -> AnswerStream:
        """Retrieve and start answering. Raises a RagError (empty question, refused request)."""
