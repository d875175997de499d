"""What only a GPU host can check: the exact search on CUDA, the compiled query encoder,
and the supervisor driving a real `vllm serve` (a tiny Llama with random weights, so that
it starts in seconds). Skipped without CUDA (and without vLLM for the engine tests); run
them on a GPU host as docs/llm.md says."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.schema import Turn
from pipeline.generation.llm import vllm_available
from pipeline.generation.supervisor import EngineSupervisor, group_alive, group_members
from pipeline.retrieval.dense.searchers import SCAN_GRAPH_QUERIES, BatchingSearcher, ExactSearcher, Int8Searcher
from pipeline.serving.runtime import RagRuntime
from pipeline.settings.sources import load_settings, with_values

QUESTION = "日本で梅雨がないのは北海道とどこか。"

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
vllm = pytest.mark.skipif(
    not vllm_available(load_settings(environ={}, path="/none.toml")), reason="needs vLLM (`vllm serve`)"
)


@cuda
def test_exact_search_on_the_gpu_finds_the_fp32_top_10():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200_003, 256)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, len(vectors), 16)] + 0.1 * rng.standard_normal((16, 256)).astype(np.float32)
    stored = vectors.astype(np.float16)  # what the GPU holds: the order and scores are those of these vectors
    searcher = ExactSearcher(torch.from_numpy(stored).to("cuda"), "cuda")
    assert searcher.matrix.shape[0] % 64 == 0 and searcher.ntotal == 200_003
    similarities, rows = BatchingSearcher(searcher).search(queries, 10)
    scores = queries @ stored.astype(np.float32).T
    expected = np.argsort(-scores, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    # re-scored in fp32 (on the H100 this matched to ~1e-5 of the fp32 vectors, not of these)
    np.testing.assert_allclose(similarities, np.take_along_axis(scores, expected, axis=1), atol=1e-5)


@cuda
@pytest.mark.parametrize("scan_graphs", [False, True])
def test_the_int8_scan_on_the_gpu_finds_the_fp32_top_10(tmp_path, scan_graphs):
    """cuBLASLt's int8 GEMM (``torch._int_mm`` on CUDA) behind the re-scoring, op by op or
    recorded as CUDA graphs: every query count replays the next larger graph, whose other
    query rows hold an earlier search's."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200_003, 1024)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, len(vectors), 16)] + 0.05 * rng.standard_normal((16, 1024)).astype(np.float32)
    np.save(tmp_path / "m.npy", vectors.astype(np.float16))
    searcher = Int8Searcher.from_file(tmp_path / "m.npy", "cuda", scan_graphs=scan_graphs)
    assert searcher.codes.is_cuda and searcher.codes.shape[0] % 64 == 0
    assert sorted(searcher.scan_graphs) == (sorted(SCAN_GRAPH_QUERIES) if scan_graphs else [])
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()
    similarities, rows = BatchingSearcher(searcher).search(queries, 10)
    # 24 query rows of int32 scores (19 MB) and, on the searcher's thread, maybe a cuBLASLt
    # workspace (up to 32 MiB): not a copy of the 205 MB of codes (cuBLASLt takes their
    # transposed view); a recorded scan allocates nothing (its pool was filled at load)
    assert torch.cuda.max_memory_allocated() - held < searcher.codes.numel() / 2
    scores = queries @ vectors.astype(np.float16).astype(np.float32).T
    expected = np.argsort(-scores, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(similarities, np.take_along_axis(scores, expected, axis=1), atol=1e-5)
    replayed = []
    for graph in searcher.scan_graphs.values():
        graph.shortlist = lambda queries, real=graph.shortlist, count=graph.queries: (
            replayed.append(count),
            real(queries),
        )[1]
    for count in (1, 4, 3, 9):  # graphs of 1, 4 (then with a row of the last search) and 16 queries
        np.testing.assert_array_equal(searcher.search(queries[-count:], 10)[1], expected[-count:])
    for k in (64, 65):  # 64 + 64 candidates: the graph's 128; one more: scanned op by op
        np.testing.assert_array_equal(searcher.search(queries[:2], k)[1][:, :10], expected[:2])
    assert replayed == ([1, 4, 4, 16, 2] if scan_graphs else [])
    searcher.close()
    assert searcher.scan_graphs == {}


@cuda
@pytest.mark.parametrize("one_step", [False, True])
def test_on_a_gpu_questions_go_through_captured_graphs_and_the_recorded_int8_scan(
    hub_mirror, tmp_path, wiki_records, one_step
):
    """The settings as a GPU host has them by default: ``query_encoder = auto`` is the
    captured encoder and the int8 scan is recorded; with ``index.encode_and_scan`` the two
    run in one step, the store taking the question's text. Concurrent questions (replayed
    together) find the rows that each finds alone."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.retrieval.loading import load_retrieval
    from tests.conftest import jawiki_settings, search

    settings = jawiki_settings(hub_mirror, tmp_path, backend="exact-int8")
    settings = with_values(settings, {"index.encode_and_scan": one_step})
    service = load_retrieval(settings)
    try:
        assert service.embedding.model.padded_encoder.mode == "captured"
        store = service.vector_index.vector_store
        assert f"recorded as {len(SCAN_GRAPH_QUERIES)} CUDA graphs" in store.client.describe()
        assert store.is_embedding_query is not one_step
        assert ("in one step" in service.status().vector_search) is one_step
        texts = [f"{record['title']}\n{record['text']}" for record in wiki_records[30:54]]
        alone = [search(service, text, mode="dense").hits[0].row for text in texts]
        with ThreadPoolExecutor(len(texts)) as pool:
            together = list(pool.map(lambda text: search(service, text, mode="dense").hits[0].row, texts))
        assert together == alone and alone[3] == 33
    finally:
        service.close()


@cuda
def test_the_compiled_query_encoder_gives_the_eager_vectors(minilm_dir):
    from concurrent.futures import ThreadPoolExecutor

    from sentence_transformers import SentenceTransformer

    from pipeline.retrieval.dense.gpu_encoder import PaddedEncoder

    texts = ["梅雨とは何か", "グスタフ・マーラーの交響曲はいくつあるか。" * 3, "What is the rainy season?"] * 7
    reference = SentenceTransformer(str(minilm_dir), device="cuda").encode(texts, normalize_embeddings=True)
    encoder = PaddedEncoder.from_folder(minilm_dir, "cuda", 256, "compiled")
    encoder.warm_up()
    with ThreadPoolExecutor(len(texts)) as pool:  # questions that wait are replayed together
        vectors = np.stack(list(pool.map(lambda text: encoder.encode([text])[0], texts)))
    assert encoder.mode == "compiled"  # no capture failed
    assert (vectors * reference).sum(axis=1).min() > 0.999  # fp16 + CUDA graphs vs fp32 eager
    assert (encoder.encode(texts) * reference).sum(axis=1).min() > 0.999  # 21 texts: one call, padded to 32


@cuda
def test_the_captured_query_encoder_gives_the_eager_vectors(minilm_dir):
    """Graphs recorded by hand (no torch.compile): concurrent questions of several lengths
    and batch sizes, every shape recorded at load, against fp32 eager vectors."""
    from concurrent.futures import ThreadPoolExecutor

    from sentence_transformers import SentenceTransformer

    from pipeline.retrieval.dense.gpu_encoder import BATCH_BUCKETS, PaddedEncoder

    texts = ["梅雨とは何か", "グスタフ・マーラーの交響曲はいくつあるか。" * 3, "What is the rainy season?" * 12] * 7
    reference = SentenceTransformer(str(minilm_dir), device="cuda").encode(texts, normalize_embeddings=True)
    encoder = PaddedEncoder.from_folder(minilm_dir, "cuda", 256, "captured")
    encoder.warm_up()
    with ThreadPoolExecutor(len(texts)) as pool:
        vectors = np.stack(list(pool.map(lambda text: encoder.encode([text])[0], texts)))
    assert encoder.mode == "captured"  # no capture failed
    assert (vectors * reference).sum(axis=1).min() > 0.999
    assert len(encoder._captured) == len(BATCH_BUCKETS) * len(encoder.buckets)  # every shape, at load
    one = encoder.encode(texts[:1])
    assert (encoder.encode(texts) * reference).sum(axis=1).min() > 0.999  # 21 texts: one replay of 32 rows
    np.testing.assert_array_equal(encoder.encode(texts[:1]), one)  # graphs of one pool: outputs copied out


@cuda
def test_e5_and_the_recorded_int8_scan_wait_only_for_their_own_streams(tmp_path, minilm_dir):
    """E5's graphs (graph thread) and the int8 scan's (batching searcher's thread) replay
    on streams of their own: while one of them, or PyTorch's default stream, is held by a
    kernel that sleeps for about a second, the other still answers, and right."""
    from pipeline.retrieval.dense.gpu_encoder import PaddedEncoder

    encoder = PaddedEncoder.from_folder(minilm_dir, "cuda", 256, "captured")
    encoder.warm_up()
    question = encoder.encode([QUESTION])
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50_000, question.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[123] = question[0]
    np.save(tmp_path / "m.npy", vectors.astype(np.float16))
    searcher = Int8Searcher.from_file(tmp_path / "m.npy", "cuda", scan_graphs=True)
    scan_stream = searcher.scan_graphs[1]._stream
    assert scan_stream is not None and scan_stream != encoder._stream

    def encodes():
        np.testing.assert_array_equal(encoder.encode([QUESTION]), question)

    def scans():
        assert 123 in searcher.candidates(question, 10)[0]

    def both():
        encodes(), scans()

    for busy, answers in ((scan_stream, encodes), (encoder._stream, scans), (torch.cuda.default_stream(), both)):
        with torch.cuda.stream(busy):
            torch.cuda._sleep(2_000_000_000)  # about a second at an H100's clock
        answers()
        assert not busy.query(), f"{answers.__name__}: waited for the busy stream"
        busy.synchronize()
    searcher.close()


def tiny_llama(folder: Path) -> Path:
    """A two-layer Llama with a byte-level tokenizer, for `vllm serve --load-format dummy`."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "▁": 259}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    files = {
        "tokenizer_config.json": {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                                  "unk_token": "<unk>", "add_bos_token": True, "model_max_length": 4096},
        "config.json": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
                        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 4, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                        "vocab_size": 512, "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 1,
                        "eos_token_id": 2, "torch_dtype": "bfloat16", "tie_word_embeddings": False},
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2},
    }  # fmt: skip
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def engine_settings(tmp_path_factory):
    folder = tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")
    return load_settings(environ={}, path="/none.toml", overrides={
        "cache_dir": str(tmp_path_factory.mktemp("engine-cache")), "embedding": {"allow_fallback": False},
        "llm": {"backend": "local", "model": str(folder), "max_model_len": 2048, "gpu_memory_utilization": 0.3,
                "extra_args": "--load-format dummy --enforce-eager", "prompt_format": "llama2"},
        "generation": {"max_new_tokens": 32},
    })  # fmt: skip


