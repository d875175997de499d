"""The retrieval service: corpus, BM25, dense index and query model, loaded once per
process and shared by every request (Streamlit sessions, API calls, CLIs).

A part that cannot be loaded does not stop the rest: without an embedding model or a
usable vector index, BM25 still answers, and each search says which retriever stood in
and why. Per-request choices (mode, top-k, nprobe, hybrid candidates) come from the
settings passed with each call; the service itself holds no per-user state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore

from pipeline.core import timing
from pipeline.core.errors import EmptyQueryError, RetrieverUnavailableError
from pipeline.core.gpu import ProductGpuUse, release_gpu_memory
from pipeline.core.schema import CorpusBuild, Notice, PassageContext, RetrievalStatus, RetrieverName, SearchResult
from pipeline.retrieval.bm25 import BM25Index
from pipeline.retrieval.corpus import PassageStore, corpus_manifest
from pipeline.retrieval.dense.notices import DENSE_NOT_REQUESTED
from pipeline.retrieval.nodes import node_sources
from pipeline.retrieval.retrievers import BM25Retriever, HybridRetriever, RerankedRetriever
from pipeline.settings.model import RetrieverChoice, Settings

if TYPE_CHECKING:  # loaded with dense retrieval (heavy imports), not with this module
    from llama_index.core import VectorStoreIndex
    from llama_index.core.postprocessor import SentenceTransformerRerank

    from pipeline.retrieval.dense.encoder import LoadedEmbedding

logger = logging.getLogger(__name__)

#: Dense retrieval while a settings change replaces its index.
RELOADING = Notice(
    code="dense_reloading",
    en="the dense index is being replaced after a settings change; BM25 answers meanwhile",
    ja="設定の変更で密ベクトル検索の索引を読み込み直しています。それまでは BM25 で検索します。",
)

#: Which retriever stands in for an unavailable one, in order of preference.
FALLBACKS: dict[RetrieverName, tuple[RetrieverName, ...]] = {
    "hybrid": ("dense", "bm25"),
    "dense": ("hybrid", "bm25"),
    "bm25": ("hybrid", "dense"),
}


@dataclass
class RetrievalPlan:
    """How one request retrieves: the LlamaIndex retriever to call and what the user
    should know about the choice (a stand-in mode, a truncated question)."""

    query: str
    mode: RetrieverName
    retriever: BaseRetriever
    notices: list[Notice] = field(default_factory=list)


class RetrievalService:
    """Search over the loaded parts; build with :func:`pipeline.retrieval.loading.load_retrieval`."""

    def __init__(
        self,
        settings: Settings,
        passages: PassageStore,
        bm25: BM25Index | None,
        vector_index: VectorStoreIndex | None = None,
        embedding: LoadedEmbedding | None = None,
        missing: dict[str, Notice] | None = None,
        reranker: SentenceTransformerRerank | None = None,
    ) -> None:
        self.settings = settings
        self.passages = passages
        self.bm25 = bm25
        self.vector_index = vector_index
        self.embedding = embedding
        #: Why a component is not loaded ('bm25', 'dense') or runs degraded.
        self.missing: dict[str, Notice] = missing or {}
        self.reranker = reranker
        #: Seconds each part took to load (corpus, bm25, dense, reranker).
        self.load_timings: dict[str, float] = {}
        #: GPU memory the query encoder and the vector search hold, measured when loaded
        #: (not measured while dense retrieval is still loading in the background).
        self.gpu_use = ProductGpuUse(0.0, 0.0, measured=False)
        #: Starts loading dense retrieval when a request asks for it (set by the loader).
        self.dense_on_request: Callable[[], None] | None = None
        self.dense_loading = False
        self.lock = threading.Lock()
        #: The parts this service loaded itself, not taken over from the one it replaced
        #: (:data:`pipeline.retrieval.loading.PARTS`).
        self.loaded: set[str] = set()
        #: Closed: its GPU parts are let go; a dense index still loading is dropped on arrival.
        self.closed = False
        manifest = corpus_manifest(settings)
        #: The corpus's build record (``python -m pipeline.build``), read once.
        self.build = CorpusBuild.from_manifest(manifest) if manifest is not None else None

    @property
    def size(self) -> int:
        return len(self.passages)

    @property
    def modes(self) -> list[RetrieverName]:
        """The retriever modes that can run."""
        modes: list[RetrieverName] = []
        if self.bm25 is not None:
            modes.append("bm25")
        if self.vector_index is not None:
            modes.append("dense")
        if len(modes) == 2:
            modes.append("hybrid")
        return modes

    @property
    def auto_mode(self) -> RetrieverName:
        """The best mode that can run. Hybrid only with the configured embedding model:
        with the English-centric stand-in, fusing its ranking into BM25's makes Japanese
        retrieval worse (JSQuAD recall@5 0.72 vs 0.97 for BM25 alone, docs/retrieval.md)."""
        stand_in = self.embedding is not None and bool(self.embedding.fallback_reason)
        if "hybrid" in self.modes and not stand_in:
            return "hybrid"
        return "bm25" if "bm25" in self.modes else "dense"

    def context(self, row: int) -> PassageContext:
        """A passage with its neighbours in the article; IndexError outside the corpus."""
        return self.passages.context(row)

    # -- searching -------------------------------------------------------------------

    def plan(self, query: str, settings: Settings | None = None) -> RetrievalPlan:
        """Choose the retriever for a prepared query (:meth:`prepare_query`) as the
        request's settings ask (mode, top-k, nprobe, hybrid candidates; default: the
        service's), standing in another mode when the one asked for cannot run."""
        settings = settings or self.settings
        notices: list[Notice] = []
        effective = self._effective_mode(settings.retrieval.mode, notices)
        model = self.embedding.model if effective != "bm25" and self.embedding is not None else None
        tokens = model.query_tokens_past_limit(query) if model is not None else None
        if tokens is not None:
            notices.append(
                Notice(
                    code="query_tokens_truncated",
                    en=f"the question is {tokens} tokens; the embedding model reads {model.max_length}",
                    ja=f"質問が {tokens} トークンあるため、密ベクトル検索では先頭の {model.max_length} "
                    "トークンだけを使いました。",
                )
            )
        top_k = settings.retrieval.top_k
        if self.reranker is None:
            return RetrievalPlan(query, effective, self.retriever(effective, top_k, settings), notices)
        candidates = self.retriever(effective, max(top_k, settings.rerank.candidates), settings)
        return RetrievalPlan(query, effective, RerankedRetriever(candidates, self.reranker, top_k), notices)

    def retrieve(self, plan: RetrievalPlan) -> list[NodeWithScore]:
        """Run a plan (timed as ``retrieval_total``, its steps as embed/search/fetch)."""
        started = time.perf_counter()
        hits = plan.retriever.retrieve(plan.query)
        timing.record("retrieval_total", (time.perf_counter() - started) * 1000.0)
        return hits

    def search(self, query: str, settings: Settings | None = None) -> SearchResult:
        """Retrieval only: the ranked passages for a question."""
        query, notices = self.prepare_query(query)
        with timing.collect() as timings:
            plan = self.plan(query, settings)
            hits = self.retrieve(plan)
        return SearchResult(
            query=plan.query,
            mode=plan.mode,
            hits=node_sources(hits),
            timings=timings,
            notices=[*notices, *plan.notices],
        )

    def retriever(self, mode: RetrieverName, top_k: int, settings: Settings | None = None) -> BaseRetriever:
        """A LlamaIndex retriever of the given mode, tuned by ``settings`` (nprobe, hybrid
        candidates and k; default: the service's); raises if that mode cannot run."""
        settings = settings or self.settings
        if mode not in self.modes:
            reason = self._why_unavailable(mode)
            raise RetrieverUnavailableError(
                en=f"retriever {mode!r} is unavailable: {reason.en if reason else 'not loaded'}",
                ja=f"検索方式「{mode}」は使えません。{reason.ja if reason else ''}",
            )
        if mode == "bm25":
            return BM25Retriever(self.bm25, self.passages, similarity_top_k=top_k)
        if mode == "dense":
            return self.vector_index.as_retriever(
                similarity_top_k=top_k, vector_store_kwargs={"nprobe": settings.index.nprobe}
            )
        candidates = max(top_k, settings.retrieval.hybrid_candidates)
        return HybridRetriever(
            {name: self.retriever(name, candidates, settings) for name in ("bm25", "dense")},
            similarity_top_k=top_k,
            rrf_k=settings.retrieval.rrf_k,
        )

    def prepare_query(self, query: str) -> tuple[str, list[Notice]]:
        """Strip the question, refuse an empty one, cut an over-long one (with a notice)."""
        query = (query or "").strip()
        if not query:
            raise EmptyQueryError()
        notices: list[Notice] = []
        limit = self.settings.retrieval.max_query_chars
        if len(query) > limit:
            notices.append(
                Notice(
                    code="query_truncated",
                    en=f"the question has {len(query):,} characters; only the first {limit:,} are used",
                    ja=f"質問が長すぎるため（{len(query):,} 文字）、先頭の {limit:,} 文字だけを使いました。",
                )
            )
            query = query[:limit]
        return query, notices

    def _effective_mode(self, requested: RetrieverChoice, notices: list[Notice]) -> RetrieverName:
        """The mode a search will use; a stand-in for an unavailable one adds a notice."""
        if requested == "auto":
            return self.auto_mode
        if requested in self.modes:
            return requested
        reason = self.missing.get("dense")
        if requested != "bm25" and reason is not None and reason.code == DENSE_NOT_REQUESTED and self.dense_on_request:
            self.dense_on_request()  # asked for now: build it (BM25 answers meanwhile)
        stand_in = next(m for m in FALLBACKS[requested] if m in self.modes)
        reason = self._why_unavailable(requested)
        notices.append(
            Notice(
                code="retriever_fallback",
                en=f"retriever {requested!r} unavailable ({reason.en if reason else ''}); used {stand_in!r}",
                ja=f"検索方式「{requested}」が使えないため「{stand_in}」で検索しました。"
                + (reason.ja if reason else ""),
            )
        )
        return stand_in

    def _why_unavailable(self, mode: RetrieverName) -> Notice | None:
        if mode == "hybrid":
            return self.missing.get("bm25") or self.missing.get("dense")
        return self.missing.get(mode)

    # -- owning what it loaded ---------------------------------------------------------

    def release(self, parts: Iterable[str]) -> None:
        """Let go of these parts now (``vectors``, ``embedding``, ``reranker``), GPU memory
        included; searches meanwhile fall back to BM25 with a notice. The corpus and BM25
        are plain memory, freed with the service."""
        parts = set(parts)
        if "embedding" in parts:
            parts.add("vectors")  # the vector index queries through the embedding model
        with self.lock:
            index = self.vector_index if "vectors" in parts else None
            if index is not None:
                self.vector_index = None
                self.missing["dense"] = RELOADING
            if "embedding" in parts:
                self.embedding = None
            if "reranker" in parts:
                self.reranker = None
        if index is not None:
            index.vector_store.client.close()
        release_gpu_memory()

    def close(self, successor: RetrievalService | None = None) -> None:
        """Let go of what this service holds on the GPU, except the parts its
        ``successor`` took over (idempotent)."""
        self.closed = True
        held = {"vectors": "vector_index", "embedding": "embedding", "reranker": "reranker"}
        self.release(
            part
            for part, name in held.items()
            if successor is None or getattr(self, name) is not getattr(successor, name)
        )

    # -- status ----------------------------------------------------------------------

    @property
    def notices(self) -> list[Notice]:
        """What is missing or degraded, for status displays."""
        notices = list(self.missing.values())
        if self.embedding is not None and self.embedding.fallback_reason:
            notices.append(
                Notice(
                    code="embedding_fallback",
                    en=f"using {self.embedding.name} instead of {self.settings.embedding.model}",
                    ja=f"{self.settings.embedding.model} が使えないため、{self.embedding.name} で"
                    "密ベクトル検索をしています（英語向けのモデルのため、日本語の精度は低めです）。"
                    + self.embedding.fallback_reason,
                )
            )
        return notices

    def status(self) -> RetrievalStatus:
        store = self.vector_index.vector_store if self.vector_index is not None else None
        searcher = store.client if store is not None else None
        return RetrievalStatus(
            corpus=self.passages.name,
            passages=self.size,
            modes=self.modes,
            auto_mode=self.auto_mode,
            embedding_model=self.embedding.name if self.embedding else None,
            embedding_device=self.embedding.device if self.embedding else None,
            vector_search=store.describe() if searcher else None,
            vectors=searcher.ntotal if searcher else None,
            dimension=searcher.d if searcher else None,
            nprobe=self.settings.index.nprobe if searcher is not None and searcher.is_ivf else None,
            load_seconds=round(sum(self.load_timings.values()), 2),
            build=self.build,
        )
