"""A read-only LlamaIndex vector store over a FAISS index whose row i is passage i.

``FaissVectorStore`` stores no text, so ``VectorStoreIndex.from_vector_store`` refuses
it; this store fills every hit from the passage store instead, so the usual LlamaIndex
machinery (retrievers, query and chat engines) works over the prebuilt jawiki index.

    store = PassageVectorStore.from_index(faiss.read_index(path), passages, nprobe=128)
    index = VectorStoreIndex.from_vector_store(store, embed_model=embedding)
    nodes = index.as_retriever(similarity_top_k=5).retrieve("梅雨とは何か")

Scores are similarities, higher is better. For an inner-product index they are the
inner products. For an L2 index over unit vectors (the hub's IVF-PQ index) FAISS
returns squared distances d = |q - p|^2 = 2 - 2 cos(q, p), so the cosine is 1 - d / 2
(approximate for PQ codes, like the distance itself).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from pydantic import PrivateAttr

from pipeline.corpus import PassageStore
from pipeline.timing import step


class PassageVectorStore(BasePydanticVectorStore):
    """Nearest passages by FAISS; ``nprobe`` (IVF indexes) can be overridden per query
    with ``vector_store_kwargs={"nprobe": n}``."""

    stores_text: bool = True
    is_embedding_query: bool = True
    nprobe: int = 128

    _index: faiss.Index = PrivateAttr()
    _passages: PassageStore = PrivateAttr()

    @classmethod
    def from_index(cls, index: faiss.Index, passages: PassageStore, nprobe: int = 128) -> PassageVectorStore:
        if index.ntotal != len(passages):
            raise ValueError(f"the index has {index.ntotal} vectors but the corpus has {len(passages)} passages")
        store = cls(nprobe=nprobe)
        store._index = index
        store._passages = passages
        return store

    @property
    def client(self) -> faiss.Index:
        return self._index

    @property
    def is_ivf(self) -> bool:
        return faiss.try_extract_index_ivf(self._index) is not None

    def add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        raise NotImplementedError("PassageVectorStore is read-only: its rows are the corpus rows")

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        raise NotImplementedError("PassageVectorStore is read-only: its rows are the corpus rows")

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.query_embedding is None:
            raise ValueError("PassageVectorStore needs a query embedding")
        vector = np.asarray([query.query_embedding], dtype=np.float32)
        k = min(query.similarity_top_k, self._index.ntotal)
        params = None
        if self.is_ivf:
            params = faiss.SearchParametersIVF(nprobe=int(kwargs.get("nprobe", self.nprobe)))
        with step("search"):
            distances, rows = self._index.search(vector, k, params=params)
        found = rows[0] >= 0  # IVF returns -1 when the probed lists hold fewer than k vectors
        rows, distances = rows[0][found], distances[0][found]
        if self._index.metric_type == faiss.METRIC_L2:
            similarities = 1.0 - distances / 2.0
        else:
            similarities = distances
        passages = self._passages.get_many(rows.tolist())
        return VectorStoreQueryResult(
            nodes=[p.to_node() for p in passages],
            similarities=[float(s) for s in similarities],
            ids=[str(r) for r in rows.tolist()],
        )
