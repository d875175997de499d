"""GPU memory across settings saves in a row: the runtime lets go of what a save replaces.

    python -m bench.reload_memory ROOT --out OUT.json [--saves 6]

ROOT holds the hub-shaped mirror that ``python -m bench.gpu_host prepare`` writes
(5,555,583 passages and E5-large-shaped random vectors by default). The app's runtime
loads the jawiki profile with the ``exact`` backend (the fp16 matrix on the GPU) and the
E5-shaped encoder (CUDA graphs); an admin then saves, one after the other, what a user
would: the vector search to ``faiss-cpu`` (no index file here: dense retrieval is off
with a notice, nothing stays on the GPU), back to ``exact``, a timeout (nothing to
reload), and so on. After each save the GPU memory PyTorch holds and the card's memory
in use are recorded: an ``exact`` save must come back to the first level, not add a
matrix each time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.common import machine
from bench.gpu_host import EMBEDDINGS_DIR, gpu_snapshot


def save_values(number: int) -> dict:
    """The n-th save: the vector search off the GPU, back on it, a timeout, and again."""
    step = number % 3
    if step == 2:
        return {"llm.timeout_s": 30.0 + number}
    return {"index.backend": "faiss-cpu" if step == 0 else "exact"}


def memory() -> dict:
    import torch

    return {
        "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
        "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 2),
        "card": gpu_snapshot(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reload_memory")
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--saves", type=int, default=6)
    args = parser.parse_args()
    settings_file = args.root / "reload-settings.toml"
    os.environ.update({
        "RAG_PROFILE": "jawiki", "RAG_HUB_MIRROR": str(args.root / "mirror"), "RAG_CACHE_DIR": str(args.root / "cache"),
        "RAG_SETTINGS_FILE": str(settings_file), "RAG_INDEX_EMBEDDINGS_DIR": EMBEDDINGS_DIR,
        "RAG_LLM_BACKEND": "none", "RAG_EMBEDDING_ALLOW_FALLBACK": "false",
    })  # fmt: skip
    # What the saves change lives in the settings file, as an admin's saves do (a RAG_*
    # variable would win over the file and make every save a no-op).
    settings_file.write_text('[index]\nbackend = "exact"\n', encoding="utf-8")
    from pipeline.serving.admin import Actor, LocalAdmin
    from pipeline.serving.runtime import RagRuntime
    from pipeline.settings.sources import load_settings

    report: dict = {**machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "saves": []}
    started = time.perf_counter()
    with RagRuntime(load_settings()) as runtime:
        service = runtime.service
        report["loaded_s"] = round(time.perf_counter() - started, 1)
        report["vector_search"] = service.retrieval.status().vector_search
        report["first"] = memory()
        admin = LocalAdmin(runtime)
        for number in range(args.saves):
            values = save_values(number)
            started = time.perf_counter()
            outcome = admin.save(Actor("bench", admin=True), values)
            search = runtime.service.retrieval.status().vector_search
            entry = {"values": values, "seconds": round(time.perf_counter() - started, 1),
                     "reloaded": outcome.reload.retrieval, "vector_search": search, **memory()}  # fmt: skip
            assert outcome.reload.changed, f"the save of {values} changed nothing"
            report["saves"].append(entry)
            print(json.dumps(entry, ensure_ascii=False), flush=True)
            args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    report["after_close"] = memory()
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
