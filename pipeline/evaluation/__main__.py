"""Retrieval and answer evaluation on SQuAD-format question sets (JSQuAD).

    python -m pipeline.evaluation --qa PATH [--corpus PATH ...] --retriever {auto,bm25,dense,hybrid}
                            [--top-k 10] [--max-questions N] [--json]
    python -m pipeline.evaluation --answers --qa PATH [--corpus PATH ...] [--retriever auto]
                            [--llm-url URL] [--llm-model NAME] [--max-questions N]
                            [--concurrency N] [--output results.jsonl] [--json]

The corpus is every paragraph of the ``--qa`` file plus every paragraph of each
``--corpus`` file (distractors; their questions are ignored), one passage per paragraph.
A question's gold passage is its own paragraph. Dense retrieval uses the configured
embedding model, or the bundled all-MiniLM-L6-v2 when that is not available locally.
With ``--json`` the last stdout line is one JSON object with the keys ``retriever``,
``questions``, ``passages``, ``recall@1``, ``recall@5``, ``recall@10``, ``mrr@10``,
``seconds`` (plus ``embedding_model`` and ``top_k``). Exit code 2: a missing or
malformed file; 1: the retriever cannot run.

``--answers`` asks the product each question over the same corpus (through ``--llm-url``
as ``pipeline.ask`` does, else the configured LLM backend) and scores the answers
(:mod:`pipeline.evaluation.answers`): per question as JSONL in ``--output`` (a rerun with
the same file resumes), and with ``--json`` a last line with ``questions``,
``exact_match``, ``f1``, ``answer_contains``, ``citation_accuracy``, ``support``,
``search_only``, ``failed``, ``ttft_p50_ms``, ``tokens_per_s_p50`` and what was run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.core.errors import RagError, SettingsError
from pipeline.evaluation.answers import evaluate_answers, summarize, summary_table
from pipeline.evaluation.retrieval import evaluate
from pipeline.evaluation.squad import Question, SquadFormatError, read_squad
from pipeline.generation.prompt_formats import resolve_prompt_format
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.loading import load_retrieval
from pipeline.serving.cli import add_llm_options, llm_overrides, wait_for_engine
from pipeline.serving.runtime import RagRuntime, closed_on_signals
from pipeline.settings.model import RETRIEVER_NAMES
from pipeline.settings.sources import load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.evaluation",
        description="Recall@1/5/10 and MRR@10 of a retriever, or (--answers) the quality of the product's "
        "answers, on a SQuAD-format question set.",
    )
    parser.add_argument("--qa", type=Path, required=True, help="questions and their paragraphs (JSQuAD JSON)")
    parser.add_argument("--corpus", type=Path, action="append", default=[], help="extra paragraphs (distractors)")
    parser.add_argument(
        "--retriever",
        choices=["auto", *RETRIEVER_NAMES],
        help="auto: what the app uses by default (required without --answers)",
    )
    parser.add_argument("--top-k", type=int, default=10, help="passages retrieved per question")
    parser.add_argument("--max-questions", type=int, default=None, help="only the first N questions")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    answers = parser.add_argument_group("answer evaluation")
    answers.add_argument("--answers", action="store_true", help="score the answers, not the retrieval")
    add_llm_options(answers)
    answers.add_argument("--concurrency", type=int, default=1, help="questions asked at once")
    answers.add_argument("--output", type=Path, help="per-question results (JSONL); a rerun resumes")
    return parser


def evaluate_answer_quality(args: argparse.Namespace, corpus_passages: list[dict], questions: list[Question]) -> int:
    retriever = args.retriever or "auto"
    settings = load_settings(overrides={"index": {"repo": ""}, "retrieval": {"mode": retriever}, **llm_overrides(args)})
    passages = PassageStore.from_records(corpus_passages, name=args.qa.name)
    with closed_on_signals(RagRuntime(settings, passages=passages)) as runtime:
        wait_for_engine(runtime)
        rag = runtime.service
        results = evaluate_answers(rag, questions, args.output, args.concurrency)
    summary = summarize(
        results,
        {
            "model": settings.llm.model if rag.backend.generates else None,
            "prompt_format": resolve_prompt_format(settings) if rag.backend.generates else None,
            "llm_backend": rag.backend.kind,
            "retriever": rag.retrieval.auto_mode if retriever == "auto" else retriever,
        },
    )
    print(summary_table(summary))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.concurrency < 1 or (args.max_questions is not None and args.max_questions < 1):
        print("error: --top-k, --concurrency and --max-questions must be positive", file=sys.stderr)
        return 2
    if not args.answers and args.retriever is None:
        parser.error("--retriever is required (or --answers)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        corpus = read_squad([args.qa, *args.corpus], [True] + [False] * len(args.corpus))
    except SquadFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    questions = corpus.questions[: args.max_questions]
    if args.answers:
        try:
            return evaluate_answer_quality(args, corpus.passages, questions)
        except RagError as exc:
            print(f"error: {exc.en}", file=sys.stderr)
            return 2 if isinstance(exc, SettingsError) else 1
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
