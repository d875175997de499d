"""Loading the retrieval service's parts: corpus, BM25, dense index with its query
model, and the optional reranker. Only a missing corpus is fatal; any other part that
cannot load is left out with a notice that says why.

Dense retrieval can load in a background thread (the app): BM25 answers meanwhile, and
the service's ``missing["dense"]`` notice reports the progress until it is ready.
"""

from __future__ import annotations

import logging
import threading
import time

from llama_index.core import VectorStoreIndex
from llama_index.core.postprocessor import SentenceTransformerRerank

from pipeline.core import timing
from pipeline.core.errors import DataUnavailableError
from pipeline.core.gpu import ProductGpuUse, allocated_gib, resolve_device
from pipeline.core.hub import fetch_model
from pipeline.core.schema import Notice
from pipeline.core.settings import Settings
from pipeline.retrieval.bm25 import BM25Index
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.embedding import LoadedEmbedding, load_embedding
from pipeline.retrieval.service import RetrievalService
from pipeline.retrieval.vector_search import Progress, open_searcher
from pipeline.retrieval.vector_store import PassagesAsIs, PassageVectorStore
from pipeline.text.tokenizer import JapaneseTokenizer

logger = logging.getLogger(__name__)


def load_retrieval(
    settings: Settings,
    passages: PassageStore | None = None,
    *,
    bm25: bool = True,
    dense: bool = True,
    dense_in_background: float | None = None,
) -> RetrievalService:
    """Load what the settings ask for (the configured corpus unless ``passages`` is
    given; ``bm25``/``dense`` False skip a component).

    With ``dense_in_background`` seconds, dense retrieval loads in a thread, waited for
    that long: a cached index is ready by then, while building one (minutes of
    embedding) goes on behind BM25, which answers meanwhile."""
    with timing.collect() as load_timings:
        with timing.step("corpus"):
            passages = passages if passages is not None else PassageStore.from_settings(settings)
        missing: dict[str, Notice] = {}
        with timing.step("bm25"):
            bm25_index = _load_bm25(settings, passages, missing) if bm25 else None
        background = dense and dense_in_background is not None and bm25_index is not None
        with timing.step("dense"):
            embedding, vector_index, gpu_use = (
                _load_dense(settings, passages, missing)
                if dense and not background
                else (None, None, ProductGpuUse(0.0, 0.0, measured=not dense))
            )
        with timing.step("reranker"):
            reranker = _load_reranker(settings, missing) if settings.rerank.enabled else None
    if bm25_index is None and vector_index is None:
        reasons = " / ".join(n.en for n in missing.values()) or "none requested"
        raise DataUnavailableError(
            en=f"no retriever can run: {reasons}",
            ja="検索方式がひとつも使えません。\n" + "\n".join(n.ja for n in missing.values()),
        )
    service = RetrievalService(settings, passages, bm25_index, vector_index, embedding, missing, reranker)
    service.gpu_use = gpu_use
    service.load_timings = {step: round(ms / 1000.0, 2) for step, ms in load_timings.items()}
    if background:
        service.missing["dense"] = _loading_notice()
        loader = threading.Thread(target=_load_dense_later, args=(service,), name="dense-loader", daemon=True)
        loader.start()
        loader.join(dense_in_background)
    logger.info("retrieval ready: %d passages, modes %s, load %s", len(passages), service.modes, service.load_timings)
    return service


def _loading_notice(done: int | None = None, total: int | None = None) -> Notice:
    progress_en = f" ({done:,}/{total:,} passages embedded)" if total else ""
    progress_ja = f"（{done:,} / {total:,} パッセージ）" if total else ""
    return Notice(
        code="dense_loading",
        en=f"the dense index is being prepared{progress_en}; BM25 answers meanwhile",
        ja=f"密ベクトル検索の準備中です{progress_ja}。それまでは BM25 で検索します。",
    )


def _load_dense_later(service: RetrievalService) -> None:
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        service.missing["dense"] = _loading_notice(done, total)

    missing: dict[str, Notice] = {}
    try:
        embedding, vector_index, service.gpu_use = _load_dense(service.settings, service.passages, missing, progress)
    except Exception as exc:  # a thread has nobody to raise to: report it where the UI looks
        logger.exception("dense retrieval failed to load")
        missing["dense"] = Notice(
            code="dense_unavailable",
            en=f"dense retrieval failed: {exc}",
            ja=f"密ベクトル検索を準備できませんでした（{exc}）。BM25 で検索します。",
        )
        embedding, vector_index = None, None
    service.embedding, service.vector_index = embedding, vector_index
    service.missing.pop("dense", None)
    service.missing.update(missing)
    service.load_timings["dense"] = round(time.perf_counter() - started, 2)
    logger.info("dense retrieval ready after %.1fs; modes %s", time.perf_counter() - started, service.modes)


def _load_bm25(settings: Settings, passages: PassageStore, missing: dict[str, Notice]) -> BM25Index | None:
    cache_root = settings.resolved_cache_dir
    if len(passages) <= settings.retrieval.bm25_auto_build_limit:
        try:
            return BM25Index.cached(passages, cache_root)
        except DataUnavailableError as exc:  # an unwritable cache: build it in memory instead
            missing["bm25_not_cached"] = Notice(code="bm25_not_cached", en=exc.en, ja=exc.ja)
            return BM25Index.build(passages, JapaneseTokenizer())
    existing = BM25Index.existing(passages, cache_root)
    if existing is None:
        missing["bm25"] = Notice(
            code="bm25_not_built",
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
            code="reranker_unavailable",
            en=f"reranking is on but {settings.rerank.model} cannot be loaded: {en}",
            ja=f"リランキングのモデル {settings.rerank.model} を読み込めないため、検索順のまま表示します。{ja}",
        )
        return None


def _load_dense(
    settings: Settings, passages: PassageStore, missing: dict[str, Notice], progress: Progress | None = None
) -> tuple[LoadedEmbedding | None, VectorStoreIndex | None, ProductGpuUse]:
    """The query model and vector index, and the GPU memory each took (measured)."""
    # The prebuilt index only works with the model it was built with: no stand-in model.
    prebuilt = bool(settings.index.repo)
    on_gpu = resolve_device(settings.device).startswith("cuda")
    before = allocated_gib() if on_gpu else 0.0
    try:
        embedding = load_embedding(settings, allow_download=settings.profile == "jawiki", allow_fallback=not prebuilt)
        loaded = allocated_gib() if on_gpu else 0.0
        searcher, fallbacks = open_searcher(settings, passages, embedding, progress)
    except DataUnavailableError as exc:
        logger.warning("dense retrieval unavailable: %s", exc.en)
        missing["dense"] = Notice(code="dense_unavailable", en=exc.en, ja=exc.ja)
        return None, None, ProductGpuUse(0.0, 0.0, measured=True)
    use = ProductGpuUse(loaded - before, (allocated_gib() if on_gpu else 0.0) - loaded, measured=True)
    for notice in fallbacks:
        missing[notice.code] = notice
    store = PassageVectorStore.from_searcher(searcher, passages, nprobe=settings.index.nprobe)
    index = VectorStoreIndex.from_vector_store(store, embed_model=embedding.model, transformations=[PassagesAsIs()])
    return embedding, index, use
