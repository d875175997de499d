"""Nearest-neighbour search behind the vector store: FAISS (the prebuilt IVF-PQ index on
CPU or GPU, or a local flat index), or an exact scan of the raw passage vectors on the
GPU with torch, in fp16 or in int8 codes with exact re-scoring. Every searcher returns
similarities, higher is better.

The exact searcher keeps the whole fp16 matrix on the device (5.5M x 1024 = 11.4 GB) and
answers a query with one matrix-vector product and a top-k. Concurrent queries are
batched into one matrix product by :class:`BatchingSearcher`, since the scan costs the
same memory traffic for 1 query as for 64. The matrix's row count is padded with zero
rows to a multiple of :data:`ROW_ALIGNMENT`: with 5,555,583 rows cuBLAS picks slow
kernels (H100, docs/benchmarks.md: 64 queries 15.5 ms unpadded, 7.5 ms padded).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core.cuda_graphs import graph_thread, leave_failed_capture, record_graph, warm_up
from pipeline.core.errors import RetrieverUnavailableError
from pipeline.retrieval.dense.footprint import MAX_QUERIES_PER_SEARCH

logger = logging.getLogger(__name__)

#: Extra candidates of the fp16 scan that are re-scored in fp32.
RESCORE_MARGIN = 32
FLOAT32_EXACT_INTEGERS = 2**24
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
#: Rows of the exact searcher's matrix are padded to a multiple of this.
ROW_ALIGNMENT = 64
#: Consecutive scores whose maximum stands for them in :func:`best_columns`' first pass
#: (a divisor of :data:`ROW_ALIGNMENT`, so that every padded matrix's scores divide).
SCORE_GROUP = ROW_ALIGNMENT
#: Extra candidates of the int8 scan that are re-scored exactly.
INT8_RESCORE_MARGIN = 64
#: ``torch._int_mm`` on CUDA wants more than 16 rows on its left; queries are padded with
#: zero rows to this many (a multiple of 8, as cuBLASLt's int8 tiles are).
INT8_MIN_QUERY_ROWS = 24
#: Rows of the vectors file quantized at once while loading (128 MB for each fp32 copy).
INT8_CHUNK_ROWS = 32_768
#: Query counts with a recorded scan of their own (:class:`ScanGraph`); a search of fewer
#: queries replays the next larger one. They share one memory pool (the largest's).
SCAN_GRAPH_QUERIES = (1, 2, 4, 8, 16, 24, 32, 48, MAX_QUERIES_PER_SEARCH)
#: Candidates a recorded scan keeps for each query, best first: ``k`` + the margin up to
#: this many (k = 5 for dense retrieval, 50 for hybrid's dense half and the reranker's
#: candidates by default); a search that wants more scans op by op, beside the graphs'
#: pool (the memory plan counts both). Not every k the settings allow (1,000 + 64): on the
#: H100 a sorted top 1,088 made 64 questions' recorded scan 20.4 and 13.5 ms (two readings)
#: against 15.4 and 11.2 op by op.
SCAN_GRAPH_CANDIDATES = 128


def aligned_rows(rows: int) -> int:
    return -(-rows // ROW_ALIGNMENT) * ROW_ALIGNMENT


class Searcher(Protocol):
    ntotal: int
    d: int
    #: Whether ``nprobe`` means anything (an IVF index) or the search is exhaustive.
    is_ivf: bool

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of shape (len(vectors), k), best first; rows -1 where
        fewer than k were found."""

    def describe(self) -> str: ...

    def close(self) -> None:
        """Let go of the index or vectors (GPU memory included); searching afterwards raises
        :class:`SearcherClosedError`."""


class SearcherClosedError(RetrieverUnavailableError):
    """A search reached a searcher whose vectors were let go (a settings change replaced
    them while the search waited)."""

    def __init__(self) -> None:
        super().__init__(
            en="the vector index was replaced by a settings change; search again",
            ja="設定の変更でベクトル索引を入れ替えたため、この検索は中断されました。もう一度お試しください。",
        )


def device_chunks(host: np.ndarray, chunk_rows: int, device: str, dtype):
    """(first row, tensor on ``device`` in ``dtype``) for each ``chunk_rows`` rows of the
    memory-mapped ``host`` matrix: a writable copy of one chunk at a time, never all of it."""
    import torch

    for start in range(0, host.shape[0], chunk_rows):
        yield start, torch.from_numpy(np.array(host[start : start + chunk_rows])).to(device=device, dtype=dtype)


