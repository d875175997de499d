"""Loading the retrieval service's parts: corpus, BM25, dense index with its query
model, and the optional reranker. Only a missing corpus is fatal; any other part that
cannot load is left out with a notice that says why.

Dense retrieval can load in a background thread (the app): BM25 answers meanwhile, and
the service's ``missing["dense"]`` notice reports the progress until it is ready. It is
built with the bundled English model only when someone asks for dense or hybrid search
(the settings, or later a request): for Japanese, ``auto`` would not use it.

A new service for changed settings takes over every part of the service it replaces
that those settings do not touch (``reuse``): a new ``index.backend`` reloads the
vectors only, a new LLM setting nothing here (:func:`reusable_parts`).
"""

from __future__ import annotations

import logging
import threading
import time

from pipeline.assets.hub import fetch_model
from pipeline.core import timing
from pipeline.core.errors import DataUnavailableError
from pipeline.core.gpu import ProductGpuUse, release_gpu_memory, resolve_device
from pipeline.core.schema import Notice
from pipeline.retrieval.bm25 import BM25Index
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.notices import dense_not_requested
from pipeline.retrieval.service import RetrievalService
from pipeline.settings.model import Settings
from pipeline.text.terms import SearchTerms

logger = logging.getLogger(__name__)

#: The parts of a retrieval service, in the order they depend on each other.
PARTS = ("corpus", "bm25", "embedding", "vectors", "reranker")
#: Which ``missing`` notices belong to which part (the rest are dense retrieval's).
_PART_NOTICES = {"bm25": ("bm25", "bm25_not_cached"), "reranker": ("reranker_unavailable",)}


def _part_keys(settings: Settings) -> dict[str, str]:
    """What each part is loaded from; a part whose key is unchanged can be taken over.
    Each key holds the keys of the parts it sits on (BM25 on the corpus, the vectors on
    the corpus and the embedding model)."""
    where = f"{settings.cache_dir}|{settings.hub_mirror}|{settings.profile}"
    corpus = f"{where}|{settings.corpus.model_dump_json()}"
    embedding = f"{where}|{settings.device}|{settings.index.repo}|{settings.embedding.model_dump_json()}"
    recorded = settings.index.backend == "exact-int8" and resolve_device(settings.device).startswith("cuda")
    inert = {"nprobe"} if recorded else {"nprobe", "scan_graphs", "encode_and_scan"}  # the int8 scan on a GPU only
    index = settings.index.model_dump_json(exclude=inert)
    return {
        "corpus": corpus,
        "bm25": f"{corpus}|{settings.retrieval.bm25_auto_build_limit}",
        "embedding": embedding,
        "vectors": f"{corpus}|{embedding}|{index}",
        "reranker": f"{where}|{settings.device}|{settings.rerank.model_dump_json()}",
    }


def touches_retrieval(before: Settings, after: Settings) -> bool:
    """Whether new settings load any part of retrieval from somewhere else."""
    return _part_keys(before) != _part_keys(after)


def reusable_parts(service: RetrievalService, settings: Settings) -> set[str]:
    """The parts of ``service`` that new ``settings`` would load the same: loaded (not
    still loading), and loaded from what the settings name."""
    before, after = _part_keys(service.settings), _part_keys(settings)
    present = {
        "corpus": True,
        "bm25": service.bm25 is not None,
        "embedding": service.embedding is not None,
        "vectors": service.vector_index is not None,
        "reranker": service.reranker is not None,
    }
    if not settings.rerank.enabled:
        present["reranker"] = False
    return {part for part in PARTS if present[part] and before[part] == after[part]}


