"""The ``embed`` stage: one ``.npz`` of passage vectors per corpus shard.

The text embedded is what the product embeds when it indexes a corpus itself
(:meth:`~pipeline.retrieval.corpus.PassageStore.iter_documents`: title, a line break,
the text) behind the passage prefix (``passage: `` for E5), truncated to the model's
``max_length`` tokens. Vectors are unit length, fp16, key ``embs``, file ``<shard>.npz``:
the layout of ``hotchpotch/wikipedia-passages-jawiki-embeddings`` that
:func:`pipeline.retrieval.dense.vector_files.embedding_files` reads in numeric order.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.build.encode import PassageEncoder
from pipeline.build.files import remove_leftovers, require_params, staged
from pipeline.build.layout import BuildLayout
from pipeline.build.progress import Progress
from pipeline.build.runner import Runner
from pipeline.retrieval.corpus import PassageStore, read_passages
from pipeline.retrieval.dense.vector_files import ARRAY_KEY, npz_shape

logger = logging.getLogger("pipeline.build")


class ShardEmbedder:
    """Embeds corpus shards with one encoder: a Ray Data actor, or one per GPU process."""

    def __init__(
        self,
        *,
        folder: str,
        prefix: str,
        max_length: int,
        batch_tokens: int | None,
        compile: bool,
        device: str | None = None,
    ) -> None:
        if device is None:  # a Ray actor: the GPU Ray gave it, if any
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.prefix = prefix
        self.encoder = PassageEncoder.from_folder(Path(folder), device, max_length, batch_tokens, compile)

    def __call__(self, item: dict) -> dict:
        store = PassageStore(read_passages(Path(item["source"])), item["source"])
        texts = [self.prefix + document for batch in store.iter_documents() for document in batch]
        vectors = self.encoder.encode(texts)
        buffer = io.BytesIO()
        np.savez(buffer, **{ARRAY_KEY: vectors})
        with staged(Path(item["target"])) as staging:
            staging.write_bytes(buffer.getvalue())
        return {"shard": item["shard"], "passages": len(texts)}


def embed(layout: BuildLayout, runner: Runner, options: dict, limit: int | None) -> dict:
    """Every corpus shard without its vectors embedded; ``options`` are the
    :class:`ShardEmbedder`'s. Returns the stage's record."""
    folder = layout.out / layout.index_repo / layout.embeddings_dir
    work = layout.work_dir / "embed"
    require_params(work, {"model": layout.model_name, "prefix": options["prefix"], "max_length": options["max_length"]})
    remove_leftovers(folder)
    shards = layout.corpus_shards()
    rows = [pq.ParquetFile(path).metadata.num_rows for path in shards]
    progress = Progress("embed", len(shards), "passages", sum(rows), limit=limit)
    items = []
    for number, (path, count) in enumerate(zip(shards, rows, strict=True)):
        target = folder / f"{number}.npz"
        if target.exists() and npz_shape(target)[0][0] == count:
            progress.skip(1, count)
        else:
            items.append({"shard": number, "source": str(path), "target": str(target)})
    for result in runner.map_actors(ShardEmbedder, options, items):
        progress.advance(result["passages"])
    return progress.finish()
