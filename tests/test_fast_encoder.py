"""The padded query encoder gives the model's own sentence vectors (CPU here; the CUDA
graph path is measured on the GPU machine, docs/benchmarks.md)."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from pipeline.core.cuda_graphs import graph_thread
from pipeline.retrieval.dense.encoder import load_embedding
from pipeline.retrieval.dense.gpu_encoder import BATCH_BUCKETS, PaddedEncoder
from pipeline.settings.sources import load_settings
from tests.conftest import wait_for

TEXTS = ["梅雨とは何か", "What is the rainy season in Japan?", "北海道と小笠原諸島には梅雨がない。" * 3]


@pytest.fixture(scope="module")
def reference(minilm_dir):
    return SentenceTransformer(str(minilm_dir), device="cpu")


def test_padding_to_buckets_does_not_change_the_vectors(reference):
    encoder = PaddedEncoder(reference[0].auto_model, reference.tokenizer, 256, "cpu", "eager")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    for text, vector in zip(TEXTS, expected, strict=True):
        got = encoder.encode([text])[0]
        assert float(np.dot(got, vector)) > 0.99999
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
    assert encoder.bucket(5) == 32 and encoder.bucket(33) == 64 and encoder.bucket(250) == 256


def test_inputs_are_cut_where_the_models_positions_end_whatever_max_length_asks(reference):
    """A max_length past the model's 512 positions (the settings allow 8192) would index
    past the position table: on a GPU a device-side assert at the captured mode's load.
    MiniLM's tokenizer states 256, under its 512 positions."""
    encoder = PaddedEncoder(reference[0].auto_model, reference.tokenizer, 8192, "cpu", "eager")
    assert encoder.max_length == 256 and encoder.buckets[-1] == 256
    long_text = "The rainy season does not reach Hokkaido. " * 100  # ~900 tokens
    assert reference.max_seq_length == 256  # sentence-transformers cuts there too
    expected = reference.encode([long_text], normalize_embeddings=True)[0]
    assert float(np.dot(encoder.encode([long_text])[0], expected)) > 0.99999


def minilm_on_cpu(hub_mirror, cache_dir, query_encoder: str):
    """Settings for the mirror's MiniLM on the CPU, encoding questions as ``query_encoder``."""
    return load_settings(environ={}, path="/none.toml", overrides={
        "cache_dir": str(cache_dir), "hub_mirror": str(hub_mirror), "device": "cpu",
        "embedding": {"model": "sentence-transformers/all-MiniLM-L6-v2", "query_prefix": "", "max_length": 256,
                      "query_encoder": query_encoder},
    })  # fmt: skip


def test_the_setting_routes_queries_through_the_padded_encoder(hub_mirror, tmp_path):
    settings = minilm_on_cpu(hub_mirror, tmp_path, "padded")
    padded = load_embedding(settings, allow_download=False).model
    assert padded._query_encoder is not None
    plain = load_embedding(settings.model_copy(update={"embedding": settings.embedding.model_copy(
        update={"query_encoder": "sentence-transformers"})}), allow_download=False).model  # fmt: skip
    assert plain._query_encoder is None
    for text in TEXTS:
        assert float(np.dot(padded.get_query_embedding(text), plain.get_query_embedding(text))) > 0.99999


