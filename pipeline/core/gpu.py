"""What the GPUs of this host have, and where models and indexes go: for the settings
and status pages, and for choosing a device."""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    total_gib: float
    free_gib: float

    @property
    def used_gib(self) -> float:
        return self.total_gib - self.free_gib


def resolve_device(requested: str) -> str:
    """``auto`` is CUDA when a GPU is visible, else the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpus() -> list[GpuMemory]:
    """Every visible CUDA device with its memory now; empty without CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        found.append(GpuMemory(index, torch.cuda.get_device_name(index), total / GIB, free / GIB))
    return found


@dataclass(frozen=True)
class ProductGpuUse:
    """What this process keeps on the first GPU (query encoder, vector search): measured
    once loaded, planned before."""

    encoder_gib: float
    search_gib: float
    measured: bool

    @property
    def total_gib(self) -> float:
        return self.encoder_gib + self.search_gib


def allocated_gib() -> float:
    """GPU memory this process's PyTorch holds now (0 without CUDA)."""
    import torch

    return torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else 0.0


def release_gpu_memory() -> None:
    """Give the memory of what was just let go back to the card: objects in reference
    cycles are collected first, then PyTorch's cache of freed blocks is emptied (other
    processes, vLLM among them, see it free again). Nothing to do where CUDA never ran."""
    from pipeline.core.cuda_graphs import CAPTURE_LOCK

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        with CAPTURE_LOCK:  # never while a graph is recorded
            torch.cuda.empty_cache()
