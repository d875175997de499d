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
from pathlib import Path

from pipeline.core.errors import RagError
from pipeline.core.settings import RETRIEVER_NAMES
from pipeline.core.settings_files import load_settings
from pipeline.evaluation.retrieval import evaluate
from pipeline.evaluation.squad import SquadFormatError, read_squad
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.loading import load_retrieval


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.eval",
        description="Recall@1/5/10 and MRR@10 of a retriever on a SQuAD-format question set.",
    )
    parser.add_argument("--qa", type=Path, required=True, help="questions and their paragraphs (JSQuAD JSON)")
    parser.add_argument("--corpus", type=Path, action="append", default=[], help="extra paragraphs (distractors)")
    parser.add_argument("--retriever", choices=["auto", *RETRIEVER_NAMES], required=True,
                        help="auto: what the app uses by default")  # fmt: skip
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
        settings = load_settings(overrides={"index": {"repo": ""}, "retrieval": {"mode": args.retriever}})
        passages = PassageStore.from_records(corpus.passages, name=args.qa.name)
        service = load_retrieval(settings, passages, bm25=args.retriever != "dense", dense=args.retriever != "bm25")
        mode = service.auto_mode if args.retriever == "auto" else args.retriever
        report = evaluate(service, questions, mode, args.top_k)
    except RagError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 1
    print(report.table())
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
