"""What the GPUs of this host have: for the settings help text and the status page."""

from __future__ import annotations

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


def utilization_help(utilization: float, tensor_parallel_size: int, devices: list[GpuMemory]) -> str:
    """What a gpu_memory_utilization value means on this host, in Japanese."""
    if not devices:
        return "この環境には GPU がありません（vLLM は GPU ホストでのみ動きます）。"
    card = devices[0]
    reserved = utilization * card.total_gib
    rest = card.total_gib - reserved
    return (
        f"{card.name}（{card.total_gib:.1f} GiB）の {utilization:.0%} = {reserved:.1f} GiB を vLLM が確保します"
        f"（テンソル並列 {tensor_parallel_size} 枚それぞれで）。残り {rest:.1f} GiB に、質問の埋め込みモデル"
        f"（E5-large fp16 で約 1.1 GiB）などが収まる必要があります。"
        f"ELYZA-13B の重みは bf16 で約 26 GB なので、1 枚なら重み＋KV キャッシュのために 0.5 以上が必要です。"
    )
