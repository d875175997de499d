"""The vector search behind dense retrieval, as ``index.backend`` asks for it.

- ``faiss-cpu`` / ``faiss-gpu``: the jawiki profile downloads ``index_IVF2048_PQ256.faiss``
  (E5-large passage vectors, row i = passage i) and checks it against the corpus and the
  query model; without a prebuilt file (the demo, evaluation corpora) an exact
  inner-product index is built from the passages with the embedding model and cached.
  ``faiss-gpu`` copies the index to the GPU (needs faiss-gpu).
- ``exact``: the raw passage vectors as one fp16 matrix on the GPU, scanned in full
  (:mod:`pipeline.retrieval.dense.vector_files`, :class:`~pipeline.retrieval.dense.searchers.ExactSearcher`).
- ``exact-int8``: the same vectors as int8 codes on the GPU, half the bytes to scan, the
  best candidates re-scored exactly (:class:`~pipeline.retrieval.dense.searchers.Int8Searcher`);
  with ``index.scan_graphs`` the scan is recorded as CUDA graphs at load.

A backend that cannot run (no GPU, not enough GPU memory, missing or mismatched files)
falls back to ``faiss-cpu`` with a notice that says why; it never stops the app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from pipeline.assets.hub import fetch_file
from pipeline.assets.index_cache import cache_key, cached_dir
from pipeline.core.errors import DataUnavailableError, IndexMismatchError
from pipeline.core.gpu import GIB, release_gpu_memory, resolve_device
from pipeline.core.schema import Notice
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.encoder import LoadedEmbedding
from pipeline.retrieval.dense.searchers import BatchingSearcher, ExactSearcher, FaissSearcher, Int8Searcher, Searcher
from pipeline.retrieval.dense.vector_files import matrix_path
from pipeline.settings.model import Settings

logger = logging.getLogger(__name__)

#: Told (passages done, passages in all) while an index is being built.
Progress = Callable[[int, int], None]

INDEX_FILE_NAME = "index.faiss"
EXACT_SEARCHERS = {"exact": ExactSearcher, "exact-int8": Int8Searcher}


def open_searcher(
    settings: Settings, passages: PassageStore, embedding: LoadedEmbedding, progress: Progress | None = None
) -> tuple[Searcher, list[Notice]]:
    """The configured searcher, or FAISS on the CPU with a notice when it cannot run.
    ``progress(done, total)`` hears about passages embedded while an index is built."""
    notices: list[Notice] = []
    backend = settings.index.backend
    if backend in EXACT_SEARCHERS:
        try:
            return exact_searcher(settings, passages, embedding), notices
        except (DataUnavailableError, RuntimeError) as exc:
            notices.append(_fallback_notice(backend, exc))
        release_gpu_memory()  # what the failed load had allocated
    index = open_dense_index(settings, passages, embedding, progress)
    if backend == "faiss-gpu":
        try:
            gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            return BatchingSearcher(FaissSearcher(gpu_index, settings.index.nprobe, "cuda")), notices
        except (AttributeError, RuntimeError) as exc:  # faiss-cpu has no GPU functions
            notices.append(_fallback_notice("faiss-gpu", exc))
    return FaissSearcher(index, settings.index.nprobe), notices


def exact_searcher(settings: Settings, passages: PassageStore, embedding: LoadedEmbedding) -> Searcher:
    """The full fp16 matrix on the GPU (float32 on the CPU when ``device`` is cpu), or its
    int8 codes, batched."""
    device = resolve_device(settings.device)
    searcher = EXACT_SEARCHERS[settings.index.backend]
    needed = searcher.bytes_needed(len(passages), embedding.model.dimension, device)
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info()
        if needed > free:
            raise DataUnavailableError(
                en=f"exact search needs {needed / GIB:.1f} GiB of GPU memory; "
                f"{free / GIB:.1f} of {total / GIB:.1f} GiB free",
                ja=f"全件探索には GPU メモリが {needed / GIB:.1f} GiB 必要ですが、空きは {free / GIB:.1f} GiB です"
                f"（全体 {total / GIB:.1f} GiB）。vLLM の gpu_memory_utilization を下げてください。",
            )
    path = matrix_path(settings, passages, embedding, allow_download=not settings.demo)
    if searcher is Int8Searcher:  # on the CPU it says that it records nothing
        return BatchingSearcher(Int8Searcher.from_file(path, device, scan_graphs=settings.index.scan_graphs))
    return BatchingSearcher(searcher.from_file(path, device))


def _fallback_notice(backend: str, exc: Exception) -> Notice:
    en = getattr(exc, "en", str(exc))
    ja = getattr(exc, "ja", str(exc))
    logger.warning("vector search backend %s unavailable (%s); using faiss-cpu", backend, en)
    return Notice(
        code="vector_backend_fallback",
        en=f"{backend} search unavailable ({en}); using the FAISS index on the CPU",
        ja=f"ベクトル検索の方式「{backend}」が使えないため、CPU の FAISS 索引で検索しています。{ja}",
    )


def open_dense_index(
    settings: Settings, passages: PassageStore, embedding: LoadedEmbedding, progress: Progress | None = None
) -> faiss.Index:
    if settings.index.repo:
        path = fetch_file(settings.index.repo, settings.index.file, settings)
        return read_checked_index(path, passages, embedding.model.dimension)
    return build_flat_index(passages, embedding, settings.resolved_cache_dir, progress)


def read_checked_index(path: Path, passages: PassageStore, dimension: int) -> faiss.Index:
    """Read a FAISS file and refuse it unless it has one vector of the query model's
    dimension per corpus row."""
    corpus_files = ", ".join(passages.files) or passages.name
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexMismatchError(
            en=f"cannot read the FAISS index {path} (truncated or corrupt?): {exc}. "
            "Delete it and download it again with `python -m pipeline.download`.",
            ja=f"ベクトル索引 {path} を読めません（途中までしかない、または壊れている可能性があります）。"
            "ファイルを削除して `python -m pipeline.download` で取得し直してください。",
        ) from exc
    if index.d != dimension:
        raise IndexMismatchError(
            en=f"the index {path} holds {index.d}-dimensional vectors but the embedding model "
            f"makes {dimension}-dimensional ones: the index was built with another model",
            ja=f"ベクトル索引 {path} の次元は {index.d} ですが、埋め込みモデルの次元は {dimension} です。"
            "索引と同じモデル（E5-large なら 1024 次元）を設定してください。",
        )
    if index.ntotal != len(passages):
        raise IndexMismatchError(
            en=f"the index {path} has {index.ntotal:,} vectors but the corpus {corpus_files} has "
            f"{len(passages):,} passages: they must come from the same corpus version",
            ja=f"ベクトル索引 {path} のベクトル数 {index.ntotal:,} と、コーパス {corpus_files} の"
            f"パッセージ数 {len(passages):,} が一致しません。同じ版のコーパスと索引を使ってください。",
        )
    return index


def build_flat_index(
    passages: PassageStore, embedding: LoadedEmbedding, cache_root: Path, progress: Progress | None = None
) -> faiss.Index:
    """Exact inner-product index of unit passage vectors, cached per corpus and model."""
    key = cache_key(passages.fingerprint, embedding.fingerprint, embedding.model.text_instruction)

    def build(folder: Path) -> None:
        logger.info("embedding %d passages of %s with %s", len(passages), passages.name, embedding.name)
        index = faiss.IndexFlatIP(embedding.model.dimension)
        with tqdm(total=len(passages), desc="passage embeddings", unit="passage") as bar:
            for documents in passages.iter_documents(batch_size=256):
                vectors = embedding.model.get_text_embedding_batch(documents)
                index.add(np.asarray(vectors, dtype=np.float32))
                bar.update(len(documents))
                if progress is not None:
                    progress(index.ntotal, len(passages))
        # Written from Python, so that a full disk is an OSError like any other write.
        (folder / INDEX_FILE_NAME).write_bytes(faiss.serialize_index(index).tobytes())

    folder = cached_dir(cache_root, "dense", key, build)
    return read_checked_index(folder / INDEX_FILE_NAME, passages, embedding.model.dimension)
