"""GPU memory the dense path takes, known before it loads: for the memory plan that sizes
the engine's share of the card and for the settings page's backend choices. Light (no
torch, no faiss), so neither has to import the searchers for a number."""

from __future__ import annotations

from pipeline.core.gpu import GIB, ProductGpuUse

#: E5-large in fp16 on the GPU, with room for activations, plus this process's CUDA context.
ENCODER_GIB = 1.2
CUDA_CONTEXT_GIB = 0.6
#: Bytes per passage that faiss-gpu holds for the hub's IVF2048-PQ256 index (code + id).
IVFPQ_BYTES_PER_ROW = 256 + 8
#: Most queries one vector search answers together (:class:`~.searchers.BatchingSearcher`).
MAX_QUERIES_PER_SEARCH = 64


def search_gib(backend: str, rows: int, dimension: int = 1024) -> float:
    """GPU memory a vector-search backend keeps for ``rows`` passages."""
    if backend == "exact":
        return rows * dimension * 2 / GIB
    if backend == "exact-int8":
        return rows * dimension / GIB
    if backend == "faiss-gpu":
        return rows * IVFPQ_BYTES_PER_ROW / GIB
    return 0.0


def search_work_gib(backend: str, rows: int) -> float:
    """GPU memory a search allocates while it runs: the exact scan's scores of a full
    batch of queries over every passage (fp16, or int32 from the int8 scan). The int8
    scan's recorded graphs hold as much for good in their pool (:func:`planned_gpu_use`),
    beside a search for more candidates than they keep, which scans op by op."""
    score_bytes = {"exact": 2, "exact-int8": 4}.get(backend, 0)
    return MAX_QUERIES_PER_SEARCH * rows * score_bytes / GIB


def planned_gpu_use(device: str, backend: str, rows: int, scan_graphs: bool = False) -> ProductGpuUse:
    """What loading the query encoder and the vector search would take (nothing on the
    CPU), the int8 scan's recorded graphs (``scan_graphs``) with their pool. Once loaded,
    the card's free memory has the pool taken out already, and the measured use (memory
    allocated) leaves it out."""
    if device == "cpu":
        return ProductGpuUse(0.0, 0.0, measured=False)
    pool = search_work_gib(backend, rows) if scan_graphs and backend == "exact-int8" else 0.0
    return ProductGpuUse(ENCODER_GIB + CUDA_CONTEXT_GIB, search_gib(backend, rows) + pool, measured=False)
