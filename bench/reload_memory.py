"""GPU memory across settings saves in a row: the runtime lets go of what a save replaces.

    python -m bench.reload_memory ROOT --out OUT.json [--saves 6]

ROOT holds the hub-shaped mirror that ``python -m bench.gpu_host prepare`` writes
(5,555,583 passages and E5-large-shaped random vectors by default). The app's runtime
loads the jawiki profile with the ``exact`` backend (the fp16 matrix on the GPU) and the
E5-shaped encoder (CUDA graphs); then ``RagRuntime.reload`` takes new settings, one
after the other: the query encoder to ``padded`` (a new encoder, and the vectors with it:
the 10.6 GiB matrix is loaded again), back to ``compiled`` (again), a timeout (nothing to
reload), and so on. After each the GPU memory PyTorch holds and the card's memory in use
are recorded: each ``compiled`` entry must come back to the first level, never a matrix
more, and a closed runtime holds nothing (on the H200, 2026-12-05, at 2a75d1e, ``padded``
sat one encoder higher and 1.04 GiB stayed after the close: the graph thread kept the last
compiled encoder; fixed since).

Why not an admin's saves (``LocalAdmin.save``, which calls the same ``reload``): the only
admin setting that reloads the matrix without another corpus is ``index.backend``, and
away from ``exact`` the full-size mirror has nothing to search with (no BM25 index, no
IVF-PQ file), so the runtime refuses the save (it did on the H200, 2026-12-05); the
encoder is the operator's. The report is written after the load and after each change,
and says which change (or the load) failed and why.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.common import machine
from bench.gpu_host import EMBEDDINGS_DIR, gpu_processes, gpu_snapshot


def save_values(number: int, first_encoder: str) -> dict:
    """The n-th save: another query encoder (the matrix reloads with it), back, a timeout."""
    step = number % 3
    if step == 2:
        return {"llm.timeout_s": 30.0 + number}
    return {"embedding.query_encoder": "padded" if step == 0 else first_encoder}


def memory() -> dict:
    import torch

    return {
        "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
        "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 2),
        "card": gpu_snapshot(),
        "processes": gpu_processes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reload_memory")
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--saves", type=int, default=6)
    args = parser.parse_args()
    import torch

    # The app's choice on a GPU; without one (a check of this script) the compiled
    # encoder's fp16 warm-up on the CPU would take most of an hour.
    first_encoder = "compiled" if torch.cuda.is_available() else "sentence-transformers"
    os.environ.update({
        "RAG_PROFILE": "jawiki", "RAG_HUB_MIRROR": str(args.root / "mirror"), "RAG_CACHE_DIR": str(args.root / "cache"),
        "RAG_SETTINGS_FILE": os.devnull, "RAG_INDEX_EMBEDDINGS_DIR": EMBEDDINGS_DIR, "RAG_INDEX_BACKEND": "exact",
        "RAG_EMBEDDING_QUERY_ENCODER": first_encoder, "RAG_EMBEDDING_ALLOW_FALLBACK": "false",
        "RAG_LLM_BACKEND": "none",
    })  # fmt: skip
    from pipeline.serving.runtime import RagRuntime
    from pipeline.settings.sources import load_settings, with_values

    report: dict = {**machine(), "saves": []}

    def write() -> None:
        args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")

    def failed(values: dict, reason: str) -> None:
        # the memory after the runtime went back to the settings before (or held nothing)
        report["saves"].append({"values": values, "failed": reason, "memory_after_going_back": memory()})
        write()

    started = time.perf_counter()
    with RagRuntime(load_settings()) as runtime:
        try:
            service = runtime.service  # the runtime loads on first use
        except Exception as exc:
            report["load_failed"] = f"{type(exc).__name__}: {exc}"
            write()
            raise
        report["loaded_s"] = round(time.perf_counter() - started, 1)
        report["vector_search"] = service.retrieval.status().vector_search
        report["first"] = memory()
        write()
        for number in range(args.saves):
            values = save_values(number, first_encoder)
            started = time.perf_counter()
            try:
                outcome = runtime.reload(with_values(runtime.settings, values))
            except Exception as exc:
                failed(values, f"{type(exc).__name__}: {exc}")
                raise
            if not outcome.changed:
                failed(values, "changed nothing")
                raise SystemExit(f"the change {values} changed nothing")
            search = runtime.service.retrieval.status().vector_search
            entry = {"values": values, "seconds": round(time.perf_counter() - started, 1),
                     "reloaded": outcome.retrieval, "vector_search": search, **memory()}  # fmt: skip
            report["saves"].append(entry)
            print(json.dumps(entry, ensure_ascii=False), flush=True)
            write()
    report["after_close"] = memory()
    write()


if __name__ == "__main__":
    main()
