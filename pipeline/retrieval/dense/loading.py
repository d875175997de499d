"""Loading dense retrieval: the query model, the vector search and the LlamaIndex index
over them, and the optional reranker. Imported only when they load (sentence-transformers,
torch and faiss take seconds to import), which the app does in a background thread
while BM25 answers."""

from __future__ import annotations

import logging

from llama_index.core import VectorStoreIndex
from llama_index.core.postprocessor import SentenceTransformerRerank

from pipeline.assets.hub import fetch_model
from pipeline.core.errors import DataUnavailableError
from pipeline.core.gpu import ProductGpuUse, allocated_gib, resolve_device
from pipeline.core.schema import Notice
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.backends import Progress, open_searcher
from pipeline.retrieval.dense.encoder import LoadedEmbedding, load_embedding
from pipeline.retrieval.dense.notices import dense_not_requested
from pipeline.retrieval.dense.question_scan import QuestionScan
from pipeline.retrieval.dense.searchers import Int8Searcher, Searcher
from pipeline.retrieval.dense.store import PassagesAsIs, PassageVectorStore
from pipeline.settings.model import Settings

logger = logging.getLogger(__name__)


def load_dense(
    settings: Settings,
    passages: PassageStore,
    missing: dict[str, Notice],
    progress: Progress | None = None,
    *,
    allow_fallback: bool = True,
    embedding: LoadedEmbedding | None = None,
    encoder_gib: float = 0.0,
) -> tuple[LoadedEmbedding | None, VectorStoreIndex | None, ProductGpuUse]:
    """The query model (``embedding`` when one is already loaded, holding ``encoder_gib``
    of GPU memory) and vector index, and the GPU memory each took (measured).
    ``allow_fallback`` lets the bundled English model stand in for the configured one
    (never for a prebuilt index, which only fits its own model)."""
    allow_fallback = allow_fallback and not settings.index.repo
    on_gpu = resolve_device(settings.device).startswith("cuda")
    before = allocated_gib() if on_gpu else 0.0
    try:
        if embedding is None:
            embedding = load_embedding(settings, allow_download=not settings.demo, allow_fallback=allow_fallback)
        loaded = allocated_gib() if on_gpu else 0.0
        searcher, fallbacks = open_searcher(settings, passages, embedding, progress)
    except DataUnavailableError as exc:
        logger.warning("dense retrieval unavailable: %s", exc.en)
        stand_in_possible = not allow_fallback and settings.embedding.allow_fallback and not settings.index.repo
        missing["dense"] = (
            dense_not_requested(settings, exc.en)
            if stand_in_possible
            else Notice(code="dense_unavailable", en=exc.en, ja=exc.ja)
        )
        return None, None, ProductGpuUse(0.0, 0.0, measured=True)
    use = ProductGpuUse(encoder_gib or loaded - before, (allocated_gib() if on_gpu else 0.0) - loaded, measured=True)
    for notice in fallbacks:
        missing[notice.code] = notice
    questions = question_scan(settings, embedding, searcher)
    store = PassageVectorStore.from_searcher(searcher, passages, nprobe=settings.index.nprobe, questions=questions)
    index = VectorStoreIndex.from_vector_store(store, embed_model=embedding.model, transformations=[PassagesAsIs()])
    return embedding, index, use


def question_scan(settings: Settings, embedding: LoadedEmbedding, searcher: Searcher) -> QuestionScan | None:
    """E5 and the int8 scan in one step (``index.encode_and_scan``), where both run on the
    graph thread: questions through CUDA graphs, and the int8 scan (batched) behind the
    store."""
    if not settings.index.encode_and_scan:
        return None
    encoder = embedding.model.padded_encoder
    scan = getattr(searcher, "inner", None)
    if encoder is None or not encoder.uses_graphs or not isinstance(scan, Int8Searcher):
        logger.info("index.encode_and_scan needs the int8 scan and a query encoder with CUDA graphs; two steps")
        return None
    return QuestionScan(encoder, embedding.model.query_instruction or "", scan)


def load_reranker(settings: Settings, missing: dict[str, Notice]) -> SentenceTransformerRerank | None:
    """The cross-encoder of ``rerank.model``; without it, results stay in retrieval order."""
    try:
        folder = fetch_model(settings.rerank.model, settings, allow_download=not settings.demo)
        return SentenceTransformerRerank(
            model=str(folder),
            top_n=settings.rerank.candidates,
            device=resolve_device(settings.device),
            keep_retrieval_score=True,
        )
    except (DataUnavailableError, OSError, ValueError) as exc:
        en, ja = getattr(exc, "en", str(exc)), getattr(exc, "ja", str(exc))
        logger.warning("reranker unavailable: %s", en)
        missing["reranker_unavailable"] = Notice(
            code="reranker_unavailable",
            en=f"reranking is on but {settings.rerank.model} cannot be loaded: {en}",
            ja=f"リランキングのモデル {settings.rerank.model} を読み込めないため、検索順のまま表示します。{ja}",
        )
        return None
