import logging
import threading

import faiss
import numpy as np
import pytest
import torch

from pipeline.retrieval.dense import searchers
from pipeline.retrieval.dense.searchers import (
    BatchingSearcher,
    ExactSearcher,
    FaissSearcher,
    Int8Searcher,
    SearcherClosedError,
)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((2000, 64)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_exact_search_matches_brute_force(vectors, tmp_path):
    np.save(tmp_path / "m.npy", vectors.astype(np.float16))
    searcher = ExactSearcher.from_file(tmp_path / "m.npy", "cpu", chunk_rows=300)
    queries = vectors[[5, 17, 1999]]
    similarities, rows = searcher.search(queries, 10)
    expected = np.argsort(-(queries @ vectors.astype(np.float16).astype(np.float32).T), axis=1)[:, :10]
    assert rows.tolist() == expected.tolist()
    assert rows[:, 0].tolist() == [5, 17, 1999]
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=2e-3)
    assert searcher.matrix.dtype == torch.float32 and "exact" in searcher.describe()
    assert searcher.ntotal == 2000 and searcher.matrix.shape[0] == 2048  # padded for faster kernels
    assert ExactSearcher.bytes_needed(5_555_583, 1024, "cuda") == 5_555_584 * 1024 * 2


@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_padding_rows_never_come_back_even_when_they_would_score_best(kind, tmp_path):
    # Every passage points away from the query (negative similarity), so the zero padding
    # rows (similarity 0) would win if they were not excluded.
    query = np.zeros((1, 8), dtype=np.float32)
    query[0, 0] = 1.0
    matrix = -np.abs(np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)) - query
    if kind == "fp16":
        searcher = ExactSearcher(torch.from_numpy(matrix), "cpu")
        assert searcher.matrix.shape[0] == 64
    else:
        np.save(tmp_path / "m.npy", matrix.astype(np.float16))
        searcher = Int8Searcher.from_file(tmp_path / "m.npy", "cpu")
        assert searcher.codes.shape[0] == 64
    similarities, rows = searcher.search(query, 50)
    assert sorted(rows[0].tolist()) == list(range(10))
    assert (similarities < 0).all()


@pytest.fixture(scope="module")
def tight_clusters(tmp_path_factory):
    """Passages in tight clusters of ~200 (near-duplicates, as a wiki has them) and queries
    near some of them: neighbours whose scores differ by less than the int8 codes resolve.
    (At half this spread, 64 extra candidates found 99.65 % of the exact rows, 256 all.)"""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((100, 256))
    matrix = centres[rng.integers(0, 100, 20_000)] + 0.01 * rng.standard_normal((20_000, 256)) * np.sqrt(256)
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float16)
    path = tmp_path_factory.mktemp("int8") / "m.npy"
    np.save(path, matrix)
    queries = matrix[rng.integers(0, 20_000, 200)].astype(np.float32) + 0.01 * rng.standard_normal((200, 256))
    return path, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def test_the_int8_scan_gives_the_exact_searchers_neighbours_and_scores(tight_clusters):
    path, queries = tight_clusters
    int8 = Int8Searcher.from_file(path, "cpu", chunk_rows=3_000)
    assert int8.codes.dtype == torch.int8 and int8.codes.shape == (20_032, 256)  # padded, a byte a value
    assert not int8.codes[20_000:].any() and Int8Searcher.bytes_needed(5_555_583, 1024, "cuda") == 5_555_584 * 1024
    similarities, rows = int8.search(queries, 10)
    exact_similarities, exact_rows = ExactSearcher.from_file(path, "cpu").search(queries, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(similarities, exact_similarities, atol=1e-6)  # the same fp32 sums, to rounding
    truth = queries @ np.load(path).astype(np.float32).T  # and those are the fp32 top 10 (ties within rounding)
    np.testing.assert_allclose(similarities, -np.sort(-truth, axis=1)[:, :10], atol=1e-6)
    assert "int8" in int8.describe()
    int8.close()
    with pytest.raises(SearcherClosedError):
        int8.search(queries[:1], 10)


def test_without_its_re_scoring_margin_the_int8_scan_would_miss_neighbours(tight_clusters):
    """What the re-scored margin is for: the int8 order alone misses true neighbours here."""
    path, queries = tight_clusters
    int8 = Int8Searcher.from_file(path, "cpu")
    stored = np.load(path).astype(np.float32)
    expected = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
    int8.margin = 0
    rows = int8.search(queries, 10)[1]
    recall = np.mean([len(set(found) & set(true)) / 10 for found, true in zip(rows, expected, strict=True)])
    assert recall < 0.99


def test_vectors_sharing_a_large_common_part_keep_their_neighbours_in_int8(tmp_path):
    """E5's vectors share a large common direction: the codes are taken around its middle, so
    that the steps resolve what tells passages apart (taken from zero, the same search found
    2 % of the exact searcher's rows)."""
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((100, 256)) / 16
    matrix = centres[rng.integers(0, 100, 20_000)] + 0.03 * rng.standard_normal((20_000, 256))
    matrix[:, 0] += 4.0
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float16)
    np.save(tmp_path / "m.npy", matrix)
    queries = matrix[rng.integers(0, 20_000, 200)].astype(np.float32) + 0.01 * rng.standard_normal((200, 256))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = ExactSearcher.from_file(tmp_path / "m.npy", "cpu").search(queries, 10)[1]
    np.testing.assert_array_equal(Int8Searcher.from_file(tmp_path / "m.npy", "cpu").search(queries, 10)[1], exact)


