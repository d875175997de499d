"""The scaling plot of docs/benchmarks.md: single-query search latency against corpus size.

    python -m bench.plot --cpu bench/results/cpu.json --gpu bench/results/gpu_h100_scaling.json \
        --out docs/scaling.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def series(scaling: dict, key: str) -> tuple[list[int], list[float]]:
    points = sorted((int(rows), entry[key]["p50_ms"]) for rows, entry in scaling.items()
                    if rows.isdigit() and key in entry)  # fmt: skip
    return [p[0] for p in points], [p[1] for p in points]


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=Path, required=True)
    parser.add_argument("--gpu", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cpu = json.loads(args.cpu.read_text(encoding="utf-8"))
    gpu = json.loads(args.gpu.read_text(encoding="utf-8"))
    cores = cpu["machine"]["cores"]
    figure, axis = plt.subplots(figsize=(8, 5))
    host = f"GPU host CPU ({gpu['cpu_cores']} cores)"
    lines = [
        (gpu["scaling"], "exact_gpu", f"exact fp16 scan, {gpu['gpu']}", "o-"),
        (gpu["scaling"], "ivfpq_cpu_nprobe128", f"IVF2048-PQ256 nprobe 128, {host}", "s-"),
        (cpu["scaling_cpu"], "ivfpq_nprobe128", f"IVF2048-PQ256 nprobe 128, {cores}-core dev machine", "s--"),
        (cpu["scaling_cpu"], "flat_exact_float32", f"exact flat float32 (faiss), {cores}-core dev machine", "^--"),
    ]  # fmt: skip
    for data, key, label, style in lines:
        x, y = series(data, key)
        if x:
            axis.plot(x, y, style, label=label)
    bm25 = cpu.get("bm25", {}).get("runs", [])
    if bm25:
        axis.plot([r["passages"] for r in bm25], [r["query"]["p50_ms"] for r in bm25], "d:",
                  label=f"BM25 (bm25s), {cores}-core dev machine")  # fmt: skip
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("passages in the corpus")
    axis.set_ylabel("single-query search latency, p50 (ms)")
    axis.set_title("Search latency against corpus size (synthetic 1024-d vectors)")
    axis.axvline(5_555_583, color="grey", linewidth=0.8)
    axis.text(5_555_583, axis.get_ylim()[0] * 1.2, " jawiki 5.5M", color="grey", fontsize=8)
    axis.grid(True, which="both", linewidth=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
