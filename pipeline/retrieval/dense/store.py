"""A read-only LlamaIndex vector store over a vector index whose row i is passage i.

``FaissVectorStore`` stores no text, so ``VectorStoreIndex.from_vector_store`` refuses
it; this store fills every hit from the passage store instead, so the usual LlamaIndex
machinery (retrievers, query and chat engines) works over the prebuilt jawiki index.

    store = PassageVectorStore.from_index(faiss.read_index(path), passages, nprobe=128)
    index = VectorStoreIndex.from_vector_store(store, embed_model=embedding, transformations=[PassagesAsIs()])
    nodes = index.as_retriever(similarity_top_k=5).retrieve("梅雨とは何か")

Scores are similarities, higher is better. For an inner-product index they are the
inner products. For an L2 index over unit vectors (the hub's IVF-PQ index) FAISS
returns squared distances d = |q - p|^2 = 2 - 2 cos(q, p), so the cosine is 1 - d / 2
(approximate for PQ codes, like the distance itself): see ``pipeline/retrieval/dense/searchers.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
from llama_index.core.schema import BaseNode, TransformComponent
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from pydantic import PrivateAttr

from pipeline.core.timing import step
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.question_scan import QuestionScan
from pipeline.retrieval.dense.searchers import FaissSearcher, Searcher
from pipeline.retrieval.nodes import passage_node


class PassagesAsIs(TransformComponent):
    """The index's transformation: none. Passages are never split or re-embedded here (the
    store is read-only). Without an explicit one, LlamaIndex builds its default
    ``SentenceSplitter``, whose tokenizer downloads tiktoken's encoding: an offline GPU
    host could then not load dense retrieval at all."""

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return nodes


class PassageVectorStore(BasePydanticVectorStore):
    """Nearest passages by a :class:`~pipeline.retrieval.dense.searchers.Searcher` (FAISS or the exact
    GPU scan); ``nprobe`` (IVF indexes) can be overridden per query with
    ``vector_store_kwargs={"nprobe": n}``."""

    stores_text: bool = True
    is_embedding_query: bool = True
    nprobe: int = 128

    _searcher: Searcher = PrivateAttr()
    _passages: PassageStore = PrivateAttr()
    _questions: QuestionScan | None = PrivateAttr(default=None)

    @classmethod
    def from_searcher(
        cls, searcher: Searcher, passages: PassageStore, nprobe: int = 128, questions: QuestionScan | None = None
    ) -> PassageVectorStore:
        """With ``questions``, the store takes questions as text and encodes and scans them
        in one step (:mod:`~pipeline.retrieval.dense.question_scan`): LlamaIndex's
        retriever then embeds nothing itself, and searches for the query string (a
        ``QueryBundle``'s ``custom_embedding_strs``, which nothing here sets, are not
        used)."""
        if searcher.ntotal != len(passages):
            raise ValueError(f"the index has {searcher.ntotal} vectors but the corpus has {len(passages)} passages")
        store = cls(nprobe=nprobe, is_embedding_query=questions is None)
        store._searcher = searcher
        store._passages = passages
        store._questions = questions
        return store

    @classmethod
    def from_index(cls, index: faiss.Index, passages: PassageStore, nprobe: int = 128) -> PassageVectorStore:
        return cls.from_searcher(FaissSearcher(index, nprobe), passages, nprobe)

    @property
    def client(self) -> Searcher:
        return self._searcher

    @property
    def is_ivf(self) -> bool:
        return self._searcher.is_ivf

    def describe(self) -> str:
        """The search as the status shows it: the searcher, and whether questions reach it
        through the one step of E5 and the scan (``index.encode_and_scan``), which the
        setting asks for but only a GPU with E5 as CUDA graphs runs."""
        described = self._searcher.describe()
        return f"{described}, E5 and the scan in one step" if self._questions is not None else described

    def add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        raise NotImplementedError("PassageVectorStore is read-only: its rows are the corpus rows")

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        raise NotImplementedError("PassageVectorStore is read-only: its rows are the corpus rows")

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """:meth:`query` off the event loop: it waits for the GPU (and, taking text, for
        E5 too, which the embedding model's own async path runs in a thread)."""
        return await asyncio.to_thread(self.query, query, **kwargs)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        k = min(query.similarity_top_k, self._searcher.ntotal)
        if query.query_embedding is not None:
            vector = np.asarray([query.query_embedding], dtype=np.float32)
            with step("search"):
                similarities, rows = self._searcher.search(vector, k, nprobe=kwargs.get("nprobe", self.nprobe))
            similarities, rows = similarities[0], rows[0]
        elif self._questions is not None and query.query_str is not None:
            similarities, rows = self._questions.search(query.query_str, k)  # times its own steps
        else:
            raise ValueError("PassageVectorStore needs a query embedding")
        found = rows >= 0  # IVF returns -1 when the probed lists hold fewer than k vectors
        rows, similarities = rows[found], similarities[found]
        passages = self._passages.get_many(rows.tolist())
        return VectorStoreQueryResult(
            nodes=[passage_node(p) for p in passages],
            similarities=[float(s) for s in similarities],
            ids=[str(r) for r in rows.tolist()],
        )
