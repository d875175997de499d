"""The reference scale-out deployment, run on loopback with deploy/nginx.conf.

    python -m bench.scaleout [--requests 40] [--out bench/results/scaleout.json]

Starts two stand-in `vllm serve` replicas (ports 8201, 8202), two RAG API replicas
(8101, 8102) whose RAG_LLM_BASE_URL is the nginx vLLM upstream (8081), and nginx with
deploy/nginx.conf (8080 for the API). Sends requests through nginx, counts which
replicas served them, then stops one API replica and one vLLM replica and checks that
requests still succeed. Needs Debian's nginx (`apt-get install nginx`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.api_load import start, wait_for
from bench.common import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "日本で梅雨がないのは北海道とどこか。"
#: Replicas behind a load balancer need a token: without one they answer only their own machine's direct requests.
TOKEN = secrets.token_urlsafe(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ask(count: int) -> tuple[int, int]:
    """(successes, failures) of streamed chat completions through the load balancer."""
    ok = failed = 0
    for _ in range(count):
        body = {"messages": [{"role": "user", "content": QUESTION}]}
        try:
            response = httpx.post("http://127.0.0.1:8080/v1/chat/completions", json=body, headers=AUTH, timeout=60)
            answered = response.status_code == 200 and "[1]" in response.json()["choices"][0]["message"]["content"]
        except httpx.HTTPError:
            answered = False
        ok, failed = ok + answered, failed + (not answered)
    return ok, failed


def served(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/debug/stats").json()["completed"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    processes: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for port in (8201, 8202):
            processes[f"vllm-{port}"] = start(
                [
                    sys.executable,
                    "-m",
                    "tests.standin_llm",
                    "serve",
                    "elyza/ELYZA-japanese-Llama-2-13b-instruct",
                    "--port",
                    str(port),
                ],
                base,
            )
        for port in (8101, 8102):
            logs[port] = workdir / f"api-{port}.log"
            env = {
                **base,
                "RAG_CACHE_DIR": str(workdir / "cache"),
                "RAG_SETTINGS_FILE": str(workdir / "none.toml"),
                "RAG_LLM_BASE_URL": "http://127.0.0.1:8081/v1",
                "RAG_EMBEDDING_ALLOW_FALLBACK": "false",
                "RAG_API_TOKEN": TOKEN,
            }
            with open(logs[port], "w") as log:
                processes[f"api-{port}"] = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.api", "--port", str(port)],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        processes["nginx"] = subprocess.Popen(
            [
                nginx,
                "-c",
                str(ROOT / "deploy" / "nginx.conf"),
                "-p",
                str(workdir),
                "-g",
                f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log;",
            ]
        )
        for port in (8201, 8202):
            wait_for(f"http://127.0.0.1:{port}/health")
        for port in (8101, 8102):
            wait_for(f"http://127.0.0.1:{port}/readyz", headers=AUTH)
        wait_for("http://127.0.0.1:8080/healthz")

        ok, failed = ask(args.requests)
        api_counts = {port: logs[port].read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') for port in logs}
        llm_counts = {port: served(port) for port in (8201, 8202)}

        processes.pop("api-8102").terminate()
        processes.pop("vllm-8202").terminate()
        time.sleep(1)
        ok_after, failed_after = ask(args.requests // 2)
        result = {
            "benchmark": "scaleout",
            "machine": machine(),
            "requests": args.requests,
            "succeeded": ok,
            "failed": failed,
            "chat_completions_per_api_replica": api_counts,
            "completions_per_vllm_replica": llm_counts,
            "after_stopping_one_api_and_one_vllm_replica": {
                "requests": args.requests // 2,
                "succeeded": ok_after,
                "failed": failed_after,
            },
        }
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(20)
        shutil.rmtree(workdir, ignore_errors=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
