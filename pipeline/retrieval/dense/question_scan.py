"""E5 and the int8 scan of the questions waiting, in one step on the process's graph
thread (``index.encode_and_scan``).

Without it, a question's dense retrieval is two hand-offs: its thread hands the question
to the graph thread (E5, batched with the questions waiting beside it) and waits, then
hands the vector to the batching searcher's thread (the scan, batched again) and waits
again. Each hand-off wakes a thread that must take the GIL back behind the burst's other
requests, and the second batch is made of whoever reached the searcher within its window,
not of the questions E5 encoded together. Here the graph thread encodes the questions
waiting, scans them and re-scores their candidates on the host: one batch for all three
steps. The re-scoring is the batch's rather than each question's thread's: with each
thread re-scoring its own question, the GPU host's probe (2026-12-06) found a burst's CPU
time 1.3–1.8 times the two-step path's, which re-scores a batch in one call (the likely
cause; not separated). It holds the graph thread meanwhile, as the batching searcher's
thread is held by its own batch's re-scoring.
LlamaIndex's retriever asks the vector store with the question's text (the store says
``is_embedding_query = False``), as for stores that embed their queries themselves.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future

import numpy as np

from pipeline.core import timing
from pipeline.core.cuda_graphs import graph_thread, serve_waiting
from pipeline.retrieval.dense.gpu_encoder import BATCH_BUCKETS, PaddedEncoder
from pipeline.retrieval.dense.searchers import Int8Searcher


class QuestionScan:
    """Questions to their passages' rows through ``encoder`` (the questions prefixed with
    ``prefix``, E5's ``"query: "``) and ``searcher``, which neither it owns: they are the
    embedding model's and the vector store's. Its step's parts are timed as the request's
    ``embed`` (its wait included) and ``search`` steps, as the two-step path times them."""

    def __init__(self, encoder: PaddedEncoder, prefix: str, searcher: Int8Searcher) -> None:
        self._encoder, self._prefix, self._searcher = encoder, prefix, searcher
        #: Questions waiting for the graph thread, as ((text, k), future of what it found).
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()

    def search(self, question: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of the ``k`` passages nearest ``question``, best first. The
        ``embed`` step runs until the batch's encoding ended, ``search`` from there to the
        end (the scan, the re-scoring, the wake of this thread): together the whole call,
        as the two steps of the two-step path are."""
        asked_at = time.perf_counter()
        encoded_at = None
        found: Future = Future()
        try:
            self._waiting.put(((self._prefix + question, k), found))
            graph_thread().submit(self._step)
            similarities, rows, encoded_at = found.result()
            return similarities[:k], rows[:k]
        finally:
            ended_at = time.perf_counter()
            timing.record("embed", ((encoded_at or ended_at) - asked_at) * 1000.0)
            if encoded_at is not None:
                timing.record("search", (ended_at - encoded_at) * 1000.0)

    def _step(self) -> None:
        """On the graph thread: every question waiting by now, up to E5's largest batch."""
        serve_waiting(self._waiting, BATCH_BUCKETS[-1], lambda _: 1, self._encode_and_scan)

    def _encode_and_scan(self, asked: list[tuple[str, int]]) -> list[tuple]:
        """Each question's (similarities, rows) for the largest k asked, best first, and
        when the batch's encoding ended: the candidates for that k are a superset of each
        question's own, re-scored exactly, so each question's first k are its own k best.
        A close of the searcher meanwhile is met here (SearcherClosedError)."""
        vectors = self._encoder.encode_batch([text for text, _ in asked])
        encoded_at = time.perf_counter()
        similarities, rows = self._searcher.search(vectors, max(k for _, k in asked))
        return [(similarities[i], rows[i], encoded_at) for i in range(len(asked))]
