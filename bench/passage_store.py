"""Passage store at full scale: a synthetic 5.5M-row corpus in the wikipedia-utils schema.

    python -m bench.passage_store [--rows 5555583] [--workdir /tmp/x] [--out bench/results/passage_store.json]

Writes parquet shards laid out like the hub repo into a temporary directory (not kept),
loads them through ``PassageStore.from_settings`` exactly as the jawiki profile does
(``datasets`` converts once to a memory-mapped Arrow cache), then measures: the first
load (conversion), then in a fresh process: opening the memory-mapped cache, RSS split
into anonymous memory (copies) and file-backed pages (the page cache of the mapping,
which kernel read-ahead inflates on random faults), and random access (one row, ten
rows) at random positions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.common import machine, percentiles_ms, rss_mib, write_result
from pipeline.retrieval.corpus import PASSAGE_SCHEMA, PassageStore, write_corpus_repo
from pipeline.settings.model import Settings
from pipeline.settings.sources import load_settings

CONFIG = "passages-c400-jawiki-20230403"
REPO = "singletongue/wikipedia-utils"
#: The real corpus: 3,868,482,519 bytes of Arrow data for 5,555,583 rows.
MEAN_TEXT_CHARS = 230


def synthetic_shard(start: int, rows: int, rng: np.random.Generator) -> pa.Table:
    """Rows with realistic sizes: Japanese text of ~230 characters, 30 passages a page."""
    pool = "".join(chr(c) for c in rng.integers(0x4E00, 0x9FFF, 200_000)) + "、。のはがをにでと" * 2000
    lengths = rng.integers(100, 2 * MEAN_TEXT_CHARS - 100, rows)
    offsets = rng.integers(0, len(pool) - 400, rows)
    ids = np.arange(start, start + rows)
    return pa.table(
        {
            "id": ids,
            "pageid": ids // 30 + 1,
            "revid": ids // 30 + 90_000_000,
            "title": [f"記事{p}" for p in (ids // 30).tolist()],
            "section": ["__LEAD__" if i % 30 == 0 else "概要" for i in ids.tolist()],
            "text": [pool[o : o + n] for o, n in zip(offsets.tolist(), lengths.tolist(), strict=True)],
        },
        schema=PASSAGE_SCHEMA,
    )


def write_repo(folder: Path, total_rows: int, shard_rows: int = 500_000) -> None:
    rng = np.random.default_rng(0)
    starts = range(0, total_rows, shard_rows)
    shards = (synthetic_shard(start, min(shard_rows, total_rows - start), rng) for start in starts)
    write_corpus_repo(folder / REPO, CONFIG, shards)


def bench_settings(workdir: Path) -> Settings:
    overrides = {"profile": "jawiki", "cache_dir": str(workdir / "cache"), "hub_mirror": str(workdir / "mirror")}
    return load_settings(environ={}, path="/nonexistent.toml", overrides=overrides)


def measure(workdir: Path) -> dict:
    """Run in a fresh process, so that RSS holds only what opening the store costs."""
    settings = bench_settings(workdir)
    rss_before = rss_mib()
    started = time.perf_counter()
    store = PassageStore.from_settings(settings)
    reopen_s = time.perf_counter() - started
    rss_open = rss_mib()

    rng = random.Random(1)
    for _ in range(200):  # touch a few pages first, as a running server would have
        store.get(rng.randrange(len(store)))
    single, ten = [], []
    for _ in range(2000):
        row = rng.randrange(len(store))
        t = time.perf_counter()
        store.get(row)
        single.append(time.perf_counter() - t)
        batch = [rng.randrange(len(store)) for _ in range(10)]
        t = time.perf_counter()
        store.get_many(batch)
        ten.append(time.perf_counter() - t)
    arrow_bytes = sum(os.path.getsize(f) for f in store.files)
    return {
        "rows": len(store),
        "arrow_cache_gib": round(arrow_bytes / 2**30, 2),
        "reopen_memory_mapped_s": round(reopen_s, 3),
        "rss_before_open_mib": rss_before,
        "rss_after_open_mib": rss_open,
        "rss_after_random_reads_mib": rss_mib(),
        "get_1_row": percentiles_ms(single),
        "get_10_rows": percentiles_ms(ten),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_555_583)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, deleted")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.workdir)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-passages-"))
    try:
        started = time.perf_counter()
        write_repo(workdir / "mirror", args.rows)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        PassageStore.from_settings(bench_settings(workdir))  # parquet -> memory-mappable Arrow cache
        convert_s = time.perf_counter() - started
        run = subprocess.run(
            [sys.executable, "-m", "bench.passage_store", "--measure-only", "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "passage_store",
        "machine": machine(),
        "read_ahead_kb": Path("/sys/block/vda/queue/read_ahead_kb").read_text().strip()
        if Path("/sys/block/vda/queue/read_ahead_kb").exists()
        else "unknown",
        "generate_parquet_s": round(generate_s, 1),
        "first_load_s (parquet -> arrow cache)": round(convert_s, 1),
    }
    write_result(args.out, {**result, **measured})


if __name__ == "__main__":
    main()
