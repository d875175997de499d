"""GPU benchmarks at full shape, without the hub: run on a CUDA host (the lent H100/H200).

    python -m bench.gpu --out $OUT/gpu.json [--rows 5555583] [--recall-rows 1000000]

1. Passage search over 5.5M x 1024 unit vectors (synthetic, clustered):
   - the product's exact GPU scan (pipeline.retrieval.dense.searchers.ExactSearcher, fp16) for 1, 8 and 64
     queries, and batched concurrent single queries (BatchingSearcher), beside the HBM
     limit (matrix bytes / memory bandwidth);
   - ``int8``: the int8 scan with fp32 re-scoring (Int8Searcher, the ``exact-int8``
     backend) against the fp16 scan, timed in alternation at 1, 8 and 64 queries, its load
     time from the .npy file, and its recall@10 against exact fp32 neighbours;
   - the seed's search, IVF2048-PQ256 on the CPU with faiss, nprobe 16/64/128/256, built
     the cheap way: trained on a sample, its lists filled with random codes so that each
     probe scans as many codes as the real index (N / 2048 per list).
2. Recall@10 of IVF-PQ (really built on 1M clustered vectors) against the exact scan,
   for queries whose true neighbours are computed exactly in fp32.
3. The E5-large query encoder (XLM-R large shape, random weights): fp16 eager attention,
   fp16 SDPA, fp16 SDPA + CUDA graphs (pipeline.retrieval.dense.gpu_encoder.PaddedEncoder compiled),
   with the cosine to the fp32 output of the same weights.
4. Retrieval end to end: encode + exact search + fetch of 10 passages from a 5.5M-row
   Arrow file (when pyarrow is installed there).
5. A Llama-2-13B-shaped model (random weights, bf16) in transformers: prefill of a 1,500
   token RAG prompt and greedy decoding, beside the HBM limit of reading all weights once
   per token. vLLM itself cannot be installed there; this is a proxy.

Results are written after each part, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.ivfpq import fill_with_random_codes
from pipeline.core.gpu import GIB
from pipeline.retrieval.dense.gpu_encoder import PaddedEncoder
from pipeline.retrieval.dense.searchers import (
    INT8_MIN_QUERY_ROWS,
    INT8_RESCORE_MARGIN,
    RESCORE_MARGIN,
    SCAN_GRAPH_CANDIDATES,
    BatchingSearcher,
    ExactSearcher,
    Int8Searcher,
    best_columns,
    best_rescored,
)

DIM = 1024
NLIST, PQ_M = 2048, 256
#: "cpu" only for a quick check of this script on a machine without CUDA (tiny sizes).
DEVICE = "cuda"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def p50_ms(samples: list[float]) -> dict:
    values = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3),
            "n": len(values)}  # fmt: skip


class Report:
    def __init__(self, path: Path | None) -> None:
        import torch

        self.path = path
        cuda = DEVICE == "cuda"
        self.data: dict = {
            "benchmark": "gpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "gpu": torch.cuda.get_device_properties(0).name if cuda else "none (script check on CPU)",
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else 0,
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        }

    def add(self, key: str, value) -> None:
        self.data[key] = value
        print(json.dumps({key: value}, ensure_ascii=False), flush=True)
        if self.path:
            self.path.write_text(json.dumps(self.data, ensure_ascii=False, indent=2))


def read_bandwidth_gbs() -> float:
    """HBM read bandwidth: summing a 4 GiB fp16 tensor reads each byte once."""
    import torch

    data = torch.ones(2 * GIB if DEVICE == "cuda" else 2**25, dtype=torch.float16, device=DEVICE)
    for _ in range(3):
        data.sum(dtype=torch.float32)
    sync()
    start = time.perf_counter()
    for _ in range(10):
        data.sum(dtype=torch.float32)
    sync()
    seconds = (time.perf_counter() - start) / 10
    size = data.numel() * 2
    del data
    return size / seconds / 1e9


def memory_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth, counting bytes read and written."""
    import torch

    source = torch.empty(2 * GIB if DEVICE == "cuda" else 2**26, dtype=torch.uint8, device=DEVICE)
    target = torch.empty_like(source)
    source_bytes = source.numel()
    for _ in range(3):
        target.copy_(source)
    sync()
    start = time.perf_counter()
    for _ in range(10):
        target.copy_(source)
    sync()
    seconds = (time.perf_counter() - start) / 10
    del source, target
    return 2 * source_bytes / seconds / 1e9


