"""One entry point for the benchmarks.

    python -m bench run [--gpu] [--quick] [--out-dir bench/results]
    python -m bench table [--out-dir bench/results]

``run`` runs, each in its own process, the CPU benchmarks (bench.cpu), the full-scale
passage store (bench.passage_store), the API load test (bench.api_load), the API's
cost per relayed token (bench.api_relay), a request's CPU time before its retrieval
(bench.request_cpu) and, with
``--gpu`` on a CUDA host, bench.gpu; each writes ``<out-dir>/<name>.json``. ``table``
(also run at the end of ``run``) writes ``<out-dir>/summary.md``: the headline figures
of whatever results are there, with the machine and date each was measured on.
``--quick`` shrinks every run to a smoke test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(out_dir: Path, gpu: bool, quick: bool) -> dict[str, list[str]]:
    python = [sys.executable, "-m"]
    runs = {
        "cpu": [*python, "bench.cpu", "--out", str(out_dir / "cpu.json")]
        + (["--parts", "startup,latency"] if quick else []),
        "passage_store": [*python, "bench.passage_store", "--out", str(out_dir / "passage_store.json")]
        + (["--rows", "20000"] if quick else []),
        "api_load": [*python, "bench.api_load", "--out", str(out_dir / "api_load.json")]
        + (["--clients", "4", "--questions", "2"] if quick else []),
        "api_relay": [*python, "bench.api_relay", "--out", str(out_dir / "api_relay.json")]
        + (["--requests", "3"] if quick else []),
        "request_cpu": [*python, "bench.request_cpu", "--out", str(out_dir / "request_cpu.json")]
        + (["--questions", "100"] if quick else []),
    }
    if gpu:
        runs["gpu"] = [*python, "bench.gpu", "--out", str(out_dir / "gpu.json")]
    return runs


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary(out_dir: Path) -> str:
    """Markdown of the headline figures in the JSON results found in ``out_dir``."""
    lines = ["# Benchmark summary", ""]
    for path in sorted(out_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        where = data.get("machine") or {"cpu": data.get("gpu"), "date": data.get("date")}
        lines.append(f"## {path.name}")
        lines.append(f"machine: {where.get('cpu')} ({where.get('cores', data.get('cpu_cores'))} cores), "
                     f"date: {where.get('date')}, commit: {where.get('commit', '-')}")  # fmt: skip
        lines.append("")
        lines.append("| figure | value |")
        lines.append("| --- | --- |")
        for key, value in flatten(data):
            if key.startswith("machine") or key in ("benchmark", "date", "gpu"):
                continue
            lines.append(f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines)


def flatten(data, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{name}."))
        elif isinstance(value, float):
            rows.append((name, fmt(value, 3)))
        elif not isinstance(value, list):
            rows.append((name, str(value)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("--gpu", action="store_true", help="also bench.gpu (needs CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that everything runs")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    if args.action == "run":
        for name, command in commands(args.out_dir, args.gpu, args.quick).items():
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
            if subprocess.run(command, cwd=ROOT).returncode != 0:
                failed.append(name)
    (args.out_dir / "summary.md").write_text(summary(args.out_dir), encoding="utf-8")
    print(f"wrote {args.out_dir / 'summary.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
