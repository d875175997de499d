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


#: E5-large in fp16 on the GPU, with room for activations, plus this process's CUDA context.
ENCODER_GIB = 1.2
CUDA_CONTEXT_GIB = 0.6
#: Bytes per passage that faiss-gpu holds for the hub's IVF2048-PQ256 index (code + id).
IVFPQ_BYTES_PER_ROW = 256 + 8


def search_gib(backend: str, rows: int, dimension: int = 1024) -> float:
    """GPU memory a vector-search backend takes for ``rows`` passages."""
    if backend == "exact":
        return rows * dimension * 2 / GIB
    if backend == "faiss-gpu":
        return rows * IVFPQ_BYTES_PER_ROW / GIB
    return 0.0


def utilization_help(utilization: float, tensor_parallel_size: int, devices: list[GpuMemory],
                     backend: str = "faiss-cpu", rows: int = 0) -> str:  # fmt: skip
    """What a gpu_memory_utilization value means on this host, in Japanese: vLLM takes
    that share of the whole card; the query encoder and the search backend live in the rest."""
    if not devices:
        return "この環境には GPU がありません（vLLM は GPU ホストでのみ動きます）。"
    card = devices[0]
    reserved = utilization * card.total_gib
    rest = card.total_gib - reserved
    needed = CUDA_CONTEXT_GIB + ENCODER_GIB + search_gib(backend, rows)
    verdict = "足ります" if rest >= needed else "足りません。値を下げるか、検索方式を変えてください"
    return (
        f"{card.name}（{card.total_gib:.1f} GiB）の {utilization:.0%} = {reserved:.1f} GiB を vLLM が確保します"
        f"（テンソル並列 {tensor_parallel_size} 枚それぞれで）。残りは {rest:.1f} GiB で、CUDA コンテキスト"
        f"（約 {CUDA_CONTEXT_GIB} GiB）、質問の埋め込みモデル（約 {ENCODER_GIB} GiB）と"
        f"ベクトル検索「{backend}」（{search_gib(backend, rows):.1f} GiB）の合計 "
        f"{needed:.1f} GiB に{verdict}。ELYZA-13B の重みは bf16 で約 26 GB なので、1 枚なら重みと KV キャッシュの"
        "ために 0.45 以上が必要です。"
    )