def clustered_matrix(rows: int, clusters: int, seed: int = 0, noise: float = 0.04):
    """Unit fp16 vectors around random centres, built on the GPU in chunks, in a matrix
    padded as the exact searcher wants it (``ExactSearcher(padded, ntotal=rows)``)."""
    import torch

    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, DIM, device=DEVICE, generator=generator), dim=1)
    matrix = ExactSearcher.allocate(rows, DIM, torch.float16, DEVICE)
    for start in range(0, rows, 1 << 20):
        end = min(rows, start + (1 << 20))
        labels = torch.randint(0, clusters, (end - start,), device=DEVICE, generator=generator)
        offsets = torch.randn(end - start, DIM, device=DEVICE, generator=generator) * noise
        matrix[start:end] = torch.nn.functional.normalize(centres[labels] + offsets, dim=1).half()
    return matrix


def queries_near(matrix, count: int, seed: int = 1) -> np.ndarray:
    import torch

    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    rows = torch.randint(0, matrix.shape[0], (count,), device=DEVICE, generator=generator)
    noise = torch.randn(count, DIM, device=DEVICE, generator=generator) * 0.02
    return torch.nn.functional.normalize(matrix[rows].float() + noise, dim=1).cpu().numpy()


def time_calls(function, repeats: int, warmup: int = 5) -> list[float]:
    repeats = repeats if DEVICE == "cuda" else 3
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return samples


def exact_search(report: Report, searcher: ExactSearcher, bandwidth: float) -> None:
    import torch

    matrix = searcher.vectors
    result = {"rows": searcher.ntotal, "matrix_gib": round(matrix.numel() * 2 / GIB, 2),
              "hbm_read_limit_ms": round(matrix.numel() * 2 / (bandwidth * 1e9) * 1000, 2)}  # fmt: skip
    for batch in (1, 8, 64):
        queries = queries_near(matrix, batch, seed=batch)
        result[f"queries_{batch}"] = p50_ms(
            time_calls(lambda q=queries: searcher.search(q, 10), 200 if batch == 1 else 60)
        )

    def kernel_only():
        with torch.inference_mode():
            torch.topk(torch.from_numpy(query).to(DEVICE).half() @ searcher.matrix.T, 10)
        sync()

    query = queries_near(matrix, 1, seed=99)
    result["queries_1_on_device_only"] = p50_ms(time_calls(kernel_only, 200))

    batching = BatchingSearcher(searcher, max_batch=64, window_s=0.0005)
    singles = queries_near(matrix, 64 * (20 if DEVICE == "cuda" else 2), seed=7)
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda i: batching.search(singles[i : i + 1], 10), range(64)))  # warm-up
        start = time.perf_counter()
        list(pool.map(lambda i: batching.search(singles[i : i + 1], 10), range(len(singles))))
        elapsed = time.perf_counter() - start
    result["concurrent_64_threads_batched"] = {"queries": len(singles), "queries_per_s": round(len(singles) / elapsed)}
    report.add("exact_gpu_search", result)


def saved_matrix(matrix, path: Path, chunk_rows: int = 1 << 20) -> Path:
    """The (device) matrix as an .npy file, a chunk at a time: what the int8 searcher loads."""
    target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=tuple(matrix.shape))
    for start in range(0, matrix.shape[0], chunk_rows):
        target[start : start + chunk_rows] = matrix[start : start + chunk_rows].cpu().numpy()
    target.flush()
    del target
    return path


def fp32_top_10(matrix, queries: np.ndarray, chunk_rows: int = 1 << 20) -> np.ndarray:
    """The true neighbours: fp32 products with the stored vectors, a chunk of rows at a time."""
    import torch

    exact = torch.from_numpy(queries).to(DEVICE)
    best_scores = best_rows = None
    with torch.inference_mode():
        for start in range(0, matrix.shape[0], chunk_rows):
            top = torch.topk(exact @ matrix[start : start + chunk_rows].float().T, 10)
            scores, rows = top.values, top.indices + start
            if best_scores is not None:
                scores, rows = torch.cat([best_scores, scores], 1), torch.cat([best_rows, rows], 1)
            keep = torch.topk(scores, 10).indices
            best_scores, best_rows = torch.gather(scores, 1, keep), torch.gather(rows, 1, keep)
    return best_rows.cpu().numpy()


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])), 4)


