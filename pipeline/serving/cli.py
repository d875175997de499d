"""What the command-line tools (``pipeline.ask``, ``pipeline.eval --answers``) share: the
options that point them at an LLM, and waiting for the local engine to start."""

from __future__ import annotations

import argparse
import sys

from pipeline.serving.local import LocalRag


def add_llm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--llm-model", help="model name served at that URL")


def llm_overrides(args: argparse.Namespace) -> dict:
    """Settings overrides for ``--llm-url`` (the remote backend) and ``--llm-model``."""
    llm: dict = {}
    if args.llm_url:
        llm.update(backend="remote", base_url=args.llm_url)
    if args.llm_model:
        llm["model"] = args.llm_model
    return {"llm": llm} if llm else {}


def wait_for_engine(rag: LocalRag) -> None:
    """With the local backend, wait for `vllm serve` (its log on stderr); if it does not
    start, say so and go on: answers are then search-only, with the reason."""
    supervisor = rag.backend.supervisor
    if supervisor is None:
        return
    status = supervisor.wait_ready(rag.settings.llm.startup_timeout_s, lambda line: print(line, file=sys.stderr))
    if status.state != "ready":
        print(f"warning: {status.en}", file=sys.stderr)