def best_columns(scores, size: int):
    """The columns of each row's ``size`` best ``scores``, best first: the best of the
    :data:`SCORE_GROUP` columns of the ``size`` groups with the highest maxima.

    Exact: every column outside those groups scores at most the lowest of their maxima,
    and those ``size`` maxima are columns scoring at least that, so the ``size`` best
    scores are among the groups' columns. Where ties make the choice, the columns may
    differ from ``torch.topk``'s, the scores do not. One pass reads the scores (the
    maxima); ``topk`` then selects among each row's 87,000 maxima (5.5M passages) and
    ``size`` x 64 gathered scores, where over 5.5M scores a row it makes several passes:
    on an H100 (2026-12-05) the int32 top-74 of 64 queries took 4.06 ms, their
    ``_int_mm`` 2.41. Widths that are no multiple of :data:`SCORE_GROUP`,
    or too few groups, take ``topk`` over every score."""
    import torch

    count, width = scores.shape
    size = min(size, width)
    groups = width // SCORE_GROUP
    if width % SCORE_GROUP or groups <= size:
        return torch.topk(scores, size, dim=1).indices
    maxima = scores.view(count, groups, SCORE_GROUP).amax(dim=2)
    leaders = torch.topk(maxima, size, dim=1, sorted=False).indices
    columns = (leaders.unsqueeze(2) * SCORE_GROUP + torch.arange(SCORE_GROUP, device=scores.device)).flatten(1)
    best = torch.topk(scores.gather(1, columns), size, dim=1).indices
    return columns.gather(1, best)


def shortlist(scores, size: int, ntotal: int):
    """The rows of each query's ``size`` best ``scores`` (at most ``ntotal``), ascending."""
    return best_columns(scores, min(size, ntotal)).sort(dim=1).values