def int8_search(report: Report, fp16: ExactSearcher, bandwidth: float, workdir: Path) -> None:
    """The int8 scan beside the fp16 one on the same vectors: latency, load and recall."""
    path = saved_matrix(fp16.vectors, workdir / "vectors.npy")
    try:
        started = time.perf_counter()
        int8 = Int8Searcher.from_file(path, DEVICE)
        load_s = time.perf_counter() - started
        result = compare_scans(fp16, int8, bandwidth)
        int8.close()
    finally:
        path.unlink()
    report.add("int8_gpu_search", {"load_s": round(load_s, 1), **result})


def compare_scans(fp16: ExactSearcher, int8: Int8Searcher, bandwidth: float) -> dict:

    def limit_ms(size: int) -> float:
        return round(size / (bandwidth * 1e9) * 1000, 2)

    codes_bytes, scores_bytes = int8.codes.numel(), INT8_MIN_QUERY_ROWS * int8.codes.shape[0] * 4
    limits = {"int8_codes_read_and_scores_written": limit_ms(codes_bytes + scores_bytes),
              "fp16": limit_ms(fp16.matrix.numel() * 2)}  # fmt: skip
    result = {"rows": int8.ntotal, "codes_gib": round(codes_bytes / GIB, 2), "hbm_limit_ms_1_query": limits}
    for batch in (1, 8, 64):
        queries = queries_near(fp16.vectors, batch, seed=batch)
        samples: dict[str, list[float]] = {"fp16": [], "int8": []}
        for _ in range(10):  # in alternation, so that neither has the card to itself for longer
            for name, searcher in (("fp16", fp16), ("int8", int8)):
                samples[name] += time_calls(lambda s=searcher, q=queries: s.search(q, 10), 20 if batch == 1 else 6, 1)
        result[f"queries_{batch}"] = {name: p50_ms(values) for name, values in samples.items()}

    result["steps_p50_ms"] = {f"queries_{batch}": scan_steps(fp16, int8, batch) for batch in (1, 8, 64)}
    queries = queries_near(fp16.vectors, 500, seed=11)
    truth = fp32_top_10(fp16.vectors, queries)
    exact_rows = fp16.search(queries, 10)[1]
    result["recall_at_10_against_fp32"] = {
        "queries": len(queries),
        "fp16_scan_fp32_rescore": recall_at_10(exact_rows, truth),
        "int8_scan_fp32_rescore": recall_at_10(int8.search(queries, 10)[1], truth),
    }
    same = {}
    for margin in (0, 8, 16, INT8_RESCORE_MARGIN):
        int8.margin = margin
        same[str(margin)] = round(float(np.mean(int8.search(queries, 10)[1] == exact_rows)), 4)
    int8.margin = INT8_RESCORE_MARGIN
    result["rows_of_the_fp16_exact_searcher_by_margin"] = same
    return result


