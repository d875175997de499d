"""The retrieval service: corpus, BM25, dense index and query model, loaded once per
process and shared by every request (Streamlit sessions, API calls, CLIs).

A part that cannot be loaded does not stop the rest: without an embedding model or a
usable vector index, BM25 still answers, and :meth:`RetrievalService.search` says which
retriever stood in and why.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.schema import NodeWithScore

from pipeline import timing
from pipeline.bm25 import BM25Index
from pipeline.config import ModeSetting, RetrieverMode, Settings
from pipeline.corpus import Passage, PassageStore
from pipeline.dense_index import Progress, open_searcher
from pipeline.embeddings import LoadedEmbedding, load_embedding, resolve_device
from pipeline.errors import (
    DataUnavailableError,
    EmptyQueryError,
    Notice,
    RetrieverUnavailableError,
)
from pipeline.hub import fetch_model
from pipeline.retrievers import BM25Retriever, HybridRetriever
from pipeline.tokenizer import JapaneseTokenizer
from pipeline.vector_store import PassageVectorStore

logger = logging.getLogger(__name__)

#: Which retriever stands in for an unavailable one, in order of preference.
FALLBACKS: dict[str, tuple[RetrieverMode, ...]] = {
    "hybrid": ("dense", "bm25"),
    "dense": ("hybrid", "bm25"),
    "bm25": ("hybrid", "dense"),
}


@dataclass
class SearchResult:
    query: str
    mode: RetrieverMode
    hits: list[NodeWithScore]
    timings: dict[str, float]
    notices: list[Notice] = field(default_factory=list)


class RetrievalService:
    def __init__(
        self,
        settings: Settings,
        passages: PassageStore,
        bm25: BM25Index | None,
        vector_index: VectorStoreIndex | None,
        embedding: LoadedEmbedding | None,
        missing: dict[str, Notice],
        load_seconds: float = 0.0,
        reranker: SentenceTransformerRerank | None = None,
    ) -> None:
        self.settings = settings
        self.passages = passages
        self.bm25 = bm25
        self.vector_index = vector_index
        self.embedding = embedding
        #: Why a retriever component is not loaded ('bm25', 'dense') or runs degraded
        #: (e.g. 'vector_backend_fallback').
        self.missing = missing
        self.load_seconds = load_seconds
        self.reranker = reranker
        #: Seconds each part took to load (corpus, bm25, dense, reranker).
        self.load_timings: dict[str, float] = {}
        #: For sentence matching (highlights); thread-safe.
        self.tokenizer = JapaneseTokenizer()

    @classmethod
    def load(
        cls,
        settings: Settings,
        passages: PassageStore | None = None,
        *,
        bm25: bool = True,
        dense: bool = True,
        dense_in_background: float | None = None,
    ) -> RetrievalService:
        """Load what the settings ask for (the configured corpus unless ``passages`` is
        given; ``bm25``/``dense`` False skip a component). Only a missing corpus is fatal.

        With ``dense_in_background`` seconds (the app) dense retrieval loads in a thread,
        waited for that long: a cached index is ready by then, while building one on a
        fresh machine (minutes of embedding) goes on behind BM25, which answers meanwhile."""
        started = time.perf_counter()
        with timing.collect() as load_timings:
            with timing.step("corpus"):
                passages = passages if passages is not None else PassageStore.from_settings(settings)
            missing: dict[str, Notice] = {}
            with timing.step("bm25"):
                bm25_index = _load_bm25(settings, passages, missing) if bm25 else None
            background = dense and dense_in_background is not None and bm25_index is not None
            with timing.step("dense"):
                wanted = dense and not background
                embedding, vector_index = _load_dense(settings, passages, missing) if wanted else (None, None)
            with timing.step("reranker"):
                reranker = _load_reranker(settings, missing) if settings.rerank.enabled else None
        if bm25_index is None and vector_index is None:
            reasons = " / ".join(n.en for n in missing.values()) or "none requested"
            raise DataUnavailableError(
                en=f"no retriever can run: {reasons}",
                ja="検索方式がひとつも使えません。\n" + "\n".join(n.ja for n in missing.values()),
            )
        service = cls(
            settings,
            passages,
            bm25_index,
            vector_index,
            embedding,
            missing,
            load_seconds=time.perf_counter() - started,
            reranker=reranker,
        )
        service.load_timings = {step: round(ms / 1000.0, 2) for step, ms in load_timings.items()}
        if background:
            service.missing["dense"] = Notice(
                "dense_loading",
                en="the dense index is being prepared; BM25 answers meanwhile",
                ja="密ベクトル検索の準備中です。それまでは BM25 で検索します。",
            )
            loader = threading.Thread(target=service._load_dense_later, name="dense-loader", daemon=True)
            loader.start()
            loader.join(dense_in_background)
        logger.info(
            "retrieval ready in %.1fs: %d passages, modes %s",
            service.load_seconds,
            len(passages),
            service.modes,
        )
        return service

    @property
    def modes(self) -> list[RetrieverMode]:
        """The retriever modes that can run."""
        modes: list[RetrieverMode] = []
        if self.bm25 is not None:
            modes.append("bm25")
        if self.vector_index is not None:
            modes.append("dense")
        if len(modes) == 2:
            modes.append("hybrid")
        return modes

    def _load_dense_later(self) -> None:
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            self.missing["dense"] = Notice(
                "dense_loading",
                en=f"the dense index is being prepared ({done:,}/{total:,} passages embedded)",
                ja=f"密ベクトル検索の準備中です（{done:,} / {total:,} パッセージ）。それまでは BM25 で検索します。",
            )

        missing: dict[str, Notice] = {}
        try:
            embedding, vector_index = _load_dense(self.settings, self.passages, missing, progress)
        except Exception as exc:  # a thread has nobody to raise to: report it where the UI looks
            logger.exception("dense retrieval failed to load")
            missing["dense"] = Notice(
                "dense_unavailable",
                en=f"dense retrieval failed: {exc}",
                ja=f"密ベクトル検索を準備できませんでした（{exc}）。BM25 で検索します。",
            )
            embedding, vector_index = None, None
        self.embedding, self.vector_index = embedding, vector_index
        self.missing.pop("dense", None)
        self.missing.update(missing)
        self.load_timings["dense"] = round(time.perf_counter() - started, 2)
        logger.info("dense retrieval ready after %.1fs; modes %s", time.perf_counter() - started, self.modes)

    @property
    def size(self) -> int:
        return len(self.passages)

    def passage(self, row: int) -> tuple[Passage, int | None, int | None]:
        """A passage and the rows of its neighbours in the same article (None at the ends)."""
        previous, following = self.passages.neighbours(row)
        return self.passages.get(row), previous.row if previous else None, following.row if following else None

    @property
    def auto_mode(self) -> RetrieverMode:
        """The best mode that can run. Hybrid only with the configured embedding model:
        with the English-centric stand-in, fusing its ranking into BM25's makes Japanese
        retrieval worse (JSQuAD recall@5 0.72 vs 0.97 for BM25 alone, docs/retrieval.md)."""
        stand_in = self.embedding is not None and bool(self.embedding.fallback_reason)
        if "hybrid" in self.modes and not stand_in:
            return "hybrid"
        return "bm25" if "bm25" in self.modes else "dense"

    def retriever(self, mode: RetrieverMode, top_k: int, settings: Settings | None = None) -> BaseRetriever:
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
            {
                "bm25": self.retriever("bm25", candidates, settings),
                "dense": self.retriever("dense", candidates, settings),
            },
            similarity_top_k=top_k,
            rrf_k=settings.retrieval.rrf_k,
        )

    def search(
        self,
        query: str,
        *,
        mode: ModeSetting | None = None,
        top_k: int | None = None,
        settings: Settings | None = None,
    ) -> SearchResult:
        """Retrieve passages for a question, standing in another mode if needed.
        ``settings`` (a session's) tune the search; ``mode`` and ``top_k`` override them."""
        settings = settings or self.settings
        query, notices = self.prepare_query(query)
        effective = self.effective_mode(mode or settings.retrieval.mode, notices)
        top_k = top_k or settings.retrieval.top_k
        candidates = max(top_k, settings.rerank.candidates) if self.reranker is not None else top_k
        retriever = self.retriever(effective, candidates, settings)
        with timing.collect() as timings:
            started = time.perf_counter()
            hits = retriever.retrieve(query)
            if self.reranker is not None:
                hits = self._rerank(query, hits)[:top_k]
            timings["retrieval_total"] = (time.perf_counter() - started) * 1000.0
        return SearchResult(query, effective, hits, timings, notices)

    def _rerank(self, query: str, hits: list[NodeWithScore]) -> list[NodeWithScore]:
        """Cross-encoder scores for the candidates, best first; the retriever's score is
        kept in metadata (``retrieval_score``), hidden from the LLM."""
        with timing.step("rerank"):
            ranked = self.reranker.postprocess_nodes(hits, query_str=query)
        for hit in ranked:
            hit.node.excluded_llm_metadata_keys.append("retrieval_score")
            hit.score = float(hit.score)
        return ranked

    def prepare_query(self, query: str) -> tuple[str, list[Notice]]:
        """Strip the question, refuse an empty one, cut an over-long one (with notices)."""
        query = (query or "").strip()
        if not query:
            raise EmptyQueryError()
        notices: list[Notice] = []
        limit = self.settings.retrieval.max_query_chars
        if len(query) > limit:
            notices.append(
                Notice(
                    "query_truncated",
                    en=f"the question has {len(query):,} characters; only the first {limit:,} are used",
                    ja=f"質問が長すぎるため（{len(query):,} 文字）、先頭の {limit:,} 文字だけを使いました。",
                )
            )
            query = query[:limit]
        if self.embedding is not None:
            tokens = self.embedding.model.query_token_count(query)
            max_tokens = self.embedding.model.max_length
            if tokens > max_tokens:
                notices.append(
                    Notice(
                        "query_tokens_truncated",
                        en=f"the question is {tokens} tokens; the embedding model reads {max_tokens}",
                        ja=f"質問が {tokens} トークンあるため、密ベクトル検索では先頭の {max_tokens} "
                        "トークンだけを使いました。",
                    )
                )
        return query, notices

    def effective_mode(self, requested: ModeSetting, notices: list[Notice]) -> RetrieverMode:
        """The mode a search will use; a stand-in for an unavailable one adds a notice."""
        if requested == "auto":
            return self.auto_mode
        if requested in self.modes:
            return requested
        stand_in = next(m for m in FALLBACKS[requested] if m in self.modes)
        reason = self._why_unavailable(requested)
        notices.append(
            Notice(
                "retriever_fallback",
                en=f"retriever {requested!r} unavailable ({reason.en if reason else ''}); used {stand_in!r}",
                ja=f"検索方式「{requested}」が使えないため「{stand_in}」で検索しました。"
                + (reason.ja if reason else ""),
            )
        )
        return stand_in

    def _why_unavailable(self, mode: RetrieverMode) -> Notice | None:
        if mode == "hybrid":
            return self.missing.get("bm25") or self.missing.get("dense")
        return self.missing.get(mode)

    @property
    def notices(self) -> list[Notice]:
        """What is missing or degraded, for status displays."""
        notices = list(self.missing.values())
        if self.embedding is not None and self.embedding.fallback_reason:
            notices.append(
                Notice(
                    "embedding_fallback",
                    en=f"using {self.embedding.name} instead of {self.settings.embedding.model}",
                    ja=f"{self.settings.embedding.model} が使えないため、{self.embedding.name} で"
                    "密ベクトル検索をしています（英語向けのモデルのため、日本語の精度は低めです）。"
                    + self.embedding.fallback_reason,
                )
            )
        return notices


def _load_bm25(settings: Settings, passages: PassageStore, missing: dict[str, Notice]) -> BM25Index | None:
    cache_root = settings.resolved_cache_dir
    if len(passages) <= settings.retrieval.bm25_auto_build_limit:
        try:
            return BM25Index.cached(passages, cache_root)
        except DataUnavailableError as exc:  # an unwritable cache: build it in memory instead
            missing["bm25_not_cached"] = Notice("bm25_not_cached", en=exc.en, ja=exc.ja)
            return BM25Index.build(passages, JapaneseTokenizer())
    existing = BM25Index.existing(passages, cache_root)
    if existing is None:
        missing["bm25"] = Notice(
            "bm25_not_built",
            en=f"no BM25 index for {len(passages):,} passages yet: build it with `python -m pipeline.download --bm25`",
            ja=f"{len(passages):,} 件のコーパスの BM25 索引はまだありません。"
            "`python -m pipeline.download --bm25` で作成できます。",
        )
    return existing


def _load_reranker(settings: Settings, missing: dict[str, Notice]) -> SentenceTransformerRerank | None:
    """The cross-encoder of ``rerank.model``; without it, results stay in retrieval order."""
    try:
        folder = fetch_model(settings.rerank.model, settings, allow_download=settings.profile == "jawiki")
        return SentenceTransformerRerank(
            model=str(folder), top_n=settings.rerank.candidates, device=resolve_device(settings.device),
            keep_retrieval_score=True,
        )  # fmt: skip
    except (DataUnavailableError, OSError, ValueError) as exc:
        en, ja = getattr(exc, "en", str(exc)), getattr(exc, "ja", str(exc))
        logger.warning("reranker unavailable: %s", en)
        missing["reranker_unavailable"] = Notice(
            "reranker_unavailable",
            en=f"reranking is on but {settings.rerank.model} cannot be loaded: {en}",
            ja=f"リランキングのモデル {settings.rerank.model} を読み込めないため、検索順のまま表示します。{ja}",
        )
        return None


def _load_dense(
    settings: Settings, passages: PassageStore, missing: dict[str, Notice], progress: Progress | None = None
) -> tuple[LoadedEmbedding | None, VectorStoreIndex | None]:
    # The prebuilt index only works with the model it was built with: no stand-in model.
    prebuilt = bool(settings.index.repo)
    try:
        embedding = load_embedding(settings, allow_download=settings.profile == "jawiki", allow_fallback=not prebuilt)
        searcher, fallbacks = open_searcher(settings, passages, embedding, progress)
    except DataUnavailableError as exc:
        logger.warning("dense retrieval unavailable: %s", exc.en)
        missing["dense"] = Notice("dense_unavailable", en=exc.en, ja=exc.ja)
        return None, None
    for notice in fallbacks:
        missing[notice.code] = notice
    store = PassageVectorStore.from_searcher(searcher, passages, nprobe=settings.index.nprobe)
    return embedding, VectorStoreIndex.from_vector_store(store, embed_model=embedding.model)