@cuda
@vllm
def test_the_supervisor_runs_a_real_engine_and_answers_stream_through_the_product(engine_settings):
    runtime = RagRuntime(engine_settings)
    rag = runtime.service
    try:
        status = runtime.supervisor.wait_ready(600)
        assert status.state == "ready", status.log_tail
        assert status.memory["weights_gib"] < 1 and status.memory["kv_cache_tokens"] > 2048  # read from vLLM's log
        stream = rag.answer(QUESTION)
        assert stream.answer.sources and stream.answer.prompt.startswith("<s>[INST] <<SYS>>")
        chunks = list(stream)
        answer = stream.answer
        assert chunks and "".join(chunks) == answer.text and answer.complete and answer.error is None
        assert answer.finish_reason == "length"  # random weights never say </s>: the 32 tokens run out
        assert answer.timings["completion_tokens"] == 32  # counted by the engine (usage), not estimated
        assert answer.timings["ttft"] > 0 and answer.timings["tokens_per_s"] > 0
        assert rag.status().llm.reachable

        first_pid = status.pid  # a saved engine setting applies by restarting the engine
        report = runtime.reload(with_values(engine_settings, {"llm.gpu_memory_utilization": 0.25}))
        assert report.engine == "restarting" and report.retrieval == []
        status = runtime.supervisor.wait_ready(600)
        assert status.state == "ready" and status.pid != first_pid and status.utilization == 0.25
        assert not group_alive(first_pid)  # the first engine's EngineCore went with it
        assert runtime.service.answer(QUESTION).consume().complete  # the backend follows the engine to its new port
        assert len(group_members(status.pid)) > 1  # vLLM's API server and its EngineCore, at least
    finally:
        runtime.close()
    assert runtime.supervisor.status().state == "stopped"
    assert not group_alive(status.pid)