def test_a_compiled_encoder_runs_every_question_on_its_own_thread_and_joins_waiting_ones(reference, monkeypatch):
    """CUDA graphs belong to the thread that captured them: concurrent questions (API
    requests in a thread pool) must all run on the encoder's own thread, in turn, and the
    questions that queued meanwhile go through together, padded to a batch size with a graph."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import torch

    monkeypatch.setattr(torch, "compile", lambda model, **options: model)  # the threading, not the compiler
    encoder = PaddedEncoder(reference[0].auto_model, reference.tokenizer, 256, "cpu", "compiled")
    eager = encoder.forward
    questions = TEXTS * 4
    running, threads, overlaps, batches = [], set(), [], []

    def forward(input_ids, attention_mask):
        threads.add(threading.get_ident())
        running.append(1)
        overlaps.append(len(running))
        batches.append(tuple(input_ids.shape))
        deadline = time.monotonic() + 10
        while len(batches) == 1 and encoder._waiting.qsize() < len(questions) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # the first question holds the thread until every other one waits
        try:
            return eager(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            running.pop()

    encoder.forward = forward
    encoder.warm_up()
    assert set(batches) == {(rows, width) for rows in BATCH_BUCKETS for width in (32, 64)}
    batches.clear()
    expected = reference.encode(questions, normalize_embeddings=True)
    with ThreadPoolExecutor(len(questions)) as pool:
        first = pool.submit(encoder.encode, [questions[0]])
        wait_for(lambda: len(batches) == 1)  # the first question alone on the encoder's thread, then the rest
        rest = list(pool.map(lambda text: encoder.encode([text])[0], questions[1:]))
        got = [first.result()[0], *rest]
    assert len(threads) == 1 and threading.get_ident() not in threads and max(overlaps) == 1
    assert [rows for rows, _ in batches] == [1, 16]  # 11 waiting questions, padded to 16 rows
    assert min(float(np.dot(g, e)) for g, e in zip(got, expected, strict=True)) > 0.99999


@pytest.mark.parametrize("fails", [False, True])
def test_a_recorded_graph_has_its_own_cublas_workspace(monkeypatch, fails):
    """cuBLAS's workspaces are let go before each capture (the graph's own then comes from
    its pool) and after it, failed or not: a workspace in the general cache, which
    torch.compile's recordings free, would be written by every replay. The CUDA calls are
    stand-ins here (no GPU); the GPU tests replay the graphs against eager results."""
    import torch

    from pipeline.core import cuda_graphs

    calls = []

    class Capture:
        def __init__(self, graph, **kwargs):
            calls.append(f"capture ({kwargs['capture_error_mode']})")

        def __enter__(self):
            calls.append("begin")

        def __exit__(self, *exc):
            calls.append("end")

    def step():
        calls.append("step")
        if fails:
            raise RuntimeError("operation not permitted when stream is capturing")
        return "output"

    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: calls.append("clear"), raising=False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    if fails:
        with pytest.raises(RuntimeError):
            cuda_graphs.record_graph(step, None, None)
    else:
        assert cuda_graphs.record_graph(step, None, None) == ("graph", "output")
    assert calls == ["clear", "capture (thread_local)", "begin", "step", "end", "clear"]


def test_the_graph_thread_keeps_nothing_of_a_finished_call():
    """The process's one graph thread outlives every encoder: what it ran last must not keep
    that encoder (its weights on the GPU) alive. On the H200 a closed runtime still held
    1.04 GiB, the last compiled encoder, through the thread's loop variables."""
    import gc
    import weakref

    class Encoder:
        def work(self, value: int) -> int:
            return value + 1

    encoder = Encoder()
    gone = weakref.ref(encoder)
    assert graph_thread().run(encoder.work, 1) == 2
    del encoder
    gc.collect()
    wait_for(lambda: gone() is None, timeout_s=5)


def test_a_failed_cuda_graph_capture_falls_back_to_eager_encoding(reference, caplog):
    """As seen on the H200 host: a capture failed with CUBLAS_STATUS_NOT_INITIALIZED."""
    encoder = PaddedEncoder(reference[0].auto_model, reference.tokenizer, 256, "cpu", "eager")
    expected = encoder.encode(TEXTS)

    def failing_capture(**inputs):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`")

    encoder.forward, encoder._graph_thread, encoder.mode = failing_capture, graph_thread(), "compiled"
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-6)
    assert encoder.mode == "eager" and encoder._graph_thread is None and "encoding eagerly" in caplog.text
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-6)  # and stays eager


def test_captured_graphs_need_a_gpu_and_elsewhere_the_setting_encodes_eagerly(reference, hub_mirror, tmp_path, caplog):
    with pytest.raises(ValueError, match="CUDA"):
        PaddedEncoder(reference[0].auto_model, reference.tokenizer, 256, "cpu", "captured")
    model = load_embedding(minilm_on_cpu(hub_mirror, tmp_path, "captured"), allow_download=False).model
    assert model._query_encoder is not None and model._query_encoder.mode == "eager"
    assert "needs a CUDA device" in caplog.text
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    assert min(float(np.dot(model.get_query_embedding(t), e)) for t, e in zip(TEXTS, expected, strict=True)) > 0.99999


def test_a_capture_that_fails_at_warm_up_leaves_an_eager_encoder(reference, monkeypatch, caplog):
    """Graphs are recorded at load (every shape, when captured by hand): a failure there
    is met on the graph thread, and the encoder answers eagerly from then on."""
    import threading

    import torch

    def failing(**inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch, "compile", lambda model, **options: failing)
    encoder = PaddedEncoder(reference[0].auto_model, reference.tokenizer, 256, "cpu", "compiled")
    give_up, threads = encoder._give_up_graphs, []

    def recorded(exc: RuntimeError) -> None:  # where the thread's stream is put back after a capture
        threads.append(threading.current_thread().name)
        give_up(exc)

    encoder._give_up_graphs = recorded
    encoder.warm_up()
    assert threads == ["cuda-graphs"]
    assert encoder.mode == "eager" and encoder._graph_thread is None and "encoding eagerly" in caplog.text
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    assert min(float(np.dot(g, e)) for g, e in zip(encoder.encode(TEXTS), expected, strict=True)) > 0.99999