@pytest.mark.parametrize("copies", [40, 42, 74])
def test_both_exact_searchers_give_duplicated_passages_in_row_order(tmp_path, copies):
    """As many copies as either searcher's candidates (10 + 32, 10 + 64): identical rows
    must score alike wherever they sit among the candidates."""
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((3_000, 256)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix[100 : 100 + copies] = matrix[100]  # one passage many times, as wiki dumps repeat boilerplate
    np.save(tmp_path / "m.npy", matrix.astype(np.float16))
    query = matrix[[100]]
    fp32 = ExactSearcher.from_file(tmp_path / "m.npy", "cpu").search(query, 10)
    int8 = Int8Searcher.from_file(tmp_path / "m.npy", "cpu").search(query, 10)
    assert fp32[1].tolist() == int8[1].tolist() == [list(range(100, 110))]
    np.testing.assert_array_equal(fp32[0], int8[0])


def test_an_int8_kernel_that_gets_products_wrong_is_refused_at_load(tight_clusters, monkeypatch):
    """A card whose int8 GEMM is missing or wrong: the load fails (the backend then falls
    back with a notice) instead of every search answering wrongly. Wrong here in one row
    near the end only."""
    import torch

    real = torch._int_mm

    def wrong_near_the_end(left, right):
        scores = real(left, right)
        scores[:, 19_990] += 1
        return scores

    monkeypatch.setattr(torch, "_int_mm", wrong_near_the_end)
    with pytest.raises(RuntimeError, match="int8 matrix product on cpu gives wrong results"):
        Int8Searcher.from_file(tight_clusters[0], "cpu")


def test_recorded_scans_need_a_gpu_and_elsewhere_the_searcher_scans_without_them(tight_clusters, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.retrieval.dense.searchers")
    path, queries = tight_clusters
    plain = Int8Searcher.from_file(path, "cpu").search(queries, 10)
    searcher = Int8Searcher.from_file(path, "cpu", scan_graphs=True)
    assert searcher.scan_graphs == {} and "need a CUDA device" in caplog.text
    for got, expected in zip(searcher.search(queries, 10), plain, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_a_scan_whose_recording_fails_is_given_up_on_the_graph_thread(tight_clusters, monkeypatch, caplog):
    """As the query encoder's: the failure is met at load on the graph thread, whose stream
    a failed capture leaves behind, and the searcher scans without graphs from then on."""
    path, queries = tight_clusters
    searcher = Int8Searcher.from_file(path, "cpu")
    plain = searcher.search(queries, 10)
    threads = []

    def failing(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(searchers, "ScanGraph", failing)
    left = lambda device: threads.append(threading.current_thread().name)  # noqa: E731
    monkeypatch.setattr(searchers, "leave_failed_capture", left)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: None)
    searcher.device = "cuda"  # as loaded on a GPU; its tensors stay on the CPU
    searcher.record_scans()
    searcher.device = "cpu"
    assert threads == ["cuda-graphs"] and searcher.scan_graphs == {} and "scanning without them" in caplog.text
    for got, expected in zip(searcher.search(queries, 10), plain, strict=True):
        np.testing.assert_array_equal(got, expected)


class ReplayedStep:
    """Stands in for a recorded CUDA graph on the CPU: a replay runs the recorded step
    again into the same output tensor, as the graph's kernels write its static output."""

    def __init__(self, step):
        self.step, self.output, self.replays = step, step(), 0

    def replay(self):
        self.output.copy_(self.step())
        self.replays += 1


def test_recorded_scans_answer_every_query_count_with_the_scans_rows(tight_clusters, monkeypatch):
    """The search's side of the recorded scans: each count replays the next larger graph,
    whose other query rows may hold an earlier search's; a search of more queries than the
    largest graph, or for more candidates than a graph keeps, scans op by op."""

    def record_graph(step, pool, stream):
        graph = ReplayedStep(step)
        return graph, graph.output

    monkeypatch.setattr(searchers, "record_graph", record_graph)
    path, queries = tight_clusters
    searcher = Int8Searcher.from_file(path, "cpu")
    expected = searcher.search(queries, 10)
    scans = {count: searchers.ScanGraph(searcher, count) for count in searchers.SCAN_GRAPH_QUERIES}
    for scan in scans.values():
        scan.record(None, None)
    searcher.scan_graphs = scans
    for count in (1, 4, 3, 64, 9, 2):  # 3 after 4: the graph's last row holds the last search's
        for got, want in zip(searcher.search(queries[-count:], 10), expected, strict=True):
            np.testing.assert_array_equal(got, want[-count:])
    more_queries = searcher.search(queries[:65], 10)[1]
    wider = searcher.search(queries[:2], searchers.SCAN_GRAPH_CANDIDATES - searcher.margin + 1)[1]
    assert [scans[n].graph.replays for n in (1, 2, 4, 16, 64)] == [1, 1, 2, 1, 1]
    np.testing.assert_array_equal(more_queries, expected[1][:65])
    np.testing.assert_array_equal(wider[:, :10], expected[1][:2])
    searcher.search(queries[:2], searchers.SCAN_GRAPH_CANDIDATES - searcher.margin)
    assert scans[2].graph.replays == 2  # as many candidates as a graph keeps: replayed


@pytest.mark.parametrize("spread", [3, 50, 2**20])
def test_the_best_columns_by_group_maxima_are_topks_scores_ties_and_padding_included(spread):
    """Few distinct scores (ties across groups), then many; the last group partly padding
    rows at the lowest int32, as the int8 scan masks them; sizes below and above a group,
    and more than the groups (every score taken)."""
    generator = torch.Generator().manual_seed(spread)
    scores = torch.randint(-spread, spread, (3, 200 * searchers.SCORE_GROUP), dtype=torch.int32, generator=generator)
    scores[:, -40:] = torch.iinfo(torch.int32).min
    scores[1, 5_000:5_100] = spread  # a best run across two groups
    for size in (1, 10, 64, 74, 128, 199, 200, 500):
        columns = searchers.best_columns(scores, size)
        assert columns.shape == (3, size)
        assert all(len(set(row.tolist())) == size for row in columns)  # no column twice
        assert torch.equal(scores.gather(1, columns), torch.topk(scores, size, dim=1).values)
    assert set(searchers.best_columns(scores, 100)[1].tolist()) == set(range(5_000, 5_100))


def test_faiss_l2_distances_become_cosines(vectors):
    index = faiss.IndexFlatL2(64)
    index.add(vectors)
    similarities, rows = FaissSearcher(index).search(vectors[:2], 3)
    np.testing.assert_allclose(similarities, np.take_along_axis(vectors[:2] @ vectors.T, rows, axis=1), atol=1e-5)


def test_concurrent_searches_are_batched_and_each_gets_its_own_answer(vectors):
    class Counting:
        ntotal, d = vectors.shape
        is_ivf = False

        def __init__(self):
            self.calls = []

        def search(self, queries, k, nprobe=None):
            self.calls.append(len(queries))
            scores = queries @ vectors.T
            rows = np.argsort(-scores, axis=1)[:, :k]
            return np.take_along_axis(scores, rows, axis=1), rows

        def describe(self):
            return "counting"

    inner = Counting()
    batching = BatchingSearcher(inner, max_batch=16, window_s=0.05)
    results = {}

    def ask(i):
        results[i] = batching.search(vectors[i : i + 1], 3 + i % 3)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(inner.calls) == 12 and len(inner.calls) < 12  # some queries shared a scan
    for i, (_, rows) in results.items():
        assert rows.shape == (1, 3 + i % 3) and rows[0, 0] == i


def test_batching_passes_errors_to_every_caller(vectors):
    class Broken:
        ntotal, d = vectors.shape
        is_ivf = False

        def search(self, queries, k, nprobe=None):
            raise RuntimeError("CUDA out of memory")

        def describe(self):
            return "broken"

    with pytest.raises(RuntimeError, match="out of memory"):
        BatchingSearcher(Broken()).search(vectors[:1], 3)


def test_batching_keeps_each_querys_nprobe_and_says_it_is_ivf(vectors):
    """faiss-gpu runs behind the batching searcher: nprobe per query must reach FAISS
    (it was dropped), and the status page must still know the index is IVF."""
    quantizer = faiss.IndexFlatL2(64)
    index = faiss.IndexIVFFlat(quantizer, 64, 32)
    index.train(vectors)
    index.add(vectors)
    plain = FaissSearcher(index, nprobe=1)
    batching = BatchingSearcher(plain, window_s=0.05)
    assert batching.is_ivf is True
    queries = vectors[:40] + 0.3 * np.random.default_rng(1).standard_normal((40, 64)).astype(np.float32)
    narrow = plain.search(queries, 10, nprobe=1)[1]
    wide = plain.search(queries, 10, nprobe=32)[1]
    assert not np.array_equal(narrow, wide)  # the choice of nprobe matters for these queries
    results = {}

    def ask(nprobe):
        results[nprobe] = batching.search(queries, 10, nprobe=nprobe)[1]

    threads = [threading.Thread(target=ask, args=(n,)) for n in (1, 32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(results[1], narrow)
    np.testing.assert_array_equal(results[32], wide)
