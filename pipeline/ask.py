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
import json
import logging
import sys

from pipeline.config import load_settings
from pipeline.engine import Answer, AnswerEngine
from pipeline.errors import EmptyQueryError, RagError
from pipeline.llm import open_backend
from pipeline.retrieval import RetrievalService
from pipeline.supervisor import EngineSupervisor
from pipeline.tokens import load_token_counter


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.ask", description="Answer a question with cited passages."
    )
    parser.add_argument("question")
    parser.add_argument("--top-k", type=int, help="passages to retrieve (settings: retrieval.top_k)")
    parser.add_argument("--retriever", choices=["auto", "bm25", "dense", "hybrid"])
    parser.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--llm-model", help="model name served at that URL")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.top_k is not None:
        overrides.setdefault("retrieval", {})["top_k"] = args.top_k
    if args.retriever:
        overrides.setdefault("retrieval", {})["mode"] = args.retriever
    if args.llm_url:
        overrides.setdefault("llm", {}).update(backend="remote", base_url=args.llm_url)
    if args.llm_model:
        overrides.setdefault("llm", {})["model"] = args.llm_model
    return overrides


def print_sources(answer: Answer) -> None:
    print("\n\n出典:")
    for source in answer.sources:
        heading = source.title + (f" ＞ {source.section}" if source.section else "")
        print(f"[{source.number}] {heading}（スコア {source.score:.3f}）\n    {source.url}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.question.strip():
        print("error: the question is empty (質問が空です)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    supervisor = None
    try:
        settings = load_settings(overrides=_overrides(args))
        retrieval = RetrievalService.load(settings)
        supervisor = EngineSupervisor(settings.resolved_cache_dir / "logs")
        backend = open_backend(settings, supervisor)
        if backend.supervisor is not None:
            status = supervisor.wait_ready(settings.llm.startup_timeout_s, lambda line: print(line, file=sys.stderr))
            if status.state != "ready":
                print(f"warning: {status.en}", file=sys.stderr)
        engine = AnswerEngine(retrieval, backend, load_token_counter(settings), settings)
        answer = engine.answer(args.question)
        for chunk in answer.stream():
            print(chunk, end="", flush=True)
        print_sources(answer)
        for notice in answer.notices:
            print(f"注意: {notice.ja}", file=sys.stderr)
        if args.json:
            print(json.dumps(answer.as_dict(), ensure_ascii=False))
    except EmptyQueryError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 2
    except RagError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 2 if exc.__class__.__name__ == "SettingsError" else 1
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
