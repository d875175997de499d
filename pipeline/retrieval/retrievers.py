"""LlamaIndex retrievers for BM25, for hybrid (BM25 + dense) search, and for reranking
another retriever's candidates.

Dense retrieval needs no class of its own: it is ``VectorStoreIndex.as_retriever`` over
:class:`~pipeline.retrieval.dense.store.PassageVectorStore`.
"""

from __future__ import annotations

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from pipeline.core import timing
from pipeline.retrieval.bm25 import BM25Index
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.nodes import passage_node


class BM25Retriever(BaseRetriever):
    """Top-k passages by Japanese BM25; node ids are corpus rows."""

    def __init__(self, index: BM25Index, passages: PassageStore, similarity_top_k: int = 5) -> None:
        super().__init__()
        self._index = index
        self._passages = passages
        self.similarity_top_k = similarity_top_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        rows, scores = self._index.search(query_bundle.query_str, self.similarity_top_k)
        passages = self._passages.get_many(rows.tolist())
        return [NodeWithScore(node=passage_node(p), score=float(s)) for p, s in zip(passages, scores, strict=True)]


class HybridRetriever(BaseRetriever):
    """Reciprocal-rank fusion (Cormack et al. 2009) of several retrievers.

    Like ``QueryFusionRetriever(mode="reciprocal_rerank", num_queries=1)``, but fused by
    corpus row rather than by node hash, and each passage keeps its rank in every
    retriever (metadata ``rank_<name>``, None where it was not found) so that the UI can
    explain a hybrid score. Score = sum over retrievers of 1 / (rrf_k + rank).
    """

    def __init__(self, retrievers: dict[str, BaseRetriever], similarity_top_k: int = 5, rrf_k: int = 60) -> None:
        super().__init__()
        self._retrievers = retrievers
        self.similarity_top_k = similarity_top_k
        self.rrf_k = rrf_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        fused: dict[str, NodeWithScore] = {}
        ranks: dict[str, dict[str, int]] = {}
        for name, retriever in self._retrievers.items():
            for rank, hit in enumerate(retriever.retrieve(query_bundle), start=1):
                node_id = hit.node.node_id
                entry = fused.setdefault(node_id, NodeWithScore(node=hit.node, score=0.0))
                entry.score += 1.0 / (self.rrf_k + rank)
                ranks.setdefault(node_id, {})[name] = rank
        best = sorted(fused.values(), key=lambda hit: hit.score, reverse=True)[: self.similarity_top_k]
        for hit in best:
            for name in self._retrievers:
                key = f"rank_{name}"
                hit.node.metadata[key] = ranks[hit.node.node_id].get(name)
                hit.node.excluded_llm_metadata_keys.append(key)
                hit.node.excluded_embed_metadata_keys.append(key)
        return best


class RerankedRetriever(BaseRetriever):
    """Another retriever's candidates re-scored by a node postprocessor (the
    cross-encoder), best first, cut to ``similarity_top_k``. The retriever's own score
    stays in metadata (``retrieval_score``), hidden from the LLM."""

    def __init__(self, candidates: BaseRetriever, reranker: BaseNodePostprocessor, similarity_top_k: int) -> None:
        super().__init__()
        self._candidates = candidates
        self._reranker = reranker
        self.similarity_top_k = similarity_top_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._candidates.retrieve(query_bundle)
        with timing.step("rerank"):
            ranked = self._reranker.postprocess_nodes(hits, query_bundle=query_bundle)
        for hit in ranked:
            hit.node.excluded_llm_metadata_keys.append("retrieval_score")
            hit.score = float(hit.score)
        return ranked[: self.similarity_top_k]