def scan_steps(fp16: ExactSearcher, int8: Int8Searcher, batch: int) -> dict:
    """Each scan's parts alone: the matrix product, the top-k of its scores (``topk``, and
    :func:`best_columns`, which the searchers take), and for int8 the re-scored rows'
    gather from host memory and their fp32 re-scoring there."""
    import torch

    wanted = (10 + RESCORE_MARGIN, 10 + INT8_RESCORE_MARGIN)
    with torch.inference_mode():
        quantized = torch.ones((max(INT8_MIN_QUERY_ROWS, batch), int8.d), dtype=torch.int8, device=DEVICE)
        half = torch.from_numpy(queries_near(fp16.vectors, batch, seed=batch)).to(DEVICE).half()
        int_scores, half_scores = torch._int_mm(quantized, int8.codes.T)[:batch], half @ fp16.matrix.T
    rows = np.sort(np.random.default_rng(batch).integers(0, int8.ntotal, (batch, wanted[1])), axis=1)
    exact = torch.from_numpy(queries_near(fp16.vectors, batch, seed=batch))

    def gather_and_rescore():
        stored = torch.from_numpy(int8.host_vectors[rows.ravel()]).float().view(*rows.shape, int8.d)
        best_rescored(exact, torch.from_numpy(rows), stored, 10, int8.ntotal)

    def timed(function) -> float:
        def call():
            with torch.inference_mode():
                function()
            sync()

        return p50_ms(time_calls(call, 60))["p50_ms"]

    return {
        "fp16_matmul": timed(lambda: half @ fp16.matrix.T),
        f"fp16_topk_{wanted[0]}": timed(lambda: torch.topk(half_scores, wanted[0], dim=1, sorted=False)),
        f"fp16_best_columns_{wanted[0]}": timed(lambda: best_columns(half_scores, wanted[0])),
        "int8_int_mm": timed(lambda: torch._int_mm(quantized, int8.codes.T)),
        f"int8_topk_{wanted[1]}": timed(lambda: torch.topk(int_scores, wanted[1], dim=1, sorted=False)),
        f"int8_best_columns_{wanted[1]}": timed(lambda: best_columns(int_scores, wanted[1])),
        f"int8_topk_{SCAN_GRAPH_CANDIDATES}": timed(lambda: torch.topk(int_scores, SCAN_GRAPH_CANDIDATES, dim=1)),
        f"int8_best_columns_{SCAN_GRAPH_CANDIDATES}": timed(lambda: best_columns(int_scores, SCAN_GRAPH_CANDIDATES)),
        "int8_host_gather_and_rescore": timed(gather_and_rescore),
    }


def seed_ivfpq(report: Report, matrix, threads: int) -> None:
    """The seed's IVF2048-PQ256 at full size, lists filled with random codes."""
    import faiss
    import torch

    faiss.omp_set_num_threads(threads)
    rows = int(matrix.shape[0])
    picked = np.random.default_rng(0).choice(rows, min(rows, 65_536), replace=False)
    sample = matrix[torch.from_numpy(picked).to(DEVICE)].float().cpu().numpy()
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(DIM), DIM, NLIST, PQ_M, 8)
    started = time.perf_counter()
    index.train(sample)
    train_s = time.perf_counter() - started
    fill_with_random_codes(index, rows, np.random.default_rng(1))
    result = {"rows": rows, "threads": threads, "train_s_on_65536": round(train_s, 1),
              "codes_gib": round(rows * index.code_size / GIB, 2)}  # fmt: skip
    queries = queries_near(matrix, 64, seed=3)
    for nprobe in (16, 64, 128, 256):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        single = time_calls(lambda p=params: index.search(queries[:1], 10, params=p), 30, warmup=3)
        start = time.perf_counter()
        index.search(queries, 10, params=params)
        batch = time.perf_counter() - start
        result[f"nprobe_{nprobe}"] = {
            "single_query": p50_ms(single),
            "batch_64_ms_per_query": round(batch / 64 * 1000, 3),
        }
    report.add("seed_ivfpq_cpu_search", result)


def scaling(report: Report, full: ExactSearcher, threads: int, sizes=(10_000, 100_000, 1_000_000, 5_555_583)) -> None:
    """Single-query latency as the corpus grows: the exact GPU scan over the first n rows,
    and the seed's IVF2048-PQ256 (random codes, nprobe 128) on this host's CPU."""
    import faiss
    import torch

    faiss.omp_set_num_threads(threads)
    matrix = full.vectors
    picked = np.random.default_rng(0).choice(full.ntotal, min(full.ntotal, 65_536), replace=False)
    trained = faiss.IndexIVFPQ(faiss.IndexFlatL2(DIM), DIM, NLIST, PQ_M, 8)
    trained.train(matrix[torch.from_numpy(picked).to(DEVICE)].float().cpu().numpy())
    queries = queries_near(matrix, 30, seed=21)
    params = faiss.SearchParametersIVF(nprobe=128)
    rng = np.random.default_rng(2)
    result = {}
    for rows in sizes:
        rows = min(rows, full.ntotal)
        searcher = full if rows == full.ntotal else ExactSearcher(matrix[:rows], DEVICE)
        exact = time_calls(lambda s=searcher: s.search(queries[:1], 10), 100)
        index = faiss.clone_index(trained)
        fill_with_random_codes(index, rows, rng)
        ivfpq = [time_calls(lambda q=q, i=index: i.search(q[None], 10, params=params), 1, warmup=1)[0]
                 for q in queries]  # fmt: skip
        result[str(rows)] = {"exact_gpu": p50_ms(exact), "ivfpq_cpu_nprobe128": p50_ms(ivfpq[5:])}
        del index
    report.add("scaling", result)


