"""Soak test: mixed API traffic on loopback while the LLM server is killed and restarted.

    python -m bench.soak [--minutes 30] [--restart-every 180] [--workers 8] [--out FILE]

Starts the stand-in `vllm serve` and `python -m pipeline.api` (demo corpus, BM25), then
for the whole run sends a mix of requests from several threads: streamed `/question`,
non-streamed and streamed chat completions, `/v1/search`, `/v1/passages/{row}`, and
clients that hang up mid-answer. Every ``--restart-every`` seconds the LLM process is
killed (SIGKILL) and started again on the same port after a pause. The API process's
resident memory and open file descriptors are sampled every 10 seconds. Success means:
no 5xx answers but the 502 of an answer the killed LLM cut short (the API's way of telling
a client so: ``interrupted``), every other answer either from the LLM or search-only while
it was down, and memory and descriptors flat.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.api_load import questions, start, wait_for
from bench.common import machine, write_result
from tests.conftest import free_port

STANDIN = [sys.executable, "-m", "tests.standin_llm", "serve", "elyza/ELYZA-japanese-Llama-2-13b-instruct",
           "--token-delay", "0.003"]  # fmt: skip


def process_sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return {"rss_mib": round(rss / 1024, 1), "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def traffic(url: str, stop: threading.Event, counts: Counter, lock: threading.Lock, seed: int) -> None:
    rng = random.Random(seed)
    asked = questions(200)
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            kind = rng.choice(["question", "chat", "chat_stream", "search", "passage", "hang_up"])
            question = rng.choice(asked)
            try:
                if kind == "question":
                    with http.stream("POST", "/question", json={"question": question}) as response:
                        body = response.read().decode()
                        status = response.status_code
                        outcome = "llm" if "event: error" not in body else "search_only"
                elif kind in ("chat", "chat_stream"):
                    body = {"messages": [{"role": "user", "content": question}], "stream": kind == "chat_stream"}
                    response = http.post("/v1/chat/completions", json=body)
                    status = response.status_code
                    if status == 502 or 'data: {"error"' in response.text:  # cut short, and said so
                        outcome = "interrupted"
                    else:
                        outcome = "search_only" if "search-only" in response.text else "llm"
                elif kind == "search":
                    status = http.post("/v1/search", json={"query": question}).status_code
                    outcome = "search"
                elif kind == "passage":
                    status = http.get(f"/v1/passages/{rng.randrange(1145)}").status_code
                    outcome = "passage"
                else:
                    with http.stream("POST", "/question", json={"question": question}) as response:
                        status = response.status_code
                        for _ in response.iter_lines():
                            break
                    outcome = "hung_up"
            except httpx.HTTPError as exc:
                status, outcome = 0, f"client_error:{type(exc).__name__}"
            with lock:
                counts[f"{kind}:{status}:{outcome}"] += 1


def run(seconds: float, restart_every: float, workers: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    llm_port, api_port = free_port(), free_port()
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    llm = start([*STANDIN, "--port", str(llm_port)], env_base)
    api = start([sys.executable, "-m", "pipeline.api", "--port", str(api_port)], {
        **env_base, "RAG_CACHE_DIR": str(workdir), "RAG_SETTINGS_FILE": str(workdir / "none.toml"),
        "RAG_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1", "RAG_LLM_TIMEOUT_S": "10",
        "RAG_EMBEDDING_ALLOW_FALLBACK": "false", "RAG_API_MAX_CONCURRENT_GENERATIONS": "64",
    })  # fmt: skip
    url = f"http://127.0.0.1:{api_port}"
    samples, restarts = [], 0
    counts: Counter = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    try:
        wait_for(f"http://127.0.0.1:{llm_port}/health")
        wait_for(f"{url}/readyz")
        threads = [threading.Thread(target=traffic, args=(url, stop, counts, lock, i)) for i in range(workers)]
        for thread in threads:
            thread.start()
        started = last_restart = last_sample = time.monotonic()
        samples.append({"t_s": 0, **process_sample(api.pid)})
        while time.monotonic() - started < seconds:
            time.sleep(0.5)
            now = time.monotonic()
            if now - last_restart >= restart_every:
                llm.send_signal(signal.SIGKILL)
                llm.wait()
                time.sleep(min(5.0, restart_every / 4))  # the LLM stays down for a moment
                llm = start([*STANDIN, "--port", str(llm_port)], env_base)
                restarts += 1
                last_restart = time.monotonic()
            if now - last_sample >= 10:
                samples.append({"t_s": round(now - started), **process_sample(api.pid)})
                last_sample = now
        stop.set()
        for thread in threads:
            thread.join(90)
        samples.append({"t_s": round(time.monotonic() - started), **process_sample(api.pid)})
    finally:
        stop.set()
        api.terminate()
        llm.terminate()
        api.wait(20)
        llm.wait(20)
    server_errors = sum(
        n for key, n in counts.items() if key.split(":")[1].startswith("5") and not key.endswith(":interrupted")
    )
    client_errors = sum(n for key, n in counts.items() if "client_error" in key)
    steady = samples[len(samples) // 4 :] or samples  # after warm-up
    return {
        "seconds": round(seconds),
        "llm_restarts": restarts,
        "workers": workers,
        "requests": sum(counts.values()),
        "server_errors_5xx": server_errors,
        "client_side_errors": client_errors,
        "by_kind_status_outcome": dict(sorted(counts.items())),
        "api_process": {
            "rss_mib_first_last_max": [
                samples[0]["rss_mib"],
                samples[-1]["rss_mib"],
                max(s["rss_mib"] for s in samples),
            ],
            "rss_mib_steady_min_max": [min(s["rss_mib"] for s in steady), max(s["rss_mib"] for s in steady)],
            "fds_first_last_max": [samples[0]["fds"], samples[-1]["fds"], max(s["fds"] for s in samples)],
        },
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--restart-every", type=float, default=180, help="seconds between LLM kills")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = {"benchmark": "soak", "machine": machine(), **run(args.minutes * 60, args.restart_every, args.workers)}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
