"""Short kernels beside a saturating GEMM load on one GPU: time slices, NVIDIA MPS, and MPS
with the load at client priority "below normal".

    python -m bench.mps_priority [--out OUT.json] [--seconds 6]

Why: under load the product's retrieval (E5's graph, the scan) waited for SMs behind
vLLM's prefill on the shared card, with and without MPS (docs/benchmarks.md, issue 26).
The product now starts its engine with ``CUDA_MPS_CLIENT_PRIORITY=1``; this measures
whether that lets short work through, without vLLM or the product: a *probe* process
times a burst of small fp16 GEMMs (E5-sized: 2,048 tokens × 1,024 → 4,096, 96 of them)
every 20 ms, first alone, then while a *load* process runs back-to-back large GEMMs
(prefill-sized, 16,384 × 5,120 → 13,824) and reports the TFLOP/s it kept. Three modes:
no MPS, MPS with both at normal priority, MPS with the load below normal. Each mode gets
fresh processes (a CUDA context joins MPS when it is created); the control daemon is
started and stopped here. ``--device cpu`` checks the orchestration with tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine

PROBE_SHAPE = (2048, 1024, 4096)
PROBE_KERNELS = 96
LOAD_SHAPE = (16384, 5120, 13824)
MODES = {
    "no_mps": (False, None),
    "mps_normal": (True, None),
    "mps_load_below_normal": (True, "1"),
}


def _tensors(shape: tuple[int, int, int], device: str):
    import torch

    if device == "cpu":
        shape = tuple(max(8, size // 64) for size in shape)
    dtype = torch.float16 if device == "cuda" else torch.float32
    rows, inner, cols = shape
    return torch.randn(rows, inner, device=device, dtype=dtype), torch.randn(inner, cols, device=device, dtype=dtype)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def probe(device: str, seconds: float) -> None:
    """Times bursts alone, says so, then waits for a line on stdin and times them again."""

    def bursts() -> list[float]:
        times = []
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            for _ in range(PROBE_KERNELS):
                a @ b
            _sync(device)
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)
        return times

    a, b = _tensors(PROBE_SHAPE, device)
    for _ in range(3):
        a @ b
    _sync(device)
    print(json.dumps({"alone_ms": _quantiles(bursts())}), flush=True)
    sys.stdin.readline()
    print(json.dumps({"beside_load_ms": _quantiles(bursts())}), flush=True)


def load(device: str, seconds: float) -> None:
    """Warms up, says so, waits for a line on stdin, then runs back-to-back large GEMMs for
    ``seconds`` and prints the TFLOP/s kept."""
    a, b = _tensors(LOAD_SHAPE, device)
    a @ b
    _sync(device)
    print("ready", flush=True)
    sys.stdin.readline()
    print("running", flush=True)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(8):
            a @ b
        _sync(device)
        done += 8
    elapsed = time.perf_counter() - started
    rows, inner = a.shape
    print(json.dumps({"load_tflops": round(2 * rows * inner * b.shape[1] * done / elapsed / 1e12, 1)}), flush=True)


def _quantiles(times: list[float]) -> dict:
    ordered = sorted(times)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "n": len(ordered),
    }


def _child(role: str, device: str, seconds: float, priority: str | None) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "CUDA_MPS_CLIENT_PRIORITY"}
    if priority is not None:
        env["CUDA_MPS_CLIENT_PRIORITY"] = priority
    command = [sys.executable, "-m", "bench.mps_priority", f"--{role}", "--device", device, "--seconds", str(seconds)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _tell(child: subprocess.Popen) -> None:
    child.stdin.write("go\n")
    child.stdin.flush()


def _mps(start: bool) -> bool:
    if start:
        return subprocess.run(["nvidia-cuda-mps-control", "-d"], check=False).returncode == 0
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, check=False)
    time.sleep(1)  # the daemon and its server exit
    return False


def run_mode(device: str, seconds: float, use_mps: bool, priority: str | None) -> dict:
    """One mode with fresh processes; both are stopped however it ends."""
    if use_mps and not _mps(True):
        return {"error": "nvidia-cuda-mps-control -d failed"}
    children: list[subprocess.Popen] = []
    try:
        prober = _child("probe", device, seconds, None)
        children.append(prober)
        loader = _child("load", device, seconds, priority)  # started at once, idle until told
        children.append(loader)
        result = json.loads(prober.stdout.readline())
        if loader.stdout.readline().strip() != "ready":
            return {**result, "error": "the load process did not start"}
        _tell(loader)
        loader.stdout.readline()  # "running"
        _tell(prober)  # its second half of ``seconds`` falls inside the load's ``seconds``
        result |= json.loads(prober.stdout.readline())
        result |= json.loads(loader.stdout.readline())
        return result
    except json.JSONDecodeError:  # a child died: its traceback went to stderr
        return {"error": "a child process ended early (its stderr above)"}
    finally:
        for child in children:
            child.kill()
            child.wait()
        if use_mps:
            _mps(False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.mps_priority", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--seconds", type=float, default=6.0, help="each probe phase takes half")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.device, args.seconds)
        return {}
    if args.load:
        load(args.device, args.seconds)
        return {}
    report = {"benchmark": "mps_priority", **machine(), "probe": {"shape": PROBE_SHAPE, "kernels": PROBE_KERNELS},
              "load_shape": LOAD_SHAPE}  # fmt: skip
    if args.device == "cuda":  # no CUDA context here: nothing of this process outside MPS
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, check=False).stdout.split("\n")  # fmt: skip
        report["gpu"] = names[0].strip()
    modes = MODES if args.device == "cuda" else {"no_mps": MODES["no_mps"]}  # no MPS without a GPU
    for name, (use_mps, priority) in modes.items():
        report[name] = run_mode(args.device, args.seconds, use_mps, priority)
        print(json.dumps({name: report[name]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