def ivfpq_recall(report: Report, rows: int, threads: int, noise: float) -> None:
    """Recall@10 of a real IVF-PQ over clustered vectors, against exact fp32 neighbours."""
    import faiss
    import torch

    faiss.omp_set_num_threads(threads)
    padded = clustered_matrix(rows, 4096, seed=5, noise=noise)
    matrix = padded[:rows]
    queries = queries_near(matrix, 500, seed=11)
    with torch.inference_mode():
        raw16 = torch.topk(torch.from_numpy(queries).to(DEVICE).half() @ matrix.T, 10).indices.cpu().numpy()
    truth = fp32_top_10(matrix, queries)
    product = ExactSearcher(padded, DEVICE, ntotal=rows).search(queries, 10)[1]
    host = matrix.float().cpu().numpy()
    del matrix, padded
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(DIM), DIM, NLIST, PQ_M, 8)
    started = time.perf_counter()
    index.train(host[np.random.default_rng(0).choice(rows, min(rows, 65_536), replace=False)])
    index.add(host)
    build_s = time.perf_counter() - started
    del host

    def recall(found: np.ndarray) -> float:
        return recall_at_10(found, truth)

    result = {"rows": rows, "clusters": 4096, "noise_per_dimension": noise, "queries": len(queries),
              "build_s": round(build_s, 1), "fp16_scan_alone": recall(raw16),
              "exact_searcher_fp16_scan_fp32_rescore": recall(product)}  # fmt: skip
    for nprobe in (16, 64, 128, 256):
        _, found = index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
        result[f"ivfpq_nprobe_{nprobe}"] = recall(found)
    report.add(f"recall_at_10_noise_{noise}", result)


def e5_encoder(report: Report) -> PaddedEncoder:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    layers = 24 if DEVICE == "cuda" else 2  # the CPU check of this script uses a shallow model
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                              intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1,
                              layer_norm_eps=1e-5, pad_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    reference = XLMRobertaModel(config, add_pooling_layer=False).to(DEVICE).eval()
    ids = torch.randint(5, 250000, (1, 32), device=DEVICE)
    mask = torch.ones_like(ids)
    fp32 = PaddedEncoder(reference, None, 512, DEVICE, "eager").embed_ids(ids, mask)
    result = {"tokens": 32}
    encoder = None
    half = torch.float16 if DEVICE == "cuda" else torch.float32
    for name, attention, compiled in (("fp16_eager_attention", "eager", False), ("fp16_sdpa", "sdpa", False),
                                      ("fp16_sdpa_cuda_graphs", "sdpa", True)):  # fmt: skip
        variant = copy.deepcopy(config)
        variant._attn_implementation = attention
        model = XLMRobertaModel(variant, add_pooling_layer=False)
        model.load_state_dict(reference.state_dict())
        model = model.to(device=DEVICE, dtype=half).eval()
        encoder = PaddedEncoder(model, None, 512, DEVICE, "compiled" if compiled and DEVICE == "cuda" else "eager")
        started = time.perf_counter()
        for _ in range(3):
            encoder.embed_ids(ids, mask)
        sync()
        warmup_s = time.perf_counter() - started

        def run(e=encoder):
            e.embed_ids(ids, mask)
            sync()

        cosine = float((encoder.embed_ids(ids, mask) * fp32).sum())
        result[name] = {**p50_ms(time_calls(run, 200)), "cosine_to_fp32": round(cosine, 5),
                        "warmup_s": round(warmup_s, 1)}  # fmt: skip
    del reference
    report.add("e5_large_query_encoder", result)
    return encoder


