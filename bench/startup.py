"""A newcomer's first minute: from `streamlit run streamlit_app.py` to a chat box that
answers, in headless Chromium, cold (empty cache) and warm (second start).

    python -m bench.startup [--runs 3] [--out bench/results/startup.json]

The clock starts when `streamlit run` is started; the browser is already open, as it
would be. It records when the chat box is there and when the first answer (BM25,
search-only: no LLM on a laptop) is on the page. Each run also starts the floor, Streamlit
alone with a chat box that echoes (bench/startup_floor_app.py): what no work of the
product's own can go below on this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, write_result
from tests.conftest import HERMETIC_ENV, ROOT, free_port, launch_chromium

QUESTION = "日本で梅雨がないのは北海道とどこか。"


APP, FLOOR_APP = "streamlit_app.py", "bench/startup_floor_app.py"


def one_start(page, cache: Path, script: str = APP) -> dict:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAG_")}, **HERMETIC_ENV,
           "RAG_CACHE_DIR": str(cache), "RAG_SETTINGS_FILE": str(cache / "none.toml")}  # fmt: skip
    started = time.perf_counter()
    command = [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:  # what a user sees: the page as soon as the server answers
            try:
                page.goto(f"http://127.0.0.1:{port}", timeout=60_000)
                break
            except Exception:
                time.sleep(0.05)
        served = time.perf_counter()
        chat_box = page.get_by_test_id("stChatInput").locator("textarea")
        chat_box.wait_for(timeout=120_000)
        chat = time.perf_counter()
        chat_box.fill(QUESTION)
        chat_box.press("Enter")
        page.get_by_text("（検索のみ）").first.wait_for(timeout=120_000)
        answered = time.perf_counter()
    finally:
        server.terminate()
        server.wait(20)
    return {"page_served_s": round(served - started, 2), "chat_box_s": round(chat - started, 2),
            "first_answer_s": round(answered - started, 2)}  # fmt: skip


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold and warm starts, each")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"cold": [], "warm": [], "floor": []}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        for _ in range(args.runs):
            cache = Path(tempfile.mkdtemp(prefix="bench-startup-"))
            try:
                for label in ("cold", "warm", "floor"):  # the same cache: empty, then as the first start left it
                    page = browser.new_page(locale="ja-JP")
                    runs[label].append(one_start(page, cache, FLOOR_APP if label == "floor" else APP))
                    page.close()
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        browser.close()
    summary = {label: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for label, results in runs.items()}  # fmt: skip
    write_result(args.out, {"benchmark": "startup", "machine": machine(), "median": summary, "runs": runs})


if __name__ == "__main__":
    main()