@cuda
@vllm
def test_a_real_engine_whose_api_server_dies_leaves_nothing_on_the_card(engine_settings):
    """SIGKILL to vLLM's API server (as by the OOM killer): its EngineCore would live on
    with the GPU memory; the supervisor stops it once it sees the exit."""
    supervisor = EngineSupervisor(engine_settings.resolved_cache_dir / "logs-killed")
    try:
        supervisor.start(engine_settings)
        status = supervisor.wait_ready(600)
        assert status.state == "ready", status.log_tail
        others = [pid for pid in group_members(status.pid) if pid != status.pid]
        assert others  # the EngineCore
        os.kill(status.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "終了" not in supervisor.status().ja and time.monotonic() < deadline:
            time.sleep(0.1)  # first "not answering", then the exit once the process is reaped
        assert supervisor.status().state == "failed" and "終了コード -9" in supervisor.status().ja
        deadline = time.monotonic() + 60
        while group_alive(status.pid) and time.monotonic() < deadline:  # stopped beside the status check
            time.sleep(0.1)
        assert not group_alive(status.pid)
    finally:
        supervisor.stop()


@cuda
@vllm
def test_a_real_engine_answers_through_the_models_chat_template(engine_settings, tmp_path):
    """The tiny Llama with a chat template in its tokenizer config: ``auto`` sends the
    messages to /v1/chat/completions; without the template, vLLM's refusal is explained."""
    from tests.helpers import TEMPLATE

    plain = Path(engine_settings.llm.model)
    templated = shutil.copytree(plain, tmp_path / "templated")
    config = json.loads((templated / "tokenizer_config.json").read_text(encoding="utf-8"))
    (templated / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    settings = with_values(engine_settings, {"llm.model": str(templated), "llm.prompt_format": "auto"})
    runtime = RagRuntime(settings)
    rag = runtime.service
    try:
        assert runtime.supervisor.wait_ready(600).state == "ready"
        stream = rag.answer(QUESTION)
        assert stream.answer.prompt_format == "chat-template"
        assert json.loads(stream.answer.prompt)[0]["role"] == "system"
        chunks = list(stream)
        answer = stream.answer
        # random weights over a byte vocabulary may decode to no text at all: the engine's count still holds
        assert "".join(chunks) == answer.text and answer.complete and answer.error is None
        assert answer.finish_reason == "length" and answer.timings["completion_tokens"] == 32
        assert answer.timings["prompt_tokens"] > 0  # counted on the template, with the model's tokenizer
        history = [Turn(question="梅雨とは", answer="雨の季節です[1]。")]
        follow_up = rag.answer("それはいつ？", history)
        assert follow_up.answer.rewritten and follow_up.consume().complete  # condensed on the chat endpoint too

        forced = with_values(settings, {"llm.model": str(plain), "llm.prompt_format": "chat-template"})
        assert runtime.reload(forced).engine == "restarting"
        assert runtime.supervisor.wait_ready(600).state == "ready"
        refused = runtime.service.answer(QUESTION).consume()
        assert refused.error is not None and refused.error.code == "llm_no_chat_template", refused.error
        assert refused.mode == "search-only" and refused.sources
    finally:
        runtime.close()


@cuda
@vllm
def test_a_real_engine_that_cannot_get_its_memory_is_explained(engine_settings, tmp_path):
    """A second engine while the first holds 0.5 of the card: vLLM's own refusal, read."""
    first, second = EngineSupervisor(tmp_path / "a"), EngineSupervisor(tmp_path / "b")
    try:
        first.start(with_values(engine_settings, {"llm.gpu_memory_utilization": 0.5}))
        assert first.wait_ready(600).state == "ready"
        second.start(with_values(engine_settings, {"llm.gpu_memory_utilization": 0.6}))
        status = second.wait_ready(600)
        assert status.state == "failed"  # read from vLLM's "Free memory on device … is less than desired …"
        assert "less than gpu_memory_utilization=0.6 asks for" in status.en, (status.en, status.log_tail)
        assert "gpu_memory_utilization を 0." in status.ja and "以下に下げる" in status.ja
    finally:
        threads = [threading.Thread(target=s.stop) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


APP_KILLED = """
import sys, time
from pathlib import Path
from pipeline.generation.supervisor import EngineSupervisor
from pipeline.settings.sources import load_settings
from tests.test_gpu_host import tiny_llama
folder = Path(sys.argv[1])
llm = {"backend": "local", "model": str(tiny_llama(folder / "model")), "max_model_len": 2048,
       "gpu_memory_utilization": 0.3, "extra_args": "--load-format dummy --enforce-eager"}
settings = load_settings(environ={}, path="/none.toml", overrides={"cache_dir": str(folder / "cache"), "llm": llm})
supervisor = EngineSupervisor(folder / "logs")
supervisor.start(settings)
status = supervisor.wait_ready(600)
print(status.state, status.pid, flush=True)
time.sleep(3600)
"""


@cuda
@vllm
def test_a_real_engine_goes_when_the_app_is_killed_outright(tmp_path):
    """The app dies of SIGKILL: the kernel's parent-death signal (SIGTERM) reaches vLLM's
    API server, which stops its EngineCore; nothing of the engine is left on the card."""
    app = subprocess.Popen([sys.executable, "-c", APP_KILLED, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        state, pid = app.stdout.readline().split()
        assert state == "ready" and len(group_members(int(pid))) > 1
    finally:
        app.kill()
        app.wait()
    deadline = time.monotonic() + 120
    while group_alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group_alive(int(pid))