def load_retrieval(
    settings: Settings,
    passages: PassageStore | None = None,
    *,
    bm25: bool = True,
    dense: bool = True,
    dense_in_background: bool = False,
    reuse: RetrievalService | None = None,
) -> RetrievalService:
    """Load what the settings ask for (the configured corpus unless ``passages`` is
    given; ``bm25``/``dense`` False skip a component), taking over the parts of
    ``reuse`` that the settings do not change.

    With ``dense_in_background`` (the app), dense retrieval loads in a thread and BM25
    answers at once; nothing waits for it."""
    asked = settings.retrieval.mode in ("dense", "hybrid") or not bm25  # dense is all there would be
    kept = reusable_parts(reuse, settings) if reuse is not None else set()
    missing: dict[str, Notice] = {}
    if reuse is not None:
        for part in kept:
            names = (
                _PART_NOTICES.get(part, ())
                if part != "vectors"
                else ([k for k in reuse.missing if all(k not in codes for codes in _PART_NOTICES.values())])
            )
            missing.update({name: reuse.missing[name] for name in names if name in reuse.missing})
        missing.pop("dense", None)
    with timing.collect() as load_timings:
        with timing.step("corpus"):
            if passages is None:
                passages = reuse.passages if "corpus" in kept else PassageStore.from_settings(settings)
        with timing.step("bm25"):
            if "bm25" in kept and bm25:
                bm25_index = reuse.bm25
            else:
                bm25_index = _load_bm25(settings, passages, missing) if bm25 else None
        background = dense and dense_in_background and bm25_index is not None and "vectors" not in kept
        # A kept embedding model serves a dense index loaded now or in the background.
        embedding = reuse.embedding if dense and "embedding" in kept else None
        encoder_gib = reuse.gpu_use.encoder_gib if embedding is not None else 0.0
        vector_index, gpu_use = None, ProductGpuUse(encoder_gib, 0.0, measured=not dense)
        if dense and "vectors" in kept:
            vector_index, gpu_use = reuse.vector_index, reuse.gpu_use
        elif dense and not background:
            from pipeline.retrieval.dense.loading import load_dense

            with timing.step("dense"):
                embedding, vector_index, gpu_use = load_dense(
                    settings, passages, missing, allow_fallback=asked, embedding=embedding, encoder_gib=encoder_gib
                )
        reranker = None
        if "reranker" in kept:
            reranker = reuse.reranker
        elif settings.rerank.enabled:
            from pipeline.retrieval.dense.loading import load_reranker

            with timing.step("reranker"):
                reranker = load_reranker(settings, missing)
    if bm25_index is None and vector_index is None:
        reasons = " / ".join(n.en for n in missing.values()) or "none requested"
        raise DataUnavailableError(
            en=f"no retriever can run: {reasons}",
            ja="検索方式がひとつも使えません。\n" + "\n".join(n.ja for n in missing.values()),
        )
    service = RetrievalService(settings, passages, bm25_index, vector_index, embedding, missing, reranker)
    service.gpu_use = gpu_use
    service.load_timings = {step: round(ms / 1000.0, 2) for step, ms in load_timings.items()}
    present = {
        "corpus": True,
        "bm25": bm25_index,
        "embedding": embedding,
        "vectors": vector_index,
        "reranker": reranker,
    }
    service.loaded = {part for part, got in present.items() if got is not None and part not in kept}
    if dense:
        service.dense_on_request = lambda: start_dense_loading(service, allow_fallback=True)
    if background:
        stand_in_possible = settings.embedding.allow_fallback and not settings.index.repo
        absent = _model_absent(settings) if stand_in_possible and not asked else None
        if absent is None:
            start_dense_loading(service, allow_fallback=asked)
        else:  # nothing useful to load: no heavy imports, no stand-in index built for nothing
            service.missing["dense"] = dense_not_requested(settings, absent)
    logger.info("retrieval ready: %d passages, modes %s, load %s", len(passages), service.modes, service.load_timings)
    return service


def start_dense_loading(service: RetrievalService, *, allow_fallback: bool) -> None:
    """Load dense retrieval in a thread (once at a time); its progress is the service's
    ``missing["dense"]`` notice until it is ready."""
    with service.lock:
        if service.dense_loading or service.closed:
            return
        service.dense_loading = True
        service.missing["dense"] = _loading_notice()
    threading.Thread(target=_load_dense_later, args=(service, allow_fallback), name="dense-loader", daemon=True).start()


