"""CPU benchmarks of the demo profile and of full-scale shapes, on this machine.

    python -m bench.cpu [--parts startup,latency,bm25,concurrency,scaling] [--out FILE]

- startup: a fresh process, loading as the app does (dense retrieval behind BM25), from
  start to the first answered search and to dense retrieval being ready, with an empty
  cache (cold: BM25 and the dense index are built) and again with that cache (warm); the
  load time of each part, peak RSS, and the size of the cache on disk.
- latency: first and steady-state search latency p50/p99 of bm25, dense and hybrid on
  the demo corpus (JSQuAD questions).
- bm25: BM25 build time, index size and peak RSS for 25k/50k/100k synthetic passages
  made of JSQuAD sentences, and their linear projection to 5,555,583 passages.
- concurrency: 10 browser sessions (headless Chromium pages on one `streamlit run`)
  asking at once through the stand-in LLM: per-answer latency and errors.
- scaling: single-query latency of the seed's IVF2048-PQ256 (random codes, nprobe 128),
  an exact flat index (faiss, float32) and BM25 as the corpus grows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, percentiles_ms, write_result
from bench.ivfpq import fill_with_random_codes

ROOT = Path(__file__).resolve().parents[1]
JAWIKI_ROWS = 5_555_583


def jsquad_questions(limit: int) -> list[str]:
    from tests.conftest import JSQUAD_PATH

    data = json.loads(JSQUAD_PATH.read_text(encoding="utf-8"))["data"]
    return [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]][:limit]


def child_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    return {**env, "HF_HUB_OFFLINE": "1", "RAG_CACHE_DIR": str(cache), "RAG_SETTINGS_FILE": str(cache / "none.toml")}


def startup_child() -> None:
    """In a fresh process, as the app starts: import, load the demo profile with dense
    retrieval behind BM25, answer a first search, then wait for dense and search again."""
    started = time.perf_counter()
    from pipeline.retrieval.loading import load_retrieval
    from pipeline.settings.sources import load_settings, with_retrieval

    imported = time.perf_counter()
    service = load_retrieval(load_settings(), dense_in_background=True)
    loaded = time.perf_counter()
    service.search("日本で梅雨がないのは北海道とどこか。")
    first_answer = time.perf_counter()
    while "dense" not in service.modes and time.perf_counter() - first_answer < 900:
        time.sleep(0.1)
    dense_ready = time.perf_counter()
    first = {}
    for mode in ("bm25", "dense", "hybrid"):
        t = time.perf_counter()
        service.search("日本で梅雨がないのは北海道とどこか。", with_retrieval(service.settings, mode=mode))
        first[mode] = round((time.perf_counter() - t) * 1000, 1)
    print(json.dumps({
        "import_s": round(imported - started, 2), "load_s": round(loaded - imported, 2),
        "to_first_answered_search_s": round(first_answer - started, 2),
        "to_dense_ready_s": round(dense_ready - started, 2),
        "load_parts_s": service.load_timings, "first_search_per_mode_ms": first,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))  # fmt: skip


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def startup() -> dict:
    cache = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        runs = {}
        for label in ("cold", "warm"):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "bench.cpu", "--startup-child"], cwd=ROOT,
                                  env=child_env(cache), capture_output=True, text=True, check=True)  # fmt: skip
            runs[label] = {"process_wall_s": round(time.perf_counter() - started, 2),
                           **json.loads(done.stdout.strip().splitlines()[-1])}  # fmt: skip
        runs["cache_on_disk_mib"] = round(folder_bytes(cache) / 2**20, 2)
        return runs
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def latency(cache: Path) -> dict:
    from pipeline.retrieval.loading import load_retrieval
    from pipeline.settings.sources import load_settings, with_retrieval

    os.environ.update(child_env(cache))
    service = load_retrieval(load_settings())
    questions = jsquad_questions(220)
    result = {"embedding_model": service.embedding.name if service.embedding else None}
    for mode in ("bm25", "dense", "hybrid"):
        samples = []
        for question in questions:
            started = time.perf_counter()
            service.search(question, with_retrieval(service.settings, mode=mode))
            samples.append(time.perf_counter() - started)
        result[mode] = {"first_ms": round(samples[0] * 1000, 2), **percentiles_ms(samples[20:])}
    return result


def synthetic_passages(count: int, seed: int = 0) -> list[dict]:
    """Passages of ~230 characters made of real JSQuAD sentences, shuffled."""
    from pipeline.evaluation.squad import read_squad
    from pipeline.text.sentences import sentence_spans
    from tests.conftest import JSQUAD_PATH

    texts = [p["text"] for p in read_squad([JSQUAD_PATH], [False]).passages]
    sentences = [text[a:b] for text in texts for a, b in sentence_spans(text)]
    rng = random.Random(seed)
    passages = []
    for row in range(count):
        text = ""
        while len(text) < 230:
            text += rng.choice(sentences)
        passages.append({"id": row, "pageid": row // 30, "revid": row, "title": f"記事{row // 30}",
                         "section": "", "text": text})  # fmt: skip
    return passages


def bm25_child(count: int) -> None:
    from pipeline.retrieval.bm25 import BM25Index
    from pipeline.retrieval.corpus import PassageStore
    from pipeline.text.tokenizer import JapaneseTokenizer

    store = PassageStore.from_records(synthetic_passages(count), "synthetic")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    index = BM25Index.build(store, JapaneseTokenizer())
    build_s = time.perf_counter() - started
    folder = Path(tempfile.mkdtemp(prefix="bench-bm25-"))
    index._model.save(folder, show_progress=False)
    questions = jsquad_questions(120)
    samples = []
    for question in questions:
        t = time.perf_counter()
        index.search(question, 10)
        samples.append(time.perf_counter() - t)
    print(json.dumps({
        "passages": count, "build_s": round(build_s, 1), "index_mib": round(folder_bytes(folder) / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_build_mib": round(before / 1024, 1), "query": percentiles_ms(samples[20:]),
    }))  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)


def bm25_projection(sizes: tuple[int, ...] = (25_000, 50_000, 100_000)) -> dict:
    runs = []
    for count in sizes:
        command = [sys.executable, "-m", "bench.cpu", "--bm25-child", str(count)]
        env = child_env(Path(tempfile.gettempdir()))
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    x = np.array([r["passages"] for r in runs], dtype=float)

    def project(key: str) -> float:
        slope, intercept = np.polyfit(x, np.array([r[key] for r in runs], dtype=float), 1)
        return float(slope * JAWIKI_ROWS + intercept)

    growth = project("peak_rss_mib") / 1024
    return {
        "runs": runs,
        "projected_to_5555583": {
            "build_hours": round(project("build_s") / 3600, 2),
            "index_gib": round(project("index_mib") / 1024, 1),
            "peak_rss_gib": round(growth, 1),
            "fits_in_64_gib": growth < 64,
            "method": "least-squares line through the three runs, evaluated at 5,555,583 passages",
        },
    }


def concurrency(cache: Path, sessions: int = 10, questions_each: int = 3) -> dict:
    """Browser sessions asking at once: `streamlit run` on loopback with the stand-in LLM,
    one headless Chromium page per session (Playwright), each asking its questions in
    turn and waiting for the cited answer."""
    import asyncio

    from playwright.async_api import async_playwright

    from tests.conftest import StandinServer, free_port

    llm = StandinServer("--token-delay", "0.005")
    port = free_port()
    env = {**child_env(cache), "RAG_LLM_BASE_URL": llm.base_url}
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port)],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    questions = jsquad_questions(sessions * questions_each)
    latencies: list[float] = []
    errors: list[str] = []

    async def session(browser, index: int) -> None:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{port}", timeout=600_000)
        box = page.get_by_test_id("stChatInput").locator("textarea")
        for turn, question in enumerate(questions[index * questions_each : (index + 1) * questions_each]):
            await box.wait_for(timeout=600_000)
            started = time.perf_counter()
            await box.fill(question)
            await box.press("Enter")
            try:
                await page.locator(f"#source-{turn}-1").wait_for(state="attached", timeout=300_000)
                latencies.append(time.perf_counter() - started)
            except Exception as exc:  # counted, not fatal: the run reports errors
                errors.append(f"{question}: {type(exc).__name__}")
        await page.close()

    async def run() -> float:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-dev-shm-usage"],
            )  # fmt: skip
            warm = await browser.new_page()  # the first visit loads the shared resources
            await warm.goto(f"http://127.0.0.1:{port}", timeout=600_000)
            await warm.get_by_test_id("stChatInput").locator("textarea").wait_for(timeout=600_000)
            await warm.close()
            started = time.perf_counter()
            await asyncio.gather(*(session(browser, i) for i in range(sessions)))
            wall = time.perf_counter() - started
            await browser.close()
            return wall

    try:
        from bench.api_load import wait_for

        wait_for(f"http://127.0.0.1:{port}/_stcore/health")
        wall = asyncio.run(run())
    finally:
        app.terminate()
        app.wait(20)
        llm.stop()
    return {"sessions": sessions, "questions_each": questions_each, "answered": len(latencies),
            "errors": len(errors), "error_kinds": sorted(set(e.split(": ")[-1] for e in errors)),
            "wall_s": round(wall, 1), "per_answer": percentiles_ms(latencies) if latencies else None,
            "measured": "question submitted in the page -> its first source card in the page"}  # fmt: skip


def scaling(sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000, JAWIKI_ROWS)) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    dim = 1024
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    train = rng.standard_normal((65_536, dim)).astype(np.float32)
    trained = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, 2048, 256, 8)
    started = time.perf_counter()
    trained.train(train)
    result: dict = {"ivfpq_train_s": round(time.perf_counter() - started, 1), "threads": faiss.omp_get_max_threads()}
    params = faiss.SearchParametersIVF(nprobe=128)
    for rows in sizes:
        index = faiss.clone_index(trained)
        fill_with_random_codes(index, rows, rng)
        samples = [_timed(lambda q=q, i=index: i.search(q[None], 10, params=params)) for q in queries]
        entry = {"ivfpq_nprobe128": percentiles_ms(samples[5:])}
        del index
        if rows <= 1_000_000:  # a float32 flat index of 5.5M x 1024 would need 22 GB of RAM
            flat = faiss.IndexFlatIP(dim)
            for chunk in range(0, rows, 100_000):
                block = rng.standard_normal((min(100_000, rows - chunk), dim)).astype(np.float32)
                flat.add(block / np.linalg.norm(block, axis=1, keepdims=True))
            samples = [_timed(lambda q=q, f=flat: f.search(q[None], 10)) for q in queries[:15]]
            entry["flat_exact_float32"] = percentiles_ms(samples[3:])
            del flat
        result[str(rows)] = entry
    return result


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


PARTS = ("startup", "latency", "bm25", "concurrency", "scaling")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--startup-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bm25-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.startup_child:
        startup_child()
        return {}
    if args.bm25_child:
        bm25_child(args.bm25_child)
        return {}
    parts = args.parts.split(",")
    result: dict = {"benchmark": "cpu", "machine": machine()}
    cache = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    try:
        for part in parts:
            started = time.perf_counter()
            if part == "startup":
                result["startup"] = startup()
            elif part == "latency":
                result["latency"] = latency(cache)
            elif part == "bm25":
                result["bm25"] = bm25_projection()
            elif part == "concurrency":
                result["concurrency"] = concurrency(cache)
            elif part == "scaling":
                result["scaling_cpu"] = scaling()
            print(f"{part} done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
