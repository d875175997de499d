"""The ``faiss`` stage: the IVF-PQ index the ``faiss-cpu`` / ``faiss-gpu`` backends read.

Built as the hub's ``index_IVF2048_PQ256.faiss`` is: ``IndexIVFPQ(IndexFlatL2(d), d,
nlist, m, 8)`` over unit vectors, L2 metric (smaller is closer). The coarse quantizer
is trained with ``faiss.Kmeans`` on a seeded random sample of the vectors, on the GPU
when faiss has GPUs (faiss-gpu on a CUDA host), then the product quantizer on the same
sample's residuals, then every vector is added shard by shard (never all of them in
memory: 5.5M x 1024 in float32 is 21 GiB).

Small corpora get a smaller shape (:func:`index_shape`): ``nlist`` the largest power of
two with 39 training vectors per list (faiss's minimum), ``m`` the largest divisor of
the dimension up to 256, and codes of fewer than 8 bits below 256 vectors. The file name
follows the shape (``index_IVF<nlist>_PQ<m>[x<bits>].faiss``); the manifest records it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import faiss
import numpy as np

from pipeline.build.files import staged
from pipeline.retrieval.dense.vector_files import ARRAY_KEY, npz_shape

logger = logging.getLogger("pipeline.build")

NLIST, PQ_M, PQ_BITS = 2048, 256, 8
#: Below this many vectors one thread is faster: OpenMP's start-up (and, on a busy host,
#: its spinning) costs more than the work (a 1,145-vector index: 2 s on one thread, 18 s on two).
THREADED_FROM_ROWS = 100_000
#: faiss warns below 39 training vectors per centroid.
MIN_POINTS_PER_CENTROID = 39
KMEANS_ITERATIONS = 20
SEED = 1234


def index_shape(rows: int, dimension: int, nlist: int = NLIST, m: int = PQ_M) -> tuple[int, int, int]:
    """(nlist, m, bits) for ``rows`` vectors: the hub's 2048 / 256 / 8 when there are enough."""
    lists = 2 ** int(math.log2(max(rows // MIN_POINTS_PER_CENTROID, 1)))
    subquantizers = max(d for d in range(1, min(m, dimension) + 1) if dimension % d == 0)
    bits = min(PQ_BITS, int(math.log2(max(rows, 2))))
    return min(nlist, lists), subquantizers, bits


def _vectors(path: Path) -> np.ndarray:
    with np.load(path) as archive:
        vectors = archive[ARRAY_KEY].astype(np.float32)
    faiss.normalize_L2(vectors)
    return vectors


def training_sample(files: list[Path], size: int, seed: int = SEED) -> np.ndarray:
    """``size`` vectors drawn without replacement from all files (all of them when fewer)."""
    counts = [npz_shape(path)[0][0] for path in files]
    total = sum(counts)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    parts, start = [], 0
    for path, count in zip(files, counts, strict=True):
        local = chosen[(chosen >= start) & (chosen < start + count)] - start
        if len(local):
            parts.append(_vectors(path)[local])
        start += count
    return np.concatenate(parts)


def build_index(files: list[Path], target: Path, nlist: int, m: int, bits: int, train_size: int) -> dict:
    """Train, fill and write the index; what was done, for the manifest."""
    started = time.perf_counter()
    threads = faiss.omp_get_max_threads()
    if sum(npz_shape(path)[0][0] for path in files) < THREADED_FROM_ROWS:
        faiss.omp_set_num_threads(1)
    try:
        index, on_gpu, train_seconds = _trained_and_filled(files, nlist, m, bits, train_size)
    finally:
        faiss.omp_set_num_threads(threads)
    with staged(target) as staging:  # from Python, so that a full disk is an OSError like any other write
        staging.write_bytes(faiss.serialize_index(index).tobytes())
    logger.info(
        "faiss: IVF%d,PQ%dx%d over %s vectors (k-means on the %s) in %.0fs",
        nlist,
        m,
        bits,
        f"{index.ntotal:,}",
        "GPU" if on_gpu else "CPU",
        time.perf_counter() - started,
    )
    return {
        "vectors": int(index.ntotal),
        "dimension": index.d,
        "nlist": nlist,
        "m": m,
        "bits": bits,
        "metric": "L2",
        "train_size": min(train_size, int(index.ntotal)),
        "kmeans_on": "gpu" if on_gpu else "cpu",
        "train_seconds": train_seconds,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _trained_and_filled(
    files: list[Path], nlist: int, m: int, bits: int, train_size: int
) -> tuple[faiss.Index, bool, float]:
    started = time.perf_counter()
    sample = training_sample(files, train_size)
    dimension = sample.shape[1]
    on_gpu = faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(dimension, nlist, niter=KMEANS_ITERATIONS, seed=SEED, gpu=on_gpu)
    kmeans.train(sample)
    quantizer = faiss.IndexFlatL2(dimension)
    quantizer.add(kmeans.centroids)
    index = faiss.IndexIVFPQ(quantizer, dimension, nlist, m, bits)
    index.train(sample)  # the quantizer is trained: only the product quantizer learns here
    train_seconds = round(time.perf_counter() - started, 1)
    for path in files:
        index.add(_vectors(path))
    return index, on_gpu, train_seconds
