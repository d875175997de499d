"""Short kernels beside a saturating GEMM load on one GPU: time slices, NVIDIA MPS, and MPS
with the load at client priority "below normal".

    python -m bench.mps_priority [--out OUT.json] [--seconds 6]

Why: under load the product's retrieval (E5's graph, the scan) waited for SMs behind
vLLM's prefill on the shared card, with and without MPS (docs/benchmarks.md, issue 26).
This measures whether MPS, or MPS with the engine at ``CUDA_MPS_CLIENT_PRIORITY=1``,
lets short work through, without vLLM or the product. (On an H200, 2026-12-05: neither
did; time slices did best, so the product sets no priority: docs/llm.md.) A *probe* process
times a burst of small fp16 GEMMs (E5-sized: 2,048 tokens × 1,024 → 4,096, 96 of them)
every 20 ms; a *load* process runs back-to-back large GEMMs (prefill-sized, 16,384 ×
5,120 → 13,824). In each mode, with both processes started and warmed up: the probe
alone for half of ``--seconds``, then the load alone for half (its TFLOP/s), then both
for half (the probe's times and the load's TFLOP/s beside it). Modes: no MPS, MPS with
both at normal priority, MPS with the load below normal. Each mode gets fresh processes
(a CUDA context joins MPS when it is created), and the control daemon is started and
stopped here; a mode says whether an MPS server served it. Compute-bound bursts stand in
for E5; the scan, mostly memory-bound, is not modelled. ``--device cpu`` checks the
orchestration with tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import machine, percentiles_ms
from bench.gpu_host import mps_daemon, nvidia_smi

PROBE_SHAPE = (2048, 1024, 4096)
PROBE_KERNELS = 96
LOAD_SHAPE = (16384, 5120, 13824)
MODES = {
    "no_mps": (False, None),
    "mps_normal": (True, None),
    "mps_load_below_normal": (True, "1"),
}
#: A mode's children are killed after this long (a child stuck connecting to MPS).
MODE_TIMEOUT_S = 180


def shape_on(device: str, shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The GEMM shape used on ``device``: tiny on the CPU, where only the orchestration is checked."""
    return shape if device == "cuda" else tuple(max(8, size // 64) for size in shape)


def _tensors(shape: tuple[int, int, int], device: str):
    import torch

    rows, inner, cols = shape_on(device, shape)
    dtype = torch.float16 if device == "cuda" else torch.float32
    return torch.randn(rows, inner, device=device, dtype=dtype), torch.randn(inner, cols, device=device, dtype=dtype)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _wait_for_go() -> None:
    sys.stdin.readline()


def probe(device: str, seconds: float) -> None:
    """Warms up and says "ready"; on each line on stdin times bursts for half of
    ``seconds`` and prints their percentiles (alone, then beside the load)."""

    def bursts() -> dict:
        times = []
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            for _ in range(PROBE_KERNELS):
                a @ b
            _sync(device)
            times.append(time.perf_counter() - started)
            time.sleep(0.02)
        return percentiles_ms(times)

    a, b = _tensors(PROBE_SHAPE, device)
    for _ in range(3):
        a @ b
    _sync(device)
    print("ready", flush=True)
    _wait_for_go()
    print(json.dumps({"probe_alone_ms": bursts()}), flush=True)
    _wait_for_go()
    print(json.dumps({"probe_beside_load_ms": bursts()}), flush=True)


def load(device: str, seconds: float) -> None:
    """Warms up and says "ready"; on a line on stdin runs large GEMMs back to back for
    half of ``seconds`` alone, says "running", and as long again beside the probe; prints
    the TFLOP/s of each half."""
    a, b = _tensors(LOAD_SHAPE, device)
    a @ b
    _sync(device)
    print("ready", flush=True)
    _wait_for_go()
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]

    def tflops() -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 2:
            for _ in range(8):
                a @ b
            _sync(device)
            done += 8
        # Three significant digits: a CPU under load reads ~0.0004, which 3 decimals made 0.
        return float(f"{flops * done / (time.perf_counter() - started) / 1e12:.3g}")

    alone = tflops()
    print("running", flush=True)
    print(json.dumps({"load_tflops_alone": alone, "load_tflops_beside_probe": tflops()}), flush=True)


def _child(role: str, device: str, seconds: float, priority: str | None) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "CUDA_MPS_CLIENT_PRIORITY"}
    if priority is not None:
        env["CUDA_MPS_CLIENT_PRIORITY"] = priority
    command = [sys.executable, "-m", "bench.mps_priority", f"--{role}", "--device", device, "--seconds", str(seconds)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _tell(child: subprocess.Popen) -> None:
    child.stdin.write("go\n")
    child.stdin.flush()


def _expect(child: subprocess.Popen, line: str) -> None:
    said = child.stdout.readline().strip()
    if said != line:
        raise ChildError(f"expected {line!r}, got {said!r} (its stderr above)")


class ChildError(Exception):
    """A child process said something else than the protocol's next line, or nothing."""


def _mps_control(*args: str, text: str | None = None, capture: bool = True) -> subprocess.CompletedProcess | None:
    """nvidia-cuda-mps-control; None where it is not installed or hangs. ``capture=False``
    for the daemon's start: its background process would hold a pipe."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    command = ["nvidia-cuda-mps-control", *args]
    try:
        return subprocess.run(command, input=text, stdout=output, stderr=output, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _mps_servers() -> str:
    done = _mps_control(text="get_server_list\n")
    return done.stdout.strip() if done is not None else ""


def _stop_mps() -> None:
    _mps_control(text="quit\n")
    deadline = time.monotonic() + 15
    while mps_daemon() and time.monotonic() < deadline:
        time.sleep(0.2)


def run_mode(device: str, seconds: float, use_mps: bool, priority: str | None) -> dict:
    """One mode with fresh processes; both are stopped however it ends, and what was
    measured before a failure is kept."""
    if mps_daemon():
        return {"error": "an MPS control daemon was already running: not started or stopped by this bench"}
    if use_mps:
        started = _mps_control("-d", capture=False)
        if started is None or started.returncode != 0:
            return {"error": "nvidia-cuda-mps-control -d failed or is not installed"}
    result: dict = {"priority_of_load": priority or "normal (unset)"}
    children: list[subprocess.Popen] = []

    def kill_children() -> None:
        for child in children:
            child.kill()

    watchdog = threading.Timer(MODE_TIMEOUT_S, kill_children)
    watchdog.start()
    try:
        prober = _child("probe", device, seconds, None)
        children.append(prober)
        loader = _child("load", device, seconds, priority)
        children.append(loader)
        _expect(prober, "ready")
        _expect(loader, "ready")
        if use_mps:
            result["mps_servers"] = _mps_servers()  # empty: the clients fell back to no MPS
        _tell(prober)
        result |= json.loads(prober.stdout.readline())
        _tell(loader)
        _expect(loader, "running")
        _tell(prober)  # the probe's half falls inside the load's second half
        result |= json.loads(prober.stdout.readline())
        result |= json.loads(loader.stdout.readline())
    except (ChildError, OSError, json.JSONDecodeError) as exc:
        result["error"] = f"a child process failed: {exc}"
    finally:
        watchdog.cancel()
        kill_children()
        for child in children:
            child.wait()
        if use_mps:
            _stop_mps()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.mps_priority", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--seconds", type=float, default=6.0, help="each phase takes half")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.device, args.seconds)
        return {}
    if args.load:
        load(args.device, args.seconds)
        return {}
    report = {"benchmark": "mps_priority", **machine(), "device": args.device,
              "probe": {"shape": shape_on(args.device, PROBE_SHAPE), "kernels": PROBE_KERNELS},
              "load_shape": shape_on(args.device, LOAD_SHAPE)}  # fmt: skip
    if args.device == "cuda":  # no CUDA context here: nothing of this process outside MPS
        report["gpu"] = (nvidia_smi("--query-gpu=name") or ["?"])[0]
    modes = MODES if args.device == "cuda" else {"no_mps": MODES["no_mps"]}  # no MPS without a GPU
    for name, (use_mps, priority) in modes.items():
        report[name] = run_mode(args.device, args.seconds, use_mps, priority)
        print(json.dumps({name: report[name]}), flush=True)
        if args.out:  # after each mode: a later one that fails keeps the earlier ones
            args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
