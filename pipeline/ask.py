"""Ask one question from the command line.

    python -m pipeline.ask "質問" [--top-k K] [--retriever bm25|dense|hybrid|auto]
                                  [--llm-url URL] [--llm-model NAME] [--json]

Prints the answer as it streams, then the numbered sources. ``--llm-url`` selects the
remote backend at that OpenAI-compatible base URL (ending in /v1). Without any LLM the
answer is the search results (mode ``search-only``, exit 0). With ``--json`` the last
stdout line is one JSON object: question, answer, sources [{n, title, section, url,
score, text, ...}], timings, mode, notices. Exit 2: empty question or invalid options.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.core.errors import EmptyQueryError, RagError, SettingsError
from pipeline.core.schema import Answer
from pipeline.serving.cli import add_llm_options, argument_text, llm_overrides, wait_for_engine
from pipeline.serving.runtime import RagRuntime, closed_on_signals
from pipeline.settings.model import RETRIEVER_NAMES
from pipeline.settings.sources import load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.ask", description="Answer a question with cited passages."
    )
    parser.add_argument("question")
    parser.add_argument("--top-k", type=int, help="passages to retrieve (settings: retrieval.top_k)")
    parser.add_argument("--retriever", choices=["auto", *RETRIEVER_NAMES])
    add_llm_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    overrides: dict = llm_overrides(args)
    if args.top_k is not None:
        overrides.setdefault("retrieval", {})["top_k"] = args.top_k
    if args.retriever:
        overrides.setdefault("retrieval", {})["mode"] = args.retriever
    return overrides


def print_sources(answer: Answer) -> None:
    print("\n\n出典:")
    for source in answer.sources:
        heading = source.title + (f" ＞ {source.section}" if source.section else "")
        print(f"[{source.number}] {heading}（スコア {source.score:.3f}）\n    {source.url}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    question = argument_text(args.question, "the question")
    if not question.strip():
        print("error: the question is empty (質問が空です)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(overrides=_overrides(args))
        with closed_on_signals(RagRuntime(settings)) as runtime:
            wait_for_engine(runtime)
            stream = runtime.service.answer(question)
            for chunk in stream:
                print(chunk, end="", flush=True)
            answer = stream.answer
            print_sources(answer)
            for notice in answer.notices:
                print(f"注意: {notice.ja}", file=sys.stderr)
            if args.json:
                print(answer.model_dump_json(exclude={"prompt"}))
    except EmptyQueryError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 2
    except RagError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 2 if isinstance(exc, SettingsError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
