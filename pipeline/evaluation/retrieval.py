"""Retrieval quality on SQuAD-format question sets: recall@1/5/10 and MRR@10 of the
gold paragraph (a question's own paragraph is its gold passage)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from pipeline.core.schema import RetrieverName
from pipeline.evaluation.squad import Question
from pipeline.retrieval.service import RetrievalService

CUTOFFS = (1, 5, 10)


@dataclass
class EvalReport:
    retriever: str
    questions: int
    passages: int
    hits_at: dict[int, int]
    reciprocal_rank_sum: float
    seconds: float
    embedding_model: str | None
    top_k: int

    def as_dict(self) -> dict:
        n = max(self.questions, 1)
        result: dict = {"retriever": self.retriever, "questions": self.questions, "passages": self.passages}
        result.update({f"recall@{c}": round(self.hits_at[c] / n, 4) for c in CUTOFFS})
        result["mrr@10"] = round(self.reciprocal_rank_sum / n, 4)
        result["seconds"] = round(self.seconds, 2)
        result["embedding_model"] = self.embedding_model
        result["top_k"] = self.top_k
        return result

    def table(self) -> str:
        values = self.as_dict()
        rows = [
            ("retriever", values["retriever"]),
            ("embedding model", values["embedding_model"] or "-"),
            ("questions", f"{values['questions']:,}"),
            ("passages", f"{values['passages']:,}"),
            *((f"recall@{c}", f"{values[f'recall@{c}']:.4f}") for c in CUTOFFS),
            ("MRR@10", f"{values['mrr@10']:.4f}"),
            ("seconds", f"{values['seconds']:.1f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def evaluate(
    service: RetrievalService, questions: list[Question], mode: RetrieverName, top_k: int, progress: bool = True
) -> EvalReport:
    """Rank of each question's gold passage among the retrieved ones."""
    retriever = service.retriever(mode, top_k)
    hits_at = dict.fromkeys(CUTOFFS, 0)
    reciprocal_rank_sum = 0.0
    started = time.perf_counter()
    for question in tqdm(questions, desc=f"eval {mode}", unit="q", disable=not progress, file=sys.stderr):
        rows = [hit.node.metadata["row"] for hit in retriever.retrieve(question.text)]
        if question.gold_row not in rows:
            continue
        rank = rows.index(question.gold_row) + 1
        for cutoff in CUTOFFS:
            hits_at[cutoff] += rank <= cutoff
        reciprocal_rank_sum += 1.0 / rank if rank <= 10 else 0.0
    embedding = service.embedding.name if service.embedding and mode != "bm25" else None
    return EvalReport(
        retriever=mode,
        questions=len(questions),
        passages=len(service.passages),
        hits_at=hits_at,
        reciprocal_rank_sum=reciprocal_rank_sum,
        seconds=time.perf_counter() - started,
        embedding_model=embedding,
        top_k=top_k,
    )