def _model_absent(settings: Settings) -> str | None:
    """Why the configured embedding model is not on this machine (None when it is), asked
    of the hub cache and mirror only: a cheap check that imports no model code."""
    try:
        fetch_model(settings.embedding.model, settings, allow_download=False)
    except DataUnavailableError as exc:
        return exc.en
    return None


def _loading_notice(done: int | None = None, total: int | None = None) -> Notice:
    progress_en = f" ({done:,}/{total:,} passages embedded)" if total else ""
    progress_ja = f"（{done:,} / {total:,} パッセージ）" if total else ""
    return Notice(
        code="dense_loading",
        en=f"the dense index is being prepared{progress_en}; BM25 answers meanwhile",
        ja=f"密ベクトル検索の準備中です{progress_ja}。それまでは BM25 で検索します。",
    )


class _Replaced(Exception):
    """The service a dense index was being built for was closed: stop building."""


def _load_dense_later(service: RetrievalService, allow_fallback: bool) -> None:
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if service.closed:  # replaced or shut down: its index would be built for nobody
            raise _Replaced()
        service.missing["dense"] = _loading_notice(done, total)

    missing: dict[str, Notice] = {}
    try:
        from pipeline.retrieval.dense.loading import load_dense

        embedding, vector_index, gpu_use = load_dense(
            service.settings,
            service.passages,
            missing,
            progress,
            allow_fallback=allow_fallback,
            embedding=service.embedding,
            encoder_gib=service.gpu_use.encoder_gib,
        )
    except _Replaced:
        logger.info("dense retrieval loading stopped: its service was closed")
        with service.lock:
            service.dense_loading = False
        return
    except Exception as exc:  # a thread has nobody to raise to: report it where the UI looks
        logger.exception("dense retrieval failed to load")
        missing["dense"] = Notice(
            code="dense_unavailable",
            en=f"dense retrieval failed: {exc}",
            ja=f"密ベクトル検索を準備できませんでした（{exc}）。BM25 で検索します。",
        )
        embedding, vector_index, gpu_use = None, None, ProductGpuUse(0.0, 0.0, measured=True)
    with service.lock:
        if service.closed:  # replaced while this loaded: nobody will search it
            service.dense_loading = False
            closed = True
        else:
            closed = False
            service.embedding, service.vector_index, service.gpu_use = embedding, vector_index, gpu_use
            service.loaded.update(part for part, got in (("embedding", embedding), ("vectors", vector_index)) if got)
    if closed:
        if vector_index is not None:
            vector_index.vector_store.client.close()
        release_gpu_memory()
        return
    with service.lock:
        service.missing.pop("dense", None)
        service.missing.update(missing)
        service.load_timings["dense"] = round(time.perf_counter() - started, 2)
        service.dense_loading = False
    logger.info("dense retrieval loaded after %.1fs; modes %s", time.perf_counter() - started, service.modes)


def _load_bm25(settings: Settings, passages: PassageStore, missing: dict[str, Notice]) -> BM25Index | None:
    cache_root = settings.resolved_cache_dir
    if len(passages) <= settings.retrieval.bm25_auto_build_limit:
        try:
            return BM25Index.cached(passages, cache_root)
        except DataUnavailableError as exc:  # an unwritable cache: build it in memory instead
            missing["bm25_not_cached"] = Notice(code="bm25_not_cached", en=exc.en, ja=exc.ja)
            return BM25Index.build(passages, SearchTerms())
    existing = BM25Index.existing(passages, cache_root)
    if existing is None:
        missing["bm25"] = Notice(
            code="bm25_not_built",
            en=f"no BM25 index for {len(passages):,} passages yet: build it with `python -m pipeline.download --bm25`",
            ja=f"{len(passages):,} 件のコーパスの BM25 索引はまだありません。"
            "`python -m pipeline.download --bm25` で作成できます。",
        )
    return existing
