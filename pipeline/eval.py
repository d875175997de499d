"""Retrieval evaluation on SQuAD-format question sets (JSQuAD).

    python -m pipeline.eval --qa PATH [--corpus PATH ...] --retriever {bm25,dense,hybrid}
                            [--top-k 10] [--max-questions N] [--json]

The corpus is every paragraph of the ``--qa`` file plus every paragraph of each
``--corpus`` file (distractors; their questions are ignored), one passage per paragraph.
A question's gold passage is its own paragraph. Dense retrieval uses the configured
embedding model, or the bundled all-MiniLM-L6-v2 when that is not available locally.
With ``--json`` the last stdout line is one JSON object with the keys ``retriever``,
``questions``, ``passages``, ``recall@1``, ``recall@5``, ``recall@10``, ``mrr@10``,
``seconds`` (plus ``embedding_model`` and ``top_k``). Exit code 2: a missing or
malformed file; 1: the retriever cannot run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.config import load_settings
from pipeline.corpus import PassageStore
from pipeline.errors import RagError
from pipeline.retrieval import RetrievalService
from pipeline.squad import Question, SquadFormatError, read_squad

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
    service: RetrievalService, questions: list[Question], mode: str, top_k: int, progress: bool = True
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.eval",
        description="Recall@1/5/10 and MRR@10 of a retriever on a SQuAD-format question set.",
    )
    parser.add_argument("--qa", type=Path, required=True, help="questions and their paragraphs (JSQuAD JSON)")
    parser.add_argument("--corpus", type=Path, action="append", default=[], help="extra paragraphs (distractors)")
    parser.add_argument("--retriever", choices=["bm25", "dense", "hybrid"], required=True)
    parser.add_argument("--top-k", type=int, default=10, help="passages retrieved per question")
    parser.add_argument("--max-questions", type=int, default=None, help="only the first N questions")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.top_k < 1 or (args.max_questions is not None and args.max_questions < 1):
        print("error: --top-k and --max-questions must be positive", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        corpus = read_squad([args.qa, *args.corpus], [True] + [False] * len(args.corpus))
    except SquadFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    questions = corpus.questions[: args.max_questions]
    try:
        settings = load_settings(overrides={"index": {"repo": ""}})
        passages = PassageStore.from_records(corpus.passages, name=args.qa.name)
        service = RetrievalService.load(
            settings, passages, bm25=args.retriever != "dense", dense=args.retriever != "bm25"
        )
        report = evaluate(service, questions, args.retriever, args.top_k)
    except RagError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 1
    print(report.table())
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
