"""GPU memory explained in Japanese for the settings page: what a gpu_memory_utilization
value leaves for the query encoder and the vector search on this host."""

from __future__ import annotations

from pipeline.core.gpu import CUDA_CONTEXT_GIB, ENCODER_GIB, GpuMemory, search_gib


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
