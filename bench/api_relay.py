"""What the RAG API's own process spends per answer and per relayed token.

    python -m bench.api_relay [--requests 100] [--token-delay 0] [--out bench/results/api_relay.json]

Starts the stand-in `vllm serve` (``--token-delay`` seconds between its tokens: 0 sends a
whole answer at once, so reads bring many tokens together; 0.01, a stream of 100 tokens/s,
brings them one by one as an engine under light load does) and `python -m pipeline.api` (demo
corpus, BM25) on loopback, asks the same question ``--requests`` times one after another
through ``POST /v1/chat/completions`` (stream=True), once with 8 answer tokens and once
with the whole answer, and reads the API process's CPU time from /proc. The difference
per extra engine token is the relay's cost per token (the openai SDK parsing the engine's
chunk, LlamaIndex, the chat engine, the API's own chunks, which join tokens that arrive
together); the rest is the fixed cost of an answer (retrieval, the prompt, the HTTP
exchanges). Under many users that per-token cost
is what the one API process must pay for every token of every stream.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.api_load import start, wait_for
from bench.common import cpu_seconds, machine, write_result
from tests.conftest import free_port

QUESTION = "日本で梅雨がないのは北海道とどこか。"


def ask(url: str, max_new_tokens: int) -> tuple[int, int]:
    """One streamed answer: the chunks that carried text, and the engine's tokens (the
    API joins tokens that arrive together into one chunk)."""
    body = {"model": "jawiki-rag", "stream": True, "messages": [{"role": "user", "content": QUESTION}],
            "rag_settings": {"generation.max_new_tokens": max_new_tokens}}  # fmt: skip
    chunks = tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[6:])["choices"][0]
            chunks += bool(choice["delta"].get("content"))
            if choice["finish_reason"]:
                tokens = int(json.loads(line[6:])["rag"]["timings"]["completion_tokens"])
    return chunks, tokens


def run(requests: int, token_delay: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    llm_port, api_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    llm = start([sys.executable, "-m", "tests.standin_llm", "serve", "elyza/ELYZA-japanese-Llama-2-13b-instruct",
                 "--port", str(llm_port), "--token-delay", str(token_delay)], base)  # fmt: skip
    api = start([sys.executable, "-m", "pipeline.api", "--port", str(api_port)], {
        **base, "RAG_CACHE_DIR": str(workdir), "RAG_SETTINGS_FILE": str(workdir / "none.toml"),
        "RAG_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1", "RAG_EMBEDDING_ALLOW_FALLBACK": "false",
    })  # fmt: skip
    url = f"http://127.0.0.1:{api_port}"
    measured = []
    try:
        wait_for(f"http://127.0.0.1:{llm_port}/health")
        wait_for(f"{url}/readyz")
        for _ in range(5):  # warm-up: first requests import and cache
            ask(url, 1024)
        for limit in (8, 1024):
            cpu, started = cpu_seconds(api.pid), time.perf_counter()
            answers = [ask(url, limit) for _ in range(requests)]
            measured.append((cpu_seconds(api.pid) - cpu, sum(c for c, _ in answers), sum(t for _, t in answers),
                             time.perf_counter() - started))  # fmt: skip
    finally:
        for process in (api, llm):
            process.terminate()
            process.wait(20)
    (short_cpu, short_chunks, short_tokens, _), (whole_cpu, whole_chunks, whole_tokens, whole_wall) = measured
    per_token = (whole_cpu - short_cpu) / (whole_tokens - short_tokens)
    return {
        "requests": requests,
        "token_delay_s": token_delay,
        "tokens_per_answer": {"short": short_tokens / requests, "whole": whole_tokens / requests},
        "chunks_per_answer": {"short": short_chunks / requests, "whole": whole_chunks / requests},
        "api_cpu_ms_per_answer": {
            "short": round(short_cpu * 1000 / requests, 2),
            "whole": round(whole_cpu * 1000 / requests, 2),
        },
        "api_cpu_us_per_relayed_token": round(per_token * 1e6, 1),
        "api_cpu_ms_fixed_per_answer": round((short_cpu - per_token * short_tokens) * 1000 / requests, 2),
        "wall_s_whole": round(whole_wall, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--token-delay", type=float, default=0.0, help="the stand-in's seconds between tokens")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"benchmark": "api_relay", "machine": machine(), **run(args.requests, args.token_delay)}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
