"""The ``install`` stage: the built BM25 index where the product looks for it.

The product keeps BM25 indexes in its cache (``RAG_CACHE_DIR``), keyed by the corpus's
fingerprint, the terms version and bm25s's version
(:func:`pipeline.retrieval.bm25.cache_folder`), and loads one from there as it is
(:meth:`~pipeline.retrieval.bm25.BM25Index.existing`, or ``cached`` for corpora it
would build itself). This stage opens the built corpus exactly as the product will
(:meth:`PassageStore.from_settings` with the hub mirror set to the build folder, which
also prepares the ``datasets`` cache the product then reuses) and links the index files
into that folder (copies them across file systems).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.build.files import link_or_copy, staged
from pipeline.build.layout import BuildLayout
from pipeline.core.errors import DataUnavailableError
from pipeline.retrieval.bm25 import BM25Index, cache_folder
from pipeline.retrieval.corpus import PassageStore, read_passages
from pipeline.settings.model import CorpusSettings, Settings

logger = logging.getLogger("pipeline.build")


def product_settings(layout: BuildLayout, settings: Settings) -> Settings:
    """``settings`` pointed at the built corpus, as the product is to be configured."""
    corpus = CorpusSettings(repo=layout.corpus_repo, config=layout.config, split="train")
    return settings.model_copy(update={"hub_mirror": layout.out, "corpus": corpus})


def _built_ends(layout: BuildLayout) -> tuple[int, list[dict]]:
    """How many passages the build wrote, and its first and last."""
    shards = layout.corpus_shards()
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in shards)
    first, last = read_passages(shards[0]), read_passages(shards[-1])
    return rows, [first.slice(0, 1).to_pylist()[0], last.slice(last.num_rows - 1).to_pylist()[0]]


def install_bm25(layout: BuildLayout, settings: Settings) -> dict:
    """Link the index into the product's cache; where it went."""
    settings = product_settings(layout, settings)
    passages = PassageStore.from_settings(settings)
    rows, ends = _built_ends(layout)
    if len(passages) != rows or [passages.table.slice(row, 1).to_pylist()[0] for row in (0, rows - 1)] != ends:
        stale = Path(passages.files[0]).parent if passages.files else settings.resolved_cache_dir / "datasets"
        raise DataUnavailableError(
            en=f"the product reads another corpus than the one built under the config {layout.config} "
            f"({len(passages):,} passages, not {rows:,}). Delete {stale} and run --stages install again",
            ja=f"製品が読むコーパスが、構成名 {layout.config} で作ったものと一致しません。"
            f"{stale} を削除して、--stages install をもう一度実行してください。",
        )
    target = cache_folder(passages, settings.resolved_cache_dir)
    with staged(target) as staging:
        shutil.copytree(layout.bm25_dir, staging, copy_function=link_or_copy)
    if BM25Index.existing(passages, settings.resolved_cache_dir) is None:  # what the product will do
        raise RuntimeError(f"the BM25 index installed at {target} does not load")
    logger.info("install: BM25 index of %s passages in %s", f"{len(passages):,}", target)
    return {"cache_folder": str(target), "passages": len(passages), "corpus_fingerprint": passages.fingerprint}
