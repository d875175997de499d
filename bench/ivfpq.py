"""The seed's IVF-PQ index at any size without encoding any vectors: trained on a sample,
its lists filled with random codes, as many per list as a real index of that size holds,
so that each probe scans what the real index scans (its answers are meaningless; its
timings are not)."""

from __future__ import annotations

import numpy as np


def fill_with_random_codes(index, rows: int, rng: np.random.Generator) -> None:
    """Spread ``rows`` random codes evenly over the lists of a trained, empty IVF-PQ index."""
    import faiss

    nlist = index.nlist
    per_list = np.full(nlist, rows // nlist)
    per_list[: rows % nlist] += 1
    start = 0
    for list_no, count in enumerate(per_list):
        codes = rng.integers(0, 256, size=(count, index.code_size), dtype=np.uint8)
        ids = np.arange(start, start + count, dtype=np.int64)
        index.invlists.add_entries(list_no, int(count), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        start += count
    index.ntotal = rows