def end_to_end(report: Report, searcher: ExactSearcher, encoder: PaddedEncoder, workdir: Path) -> None:
    import torch

    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
    except ImportError:
        report.add("retrieval_end_to_end", "skipped: pyarrow is not installed on this machine")
        return
    rows = searcher.ntotal
    path = workdir / "passages.arrow"
    schema = pa.schema([("id", pa.int64()), ("title", pa.large_string()), ("text", pa.large_string())])
    text = "梅雨前線が停滞し、長雨が続く。" * 15
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        for start in range(0, rows, 500_000):
            count = min(500_000, rows - start)
            titles = [f"記事{i // 30}" for i in range(start, start + count)]
            columns = [
                pa.array(np.arange(start, start + count)),
                pa.array(titles, pa.large_string()),
                pa.array([text] * count, pa.large_string()),
            ]
            writer.write_batch(pa.record_batch(columns, schema=schema))
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    ids = torch.randint(5, 250000, (1, 32), device=DEVICE)
    mask = torch.ones_like(ids)
    parts = {"embed": [], "search": [], "fetch": [], "total": []}
    for _ in range(220 if DEVICE == "cuda" else 25):
        start = time.perf_counter()
        vector = encoder.embed_ids(ids, mask).cpu().numpy()
        embedded = time.perf_counter()
        _, found = searcher.search(vector, 10)
        searched = time.perf_counter()
        [table.slice(int(row), 1).to_pylist()[0] for row in found[0]]  # by row, as datasets reads
        done = time.perf_counter()
        for key, value in (("embed", embedded - start), ("search", searched - embedded), ("fetch", done - searched),
                           ("total", done - start)):  # fmt: skip
            parts[key].append(value)
    report.add("retrieval_end_to_end", {"passages": rows, **{k: p50_ms(v[20:]) for k, v in parts.items()}})


def llama_proxy(report: Report, bandwidth: float) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                         num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prompt = torch.randint(3, 32000, (1, 1500), device=DEVICE)
    with torch.inference_mode():
        for _ in range(2):
            model(prompt, use_cache=True)
        sync()
        prefill = []
        for _ in range(5):
            start = time.perf_counter()
            output = model(prompt, use_cache=True)
            sync()
            prefill.append(time.perf_counter() - start)
        cache = output.past_key_values
        token = output.logits[:, -1:].argmax(-1)
        steps = []
        for _ in range(128):
            start = time.perf_counter()
            output = model(token, past_key_values=cache, use_cache=True)
            cache = output.past_key_values
            token = output.logits[:, -1:].argmax(-1)
            sync()
            steps.append(time.perf_counter() - start)
    per_token = float(np.median(steps[8:]))
    limit = weight_bytes / (bandwidth * 1e9)
    report.add("llama2_13b_shape_transformers_bf16", {
        "weights_gib": round(weight_bytes / GIB, 1), "prompt_tokens": 1500,
        "prefill": p50_ms(prefill), "decode_ms_per_token_p50": round(per_token * 1000, 2),
        "decode_tokens_per_s": round(1 / per_token, 1),
        "hbm_limit_ms_per_token": round(limit * 1000, 2), "hbm_limit_tokens_per_s": round(1 / limit, 1),
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_555_583)
    parser.add_argument("--recall-rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--parts", default="exact,int8,ivfpq,scaling,recall,e5,e2e,llama")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    global DEVICE
    DEVICE = args.device
    parts = set(args.parts.split(","))
    report = Report(args.out)
    report.add("copy_bandwidth_gb_s_read_plus_write", round(memory_bandwidth_gbs()))
    bandwidth = read_bandwidth_gbs()
    report.add("read_bandwidth_gb_s", round(bandwidth))
    threads = os.cpu_count() or 1
    searcher = ExactSearcher(clustered_matrix(args.rows, 2048), DEVICE, ntotal=args.rows)
    if "exact" in parts:
        exact_search(report, searcher, bandwidth)
    if "int8" in parts:
        int8_search(report, searcher, bandwidth, Path(os.environ.get("TMPDIR", "/tmp")))
    if "ivfpq" in parts:
        seed_ivfpq(report, searcher.vectors, threads)
    if "scaling" in parts:
        scaling(report, searcher, threads)
    encoder = e5_encoder(report) if {"e5", "e2e"} & parts else None
    if "e2e" in parts and encoder is not None:
        end_to_end(report, searcher, encoder, Path(os.environ.get("TMPDIR", "/tmp")))
    del searcher, encoder
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    if "recall" in parts:
        for noise in (0.04, 0.015):
            ivfpq_recall(report, args.recall_rows, threads, noise)
            gc.collect()
    if "llama" in parts:
        llama_proxy(report, bandwidth)
    threading.Event().wait(0.1)


if __name__ == "__main__":
    main()
