"""What the command-line tools (``pipeline.ask``, ``pipeline.evaluation --answers``) share: the
options that point them at an LLM, the text of their arguments, and waiting for the
local engine to start."""

from __future__ import annotations

import argparse
import sys

from pipeline.core.unicode import well_formed
from pipeline.serving.runtime import RagRuntime


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


def argument_text(value: str, name: str) -> str:
    """A command-line argument as text: bytes that are not UTF-8 (kept by Python as lone
    surrogates) become U+FFFD, with a note on stderr."""
    text = well_formed(value)
    if text is not value:
        print(
            f"note: {name} held bytes that are not UTF-8; they were replaced with U+FFFD "
            "(引数に UTF-8 でないバイトがあったため、置き換えました)",
            file=sys.stderr,
        )
    return text


def wait_for_engine(runtime: RagRuntime) -> None:
    """With the local backend, wait for `vllm serve` (its log on stderr); if it does not
    start, say so and go on: answers are then search-only, with the reason."""
    if runtime.service.backend.kind != "local":
        return
    timeout = runtime.settings.llm.startup_timeout_s
    status = runtime.supervisor.wait_ready(timeout, lambda line: print(line, file=sys.stderr))
    if status.state != "ready":
        print(f"warning: {status.en}", file=sys.stderr)
