"""Load test of the RAG API on loopback: N concurrent streaming clients x M questions.

    python -m bench.api_load [--clients 64] [--questions 10] [--token-delay 0.005]
                             [--max-concurrent 64] [--out bench/results/api_load.json]

Starts the stand-in `vllm serve` (tests/standin_llm.py) and `python -m pipeline.api`
(demo corpus, BM25) as child processes on free loopback ports, then runs the clients
with asyncio + httpx against ``POST /v1/chat/completions`` (stream=True). A 429 is a
deliberate refusal: the client waits Retry-After and tries again, and it is counted
apart from errors. Reports throughput, latency to the first token and to the end
(p50/p99), errors, and the API process's CPU time per answer (user and system, from
/proc: what a burst's requests pay one after another under its GIL). Everything runs
on this machine, so the load generator, the API and the stand-in LLM share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import cpu_seconds, machine, percentiles_ms, write_result
from tests.conftest import JSQUAD_PATH, free_port

ROOT = Path(__file__).resolve().parents[1]


def questions(count: int) -> list[str]:
    data = json.loads(JSQUAD_PATH.read_text(encoding="utf-8"))["data"]
    found = [qa["question"] for article in data for p in article["paragraphs"] for qa in p["qas"]]
    return found[:count]


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(url: str, timeout_s: float = 180, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


async def client(http: httpx.AsyncClient, asked: list[str], record: dict) -> None:
    for question in asked:
        body = {"messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": 256}
        while True:
            started = time.perf_counter()
            first = None
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code == 429:
                        record["refused_429"] += 1
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    if response.status_code != 200:
                        record["errors"].append(f"HTTP {response.status_code}")
                        break
                    async for line in response.aiter_lines():
                        if (
                            first is None
                            and line.startswith("data: ")
                            and '"content": "' in line[:400]
                            and '"content": ""' not in line[:400]
                        ):
                            first = time.perf_counter()
                    done = time.perf_counter()
                record["ttft"].append((first or done) - started)
                record["total"].append(done - started)
                break
            except httpx.HTTPError as exc:
                record["errors"].append(type(exc).__name__)
                break


async def run_clients(url: str, clients: int, per_client: int) -> dict:
    pool = questions(clients * per_client)
    record = {"ttft": [], "total": [], "errors": [], "refused_429": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(
            client(http, pool[i * per_client : (i + 1) * per_client], record) for i in range(clients)
        ))  # fmt: skip
        elapsed = time.perf_counter() - started
    answered = len(record["total"])
    return {
        "clients": clients,
        "questions_per_client": per_client,
        "answered": answered,
        "errors": len(record["errors"]),
        "error_kinds": sorted(set(record["errors"])),
        "refused_429_then_retried": record["refused_429"],
        "wall_s": round(elapsed, 2),
        "answers_per_s": round(answered / elapsed, 2),
        "time_to_first_token": percentiles_ms(record["ttft"]) if record["ttft"] else None,
        "time_to_complete_answer": percentiles_ms(record["total"]) if record["total"] else None,
    }


def run(clients: int, per_client: int, token_delay: float, max_concurrent: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    llm_port, api_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    llm = start([sys.executable, "-m", "tests.standin_llm", "serve", "elyza/ELYZA-japanese-Llama-2-13b-instruct",
                 "--port", str(llm_port), "--token-delay", str(token_delay)], base)  # fmt: skip
    api = start([sys.executable, "-m", "pipeline.api", "--port", str(api_port)], {
        **base, "RAG_CACHE_DIR": str(workdir), "RAG_SETTINGS_FILE": str(workdir / "none.toml"),
        "RAG_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1", "RAG_EMBEDDING_ALLOW_FALLBACK": "false",
        "RAG_API_MAX_CONCURRENT_GENERATIONS": str(max_concurrent), "RAG_API_RETRY_AFTER_S": "1",
    })  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{llm_port}/health")
        wait_for(f"http://127.0.0.1:{api_port}/readyz")
        cpu_before = cpu_seconds(api.pid)
        result = asyncio.run(run_clients(f"http://127.0.0.1:{api_port}", clients, per_client))
        spent_ms = (cpu_seconds(api.pid) - cpu_before) * 1000.0
        result["api_cpu_ms_per_answer"] = round(spent_ms / max(result["answered"], 1), 2)
    finally:
        for process in (api, llm):
            process.terminate()
            process.wait(20)
    return {"stand_in_token_delay_s": token_delay, "max_concurrent_generations": max_concurrent, **result}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--questions", type=int, default=10, help="per client")
    parser.add_argument("--token-delay", type=float, default=0.005, help="stand-in LLM seconds per token")
    parser.add_argument("--max-concurrent", type=int, default=64, help="api.max_concurrent_generations")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"benchmark": "api_load", "machine": machine(),
              **run(args.clients, args.questions, args.token_delay, args.max_concurrent)}  # fmt: skip
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