def best_rescored(exact, candidates, stored, wanted: int, ntotal: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``wanted`` best of each query's ``candidates`` (rows, ascending, of ``ntotal``)
    by the fp32 inner product of ``exact`` with ``stored`` (their vectors), as
    (similarities, rows) on the host. Equal scores keep the rows' order, so that both exact
    searchers return the same rows for duplicated passages (as long as all copies are
    among the candidates)."""
    import torch

    # An elementwise product and a sum, not einsum: on the CPU einsum's matrix product gave
    # identical rows different last bits by their place among the candidates.
    rescored = (stored * exact[:, None, :]).sum(dim=2)
    values, order = torch.sort(rescored, dim=1, descending=True, stable=True)
    values, rows = values[:, :wanted], torch.gather(candidates, 1, order[:, :wanted])
    if ntotal >= FLOAT32_EXACT_INTEGERS:
        return values.cpu().numpy(), rows.cpu().numpy().astype(np.int64)
    # One copy back to the host instead of two (these row numbers are exact in float32).
    both = torch.cat([values, rows.float()], dim=1).cpu().numpy()
    return both[:, :wanted], both[:, wanted:].astype(np.int64)


class FaissSearcher:
    """A FAISS index. For an L2 index over unit vectors (the hub's IVF-PQ) the squared
    distance d = |q - p|^2 = 2 - 2 cos becomes the cosine 1 - d / 2."""

    def __init__(self, index, nprobe: int = 128, device: str = "cpu") -> None:
        import faiss

        self._faiss = faiss
        self.index = index
        self.nprobe = nprobe
        self.device = device
        self.ntotal = index.ntotal
        self.d = index.d
        self.is_ivf = faiss.try_extract_index_ivf(index) is not None

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        index = self.index
        if index is None:
            raise SearcherClosedError()
        params = self._faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe)) if self.is_ivf else None
        distances, rows = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)
        if index.metric_type == self._faiss.METRIC_L2:
            return 1.0 - distances / 2.0, rows
        return distances, rows

    def describe(self) -> str:
        return f"{type(self.index).__name__} ({self.device})"

    def close(self) -> None:
        """A GPU index holds its GPU resources: dropping it frees both."""
        self.index = None


class ExactSearcher:
    """Exact inner products against every passage vector held on ``device``: an fp16
    scan, then the best ``k + 32`` re-scored in fp32, so the order is that of fp32."""

    is_ivf = False

    def __init__(self, matrix, device: str, ntotal: int | None = None) -> None:
        """``matrix`` (torch, (rows, d)) holds the passage vectors in its first ``ntotal``
        rows (all by default). Without zero padding to :func:`aligned_rows` it is copied
        into a padded one; large matrices come padded from :meth:`allocate`."""
        self.ntotal = int(matrix.shape[0]) if ntotal is None else ntotal
        self.d = int(matrix.shape[1])
        if matrix.shape[0] != aligned_rows(self.ntotal):
            padded = self.allocate(self.ntotal, self.d, matrix.dtype, matrix.device)
            padded[: self.ntotal] = matrix[: self.ntotal]
            matrix = padded
        self.matrix = matrix
        self.device = device

    @property
    def vectors(self):
        """The passage vectors, without the padding rows (a view)."""
        return self.matrix[: self.ntotal]

    @staticmethod
    def allocate(rows: int, dimension: int, dtype, device):
        """A matrix for ``rows`` vectors (left uninitialised) and its zero padding rows."""
        import torch

        matrix = torch.empty((aligned_rows(rows), dimension), dtype=dtype, device=device)
        matrix[rows:] = 0
        return matrix

    @classmethod
    def from_file(cls, path: Path, device: str, chunk_rows: int = 262_144) -> ExactSearcher:
        """Load an .npy matrix onto the device chunk by chunk (never a full host copy).
        fp16 stays fp16 on CUDA; on the CPU the matrix is float32."""
        import torch

        host = np.load(path, mmap_mode="r")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        matrix = cls.allocate(host.shape[0], host.shape[1], dtype, device)
        for start, part in device_chunks(host, chunk_rows, device, dtype):
            matrix[start : start + len(part)] = part
        return cls(matrix, device, ntotal=host.shape[0])

    @staticmethod
    def bytes_needed(rows: int, dimension: int, device: str) -> int:
        return aligned_rows(rows) * dimension * (2 if device.startswith("cuda") else 4)

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if self.matrix is None:
            raise SearcherClosedError()
        with torch.inference_mode():
            exact = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
            scores = exact.to(self.matrix.dtype) @ self.matrix.T
            scores[:, self.ntotal :] = float("-inf")  # the padding rows
            # fp16 scores carry ~3 significant digits: near-ties among close passages can swap.
            # Take a margin of candidates and re-score those few rows in fp32.
            candidates = shortlist(scores, k + RESCORE_MARGIN, self.ntotal)
            return best_rescored(exact, candidates, self.matrix[candidates].float(), min(k, self.ntotal), self.ntotal)

    def describe(self) -> str:
        precision = "" if self.matrix is None else f" fp{16 if self.matrix.element_size() == 2 else 32}"
        return f"exact{precision} scan ({self.device})"

    def close(self) -> None:
        self.matrix = None


class Int8Searcher:
    """The exact scan at half the memory traffic: the passage vectors as int8 codes on
    ``device``, scanned with ``torch._int_mm`` (cuBLASLt's int8 GEMM on CUDA) against the
    query quantized the same way; the best ``k + 64`` are re-scored in fp32 against the
    stored vectors on the host, read from the vectors file (the page cache; 74 rows of 2 KB
    for k = 10), so that the rows are the exact searcher's whenever the true top ``k`` are
    among them, and the scores too, up to the last bits of an fp32 sum (on a GPU the exact
    searcher sums on the card). The codes take half the fp16
    matrix's GPU memory.

    The codes are the vectors less the middle of each dimension's range, one step per
    dimension (its range over 254: nothing is clipped). Centring takes out what all
    passages share (E5's vectors have a large common part), so that the steps resolve what
    tells passages apart; it changes a query's every score by the same amount, so not their
    order. Folding the steps into the query keeps the int32 products in score order: with
    p - centre ~ step * p8, q . (p - centre) ~ (q * step) . p8, and ``q * step`` is
    quantized with one scale per query.

    Re-scoring where the stored rows are leaves one copy to the device (the queries) and
    one back (their candidates). With
    ``scan_graphs`` (CUDA) the scan up to the candidates is recorded at load as one CUDA
    graph per query count (:class:`ScanGraph`), so that a search is three calls into torch
    instead of some thirty: under load each call waits for the GIL behind the other
    requests, and each kernel launch for the card, which vLLM's kernels share."""

    is_ivf = False

    def __init__(self, codes, steps, vectors: np.ndarray, device: str, margin: int = INT8_RESCORE_MARGIN) -> None:
        """``codes`` (torch int8, :func:`aligned_rows` rows, zero padding rows) and ``steps``
        (torch float32, one per dimension) on ``device``; ``vectors`` the stored vectors
        (numpy, a memory map of the file); ``margin`` the extra candidates re-scored."""
        self.ntotal, self.d = (int(n) for n in vectors.shape)
        self.codes, self.steps, self.host_vectors, self.device = codes, steps, vectors, device
        self.margin = margin
        #: The recorded scans by query count (:meth:`record_scans`), sharing one memory pool.
        self.scan_graphs: dict[int, ScanGraph] = {}
        #: Held by a replay: the graphs share their pool and each one's buffers.
        self.replaying = threading.Lock()

    @classmethod
    def from_file(
        cls, path: Path, device: str, chunk_rows: int = INT8_CHUNK_ROWS, scan_graphs: bool = False
    ) -> Int8Searcher:
        """Two passes over the .npy file, a chunk at a time (never a full copy in host or
        GPU memory): each dimension's range, then the codes; with ``scan_graphs``, the
        scans recorded. Raises RuntimeError when this card's int8 GEMM is missing or wrong."""
        import torch

        from pipeline.core.gpu import release_gpu_memory

        host = np.load(path, mmap_mode="r")
        codes = torch.zeros((aligned_rows(host.shape[0]), host.shape[1]), dtype=torch.int8, device=device)
        searcher = cls(codes, _quantize(host, codes, chunk_rows), host, device)
        searcher._check_kernel()
        release_gpu_memory()  # the chunks' and the check's temporaries, back to the card
        if scan_graphs:
            searcher.record_scans()
        return searcher

    def record_scans(self) -> None:
        """Record the scan of every query count of :data:`SCAN_GRAPH_QUERIES` on the
        process's graph thread. On the CPU (where the setting's default asks for them too),
        or should a capture fail, the searcher scans without graphs and says so in the log:
        same candidates, more calls."""
        if not self.device.startswith("cuda"):
            logger.info("recorded int8 scans need a CUDA device, not %s; scanning without them", self.device)
            return
        graph_thread().run(self._record_scans_or_give_up)

    def _record_scans_or_give_up(self) -> None:
        """The graphs published together, or not at all; after a failure, what the
        recording held goes back to the card (once the error and its frames are gone)."""
        from pipeline.core.gpu import release_gpu_memory

        try:
            self.scan_graphs = self._recorded_scans()
            return
        except RuntimeError as exc:
            logger.warning("recording the int8 scan as CUDA graphs failed (%s); scanning without them", exc)
        leave_failed_capture(self.device)
        release_gpu_memory()

    def _recorded_scans(self) -> dict[int, ScanGraph]:
        """Every count warmed up first, largest first (each warm-up's scores are the next
        one's, in PyTorch's cache: the peak is one batch of scores), then recorded, largest
        first, into one pool that the first sizes."""
        import torch

        pool, stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream(self.device)
        scans = [ScanGraph(self, queries) for queries in sorted(SCAN_GRAPH_QUERIES, reverse=True)]
        for scan in scans:
            warm_up(scan.step, stream)
        for scan in scans:
            scan.record(pool, stream)
        return {scan.queries: scan for scan in scans}

    def _check_kernel(self) -> None:
        """The int8 GEMM on this card against exact int64 products on the host: random
        queries against the first, the last and a sample of the rows."""
        import torch

        generator = torch.Generator().manual_seed(0)
        probe = torch.randint(-127, 128, (INT8_MIN_QUERY_ROWS, self.d), dtype=torch.int8, generator=generator)
        picked = torch.unique(torch.cat([
            torch.arange(min(64, self.ntotal)),
            torch.arange(max(self.ntotal - 64, 0), self.ntotal),
            torch.randint(0, self.ntotal, (64,), generator=generator),
        ]))  # fmt: skip
        with torch.inference_mode():
            picked = picked.to(self.device)
            scores = torch._int_mm(probe.to(self.device), self.codes.T)[:, picked].cpu()
            expected = probe.long() @ self.codes[picked].cpu().long().T
        if not torch.equal(scores.long(), expected):
            raise RuntimeError(f"the int8 matrix product on {self.device} gives wrong results")

    @staticmethod
    def bytes_needed(rows: int, dimension: int, device: str) -> int:
        return aligned_rows(rows) * dimension

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        return self.rescored(queries, self.candidates(queries, k), k)

    def candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Each query's (float32 rows) ``k`` + margin best rows by the int8 scan, ascending:
        through the recorded scan of the next larger query count where one keeps enough."""
        import torch

        codes, steps, graphs = self.codes, self.steps, self.scan_graphs  # close() may come meanwhile
        if codes is None or steps is None:
            raise SearcherClosedError()
        size = min(k + self.margin, self.ntotal)
        recorded = next((graphs[n] for n in SCAN_GRAPH_QUERIES if n >= len(queries) and n in graphs), None)
        if recorded is not None and size <= recorded.candidates.shape[1]:
            return np.sort(recorded.shortlist(queries)[:, :size], axis=1)
        with torch.inference_mode():
            scores = int8_scores(torch.from_numpy(queries).to(self.device), codes, steps, self.ntotal)
            return shortlist(scores, size, self.ntotal).cpu().numpy()

    def rescored(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of each query's ``candidates`` (:meth:`candidates`, or more) by
        their vectors as stored (fp16, from the page cache), re-scored on the host in fp32."""
        import torch

        host = self.host_vectors
        if host is None:
            raise SearcherClosedError()
        stored = torch.from_numpy(host[candidates.ravel()]).float().view(*candidates.shape, self.d)
        with torch.inference_mode():
            return best_rescored(
                torch.from_numpy(queries), torch.from_numpy(candidates), stored, min(k, self.ntotal), self.ntotal
            )

    def describe(self) -> str:
        recorded = f", recorded as {len(self.scan_graphs)} CUDA graphs" if self.scan_graphs else ""
        return f"exact int8 scan with fp32 re-scoring ({self.device}{recorded})"

    def close(self) -> None:
        self.codes = self.steps = self.host_vectors = None
        self.scan_graphs = {}  # their pool goes back with the next release of GPU memory


def int8_scores(queries, codes, steps, ntotal: int):
    """The int32 scores of the int8 scan of ``queries`` (float32, on the codes' device)
    against ``codes`` (their first ``ntotal`` rows passages, the rest padding, which
    scores lowest), the queries folded with ``steps`` and quantized with one scale each."""
    import torch

    folded = queries * steps
    scale = folded.abs().amax(dim=1, keepdim=True).clamp_min(FLOAT32_TINY) / 127
    count = len(queries)
    padded = max(INT8_MIN_QUERY_ROWS, count) if codes.is_cuda else count
    quantized = torch.zeros((padded, codes.shape[1]), dtype=torch.int8, device=codes.device)
    quantized[:count] = torch.round(folded / scale).to(torch.int8)
    # Row-major queries times the codes' transposed view (no copy): the layout of
    # cuBLASLt's int8 GEMM that torch's own tests run from sm80 (older cards: CUDA >= 12.3).
    scores = torch._int_mm(quantized, codes.T)[:count]
    scores[:, ntotal:] = torch.iinfo(torch.int32).min
    return scores


class ScanGraph:
    """The int8 scan of up to ``queries`` queries up to their candidates, as one CUDA graph
    (:func:`~pipeline.core.cuda_graphs.record_graph`): the queries folded and quantized,
    the int8 GEMM, the padding rows masked and the top :data:`SCAN_GRAPH_CANDIDATES` of
    each query, best first. Its static buffers are the queries in and the candidates out;
    a replay sees the rows of its queries (the rest hold an earlier search's, scanned and
    ignored). It keeps the codes and steps that the graph reads, not the searcher."""

    def __init__(self, searcher: Int8Searcher, queries: int) -> None:
        import torch

        self._torch = torch
        self.queries = queries
        self._inputs = searcher.codes, searcher.steps, searcher.ntotal
        self._size = min(SCAN_GRAPH_CANDIDATES, searcher.ntotal)
        self._replaying = searcher.replaying
        with torch.inference_mode():
            self._device_queries = torch.zeros((queries, searcher.d), dtype=torch.float32, device=searcher.device)
        #: Where the queries are written on the host, pinned (on CUDA): copied in without a wait.
        self._host_queries = torch.zeros((queries, searcher.d), dtype=torch.float32)
        if searcher.device.startswith("cuda"):
            self._host_queries = self._host_queries.pin_memory()
        self.graph = None
        self.candidates = None
        self._stream = None

    def step(self):
        """The scan as it is recorded."""
        return best_columns(int8_scores(self._device_queries, *self._inputs), self._size)

    def record(self, pool, stream) -> None:
        """Record on ``stream``, on which it then replays: not PyTorch's default stream,
        where the scan and the copy of its candidates back would wait for E5's replays
        queued there by the graph thread, and they for it (as
        :class:`~pipeline.retrieval.dense.gpu_encoder.CapturedForward` says)."""
        self.graph, self.candidates = record_graph(self.step, pool, stream)
        self._stream = stream

    def shortlist(self, queries: np.ndarray) -> np.ndarray:
        """Each of ``queries``' (float32, at most this graph's count) candidates, best
        first, on the host. One replay of the searcher's graphs at a time: each overwrites
        its buffers and the pool they share."""
        count = len(queries)
        torch = self._torch
        with self._replaying, torch.inference_mode(), torch.cuda.stream(self._stream):
            self._host_queries[:count].numpy()[:] = queries
            self._device_queries[:count].copy_(self._host_queries[:count], non_blocking=True)
            self.graph.replay()
            return self.candidates[:count].cpu().numpy()  # the copy back waits for the replay


def _quantize(host: np.ndarray, codes, chunk_rows: int):
    """Fill ``codes`` with the int8 codes of ``host``'s rows (less the middle of each
    dimension's range, one step per dimension) in two passes of ``chunk_rows``; the steps."""
    import torch

    dimension, device = host.shape[1], codes.device
    low = torch.full((dimension,), float("inf"), device=device)
    high = torch.full((dimension,), float("-inf"), device=device)
    for _, part in device_chunks(host, chunk_rows, device, torch.float32):
        torch.minimum(low, part.amin(dim=0), out=low)
        torch.maximum(high, part.amax(dim=0), out=high)
    centre, spread = (high + low) / 2, high - low
    steps = torch.where(spread > 0, spread / 254, 1.0)  # a constant dimension: codes 0, any step
    for start, part in device_chunks(host, chunk_rows, device, torch.float32):
        codes[start : start + len(part)] = part.sub_(centre).div_(steps).round_().clamp_(-127, 127).to(torch.int8)
    return steps


class BatchingSearcher:
    """Coalesces concurrent searches into one call of the wrapped searcher: the first
    request waits at most ``window_s`` for others, up to ``max_batch`` queries. Queries
    asking for different ``nprobe`` values go to the wrapped searcher in separate calls.

    Its worker thread holds the wrapped searcher (an 11 GB matrix on the GPU, say) for as
    long as it runs: :meth:`close` lets it answer what is queued, stops it and closes the
    wrapped searcher; a search after that gets :class:`SearcherClosedError`."""

    _STOP = object()

    def __init__(self, inner: Searcher, max_batch: int = MAX_QUERIES_PER_SEARCH, window_s: float = 0.0005) -> None:
        self.inner = inner
        self.ntotal, self.d, self.is_ivf = inner.ntotal, inner.d, inner.is_ivf
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: queue.Queue = queue.Queue()
        self._closing = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="batching-searcher", daemon=True)
        self._worker.start()

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        future: Future = Future()
        with self._closing:
            if self._closed:
                raise SearcherClosedError()
            self._queue.put((np.asarray(vectors, dtype=np.float32), k, nprobe, future))
        return future.result()

    def describe(self) -> str:
        return f"{self.inner.describe()}, batched up to {self.max_batch}"

    def close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(self._STOP)  # nothing is queued after it
        self._worker.join()
        self.inner.close()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while len(batch) < self.max_batch and batch[-1] is not self._STOP:
                    batch.append(self._queue.get(timeout=self.window_s))
            except queue.Empty:
                pass
            stop = batch[-1] is self._STOP
            groups: dict[int | None, list] = {}
            for request in batch[:-1] if stop else batch:
                groups.setdefault(request[2], []).append(request)
            for nprobe, group in groups.items():
                self._search_group(group, nprobe)
            if stop:
                return

    def _search_group(self, group: list, nprobe: int | None) -> None:
        vectors = np.concatenate([v for v, _, _, _ in group])
        k = max(k for _, k, _, _ in group)
        try:
            similarities, rows = self.inner.search(vectors, k, nprobe=nprobe)
        except Exception as exc:  # every waiting caller gets the error
            for *_, future in group:
                future.set_exception(exc)
            return
        start = 0
        for queries, wanted, _, future in group:
            end = start + len(queries)
            future.set_result((similarities[start:end, :wanted], rows[start:end, :wanted]))
            start = end
