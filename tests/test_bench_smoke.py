"""Tiny runs of the benchmarks, so that they keep working (the real runs are not CI's)."""

import itertools
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from llama_index.core.schema import QueryBundle

from bench import api_load, api_relay, gpu_host, passage_store, request_cpu
from bench.gpu_host import reset_prefix_cache, run_users
from tests.conftest import EMBEDDINGS_DIR, MODEL_REPO, jawiki_settings


def test_api_load_smoke():
    result = api_load.main(["--clients", "4", "--questions", "2", "--max-concurrent", "2"])
    assert result["answered"] == 8 and result["errors"] == 0
    assert result["time_to_first_token"]["p50_ms"] > 0 and result["api_cpu_ms_per_answer"] > 0


def test_request_cpu_smoke(isolated_env):
    result = request_cpu.main(["--questions", "100"])
    assert result["questions"] == 100 and result["tokenizer"]
    timings = [value for value in result.values() if isinstance(value, dict) and "p50_ms" in value]
    assert len(timings) == 4 and all(timing["n"] == 100 and timing["mean_ms"] > 0 for timing in timings)


def test_api_relay_smoke():
    result = api_relay.main(["--requests", "3"])
    assert result["tokens_per_answer"]["whole"] > result["tokens_per_answer"]["short"] == 8
    # Not the per-token figure: a difference of two CPU readings in 10 ms clock ticks, whose
    # sign at 3 requests is noise (it read -1,044 µs once under the full suite); the
    # documented figure comes from 100 requests.
    assert result["api_cpu_ms_per_answer"]["whole"] > 0


def test_passage_store_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["passage_store", "--rows", "3000", "--out", str(tmp_path / "r.json")])
    passage_store.main()
    out = (tmp_path / "r.json").read_text(encoding="utf-8")
    assert '"rows": 3000' in out and '"get_10_rows"' in out


def test_soak_for_thirty_seconds_with_the_llm_killed_twice():
    """The CI version of bench/soak.py (the 30-minute run is in docs/reliability.md)."""
    from bench import soak

    result = soak.main(["--minutes", "0.5", "--restart-every", "10", "--workers", "4"])
    assert result["llm_restarts"] >= 2
    assert result["server_errors_5xx"] == 0 and result["client_side_errors"] == 0
    assert result["requests"] > 20
    outcomes = " ".join(result["by_kind_status_outcome"])
    assert ":llm" in outcomes and ":search_only" in outcomes  # answered by the LLM, and without it
    first, last, _ = result["api_process"]["fds_first_last_max"]
    assert last <= first + 10
    # A tagger per worker thread once grew the API by over 1 GB in the first 10 s of this
    # traffic; the first answers themselves add about 100 MiB.
    first, last, _ = result["api_process"]["rss_mib_first_last_max"]
    assert last - first < 400


def test_every_benchmark_module_imports():
    """The GPU benchmarks run only on a GPU host; here they must at least import, so a
    moved module or constant is caught before a lent GPU hour is spent on it."""
    import importlib
    import pkgutil

    import bench

    scripts = {"startup_floor_app"}  # a Streamlit script, run by `streamlit run`, not imported
    for module in pkgutil.iter_modules(bench.__path__):
        if module.name not in scripts:
            importlib.import_module(f"bench.{module.name}")


def test_the_textbook_pipeline_finds_the_passage_and_streams_from_the_engine(
    hub_mirror, wiki_records, standin, tmp_path, monkeypatch
):
    """bench.textbook as bench.gpu_host runs it, scaled down: LlamaIndex's FaissVectorStore
    over the mirror's own vectors, its Hugging Face embedding and OpenAILike streaming
    from an engine (the stand-in; all-MiniLM-L6-v2 in place of E5, named as such)."""
    import llama_index.core
    import tiktoken
    from llama_index.core import Settings

    from bench import textbook

    def offline(name: str):  # as on the GPU host, where the textbook died fetching it
        raise ConnectionError(f"no network: cannot download the encoding of {name}")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    # LlamaIndex's globals, which the textbook sets (the LLM's tokenizer; here MiniLM's),
    # from scratch and restored for later tests
    monkeypatch.setattr(llama_index.core, "global_tokenizer", None)
    for cached in ("_node_parser", "_tokenizer", "_transformations"):
        monkeypatch.setattr(Settings, cached, None)
    record = wiki_records[40]
    questions = [r["text"][:60] for r in wiki_records[100:115]]
    (tmp_path / "questions.json").write_text(json.dumps([*questions, record["text"][:60]]), encoding="utf-8")
    args = ["--engine-url", standin.url, "--model", standin.model, "--questions", str(tmp_path / "questions.json"),
            "--rows", "120", "--top-k", "1", "--users", "1,2", "--device", "cpu", "--encoder", MODEL_REPO,
            "--tokenizer", MODEL_REPO, "--embeddings", EMBEDDINGS_DIR]  # fmt: skip
    result = textbook.main([str(hub_mirror), *args])
    assert result["users_1"]["requests"] == 8 and result["users_2"]["requests"] == 2
    assert result["build"]["rows_indexed"] == 120
    assert result["users_1"]["ttft_p50_ms"] > 0 and result["users_2"]["tokens_per_request_p50"] > 1
    # The prompt the engine got holds the passage the last question is cut from, and
    # nothing beyond --rows was indexed.
    assert record["text"] in result["sample_prompt"]
    engine, _ = textbook.build_engine(textbook.arguments([str(hub_mirror), *args, "--rows", "20"]))
    assert all(int(hit.node.metadata["row"]) < 20 for hit in engine.retrieve(QueryBundle(record["text"][:60])))


def test_the_gpu_host_run_records_whether_mps_shares_the_card(tmp_path, monkeypatch):
    import os

    from bench.gpu_host import mps_daemon

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not mps_daemon()  # no pid file
    (tmp_path / "nvidia-cuda-mps-control.pid").write_text(f"{os.getpid()}\n")
    assert mps_daemon()
    (tmp_path / "nvidia-cuda-mps-control.pid").write_text("999999999\n")  # a daemon that is gone
    assert not mps_daemon()


def test_the_mps_priority_bench_times_the_probe_alone_and_beside_the_load(tmp_path):
    from bench import mps_priority

    report = mps_priority.main(["--device", "cpu", "--seconds", "1", "--out", str(tmp_path / "mps.json")])
    timed = report["no_mps"]
    assert "error" not in timed and timed["probe_alone_ms"]["n"] >= 1 and timed["probe_beside_load_ms"]["n"] >= 1
    assert timed["load_tflops_alone"] > 0 and timed["load_tflops_beside_probe"] > 0
    assert json.loads((tmp_path / "mps.json").read_text(encoding="utf-8"))["no_mps"] == timed


def test_the_mps_priority_bench_keeps_what_it_measured_when_the_load_dies(monkeypatch):
    import subprocess
    import sys

    from bench import mps_priority

    started = []
    spawn = mps_priority._child

    def load_that_dies(role, device, seconds, priority):
        if role == "probe":
            child = spawn(role, device, seconds, priority)
        else:  # says it is ready, then exits before its work
            child = subprocess.Popen([sys.executable, "-c", "print('ready')"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        started.append(child)
        return child

    monkeypatch.setattr(mps_priority, "_child", load_that_dies)
    result = mps_priority.run_mode("cpu", 1.0, use_mps=False, priority=None)
    assert result["probe_alone_ms"]["n"] >= 1  # measured before the load was asked to run
    assert "a child process failed" in result["error"]
    assert all(child.returncode is not None for child in started)  # both stopped and reaped


def test_the_gpu_host_run_reads_vllms_prefix_cache_counters():
    """As vLLM exposes them: prometheus_client counters, one series per engine core."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from bench.gpu_host import prefix_cache_tokens

    registry = CollectorRegistry()
    queries = Counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.", ["engine"], registry=registry)
    hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", ["engine"], registry=registry)
    queries.labels("0").inc(1800)
    queries.labels("1").inc(200)
    hits.labels("0").inc(1500)
    assert prefix_cache_tokens(generate_latest(registry).decode()) == {"queried": 2000.0, "hit": 1500.0}
    assert prefix_cache_tokens("# an engine without the counters\n") is None


def test_a_levels_timeline_lists_its_requests_in_the_order_sent():
    from bench.gpu_host import timeline

    results = [
        {"sent_ms": 2.04, "ttft_ms": 80.04, "steps": {"prepare": 12.34, "handoff": 3.0, "ttft": 60.0, "fetch": 1.0}},
        {"sent_ms": 0.5, "ttft_ms": None, "steps": {}},
    ]
    assert timeline(results) == [
        {"sent_ms": 0.5, "ttft_ms": None},
        {"sent_ms": 2.0, "ttft_ms": 80.0, "prepare": 12.3, "handoff": 3.0, "ttft": 60.0},
    ]


class NullSession:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_levels_users_open_their_sessions_first_and_then_send_together():
    """As httpx clients opened one thread after another did on the H100: slowly, one at a
    time. The first requests still leave together, once the last session is open."""
    one_at_a_time = threading.Lock()
    opened: list[float] = []
    sent: list[float] = []

    class SlowSession(NullSession):
        def __enter__(self):
            with one_at_a_time:
                time.sleep(0.05)
                opened.append(time.perf_counter())
            return self

    def send(session, item):
        sent.append(time.perf_counter())
        return {"ttft_ms": 1.0, "tokens": 2, "decode_s": 0.1, "tok_s": 10.0, "steps": {}}

    level = run_users(list(range(4)), 4, send, SlowSession)  # one request per user
    assert level["requests"] == 4 and len(opened) == 4
    assert min(sent) >= max(opened)  # nobody sent before the last session was open
    first_sends = [entry["sent_ms"] for entry in level["timeline"]]
    assert first_sends[-1] - first_sends[0] < 40  # together, not 50 ms apart as the sessions opened


def test_a_level_gives_each_rounds_ttft_and_how_spread_out_it_was_sent():
    """Every user's n-th request is round n: the first rounds leave together, the second
    as each user's first answer ends (here 0, 30, 60 and 90 ms after it); a failed
    request counts in its round, without a TTFT."""

    def send(session, item):
        if item < 4:
            time.sleep(0.03 * item)
            return {"ttft_ms": 100.0 + item, "tokens": 2, "decode_s": 0.1, "tok_s": 10.0, "steps": {}}
        if item == 7:
            raise OSError("the server closed the connection")
        return {"ttft_ms": 10.0 * item, "tokens": 2, "decode_s": 0.1, "tok_s": 10.0, "steps": {}}

    level = run_users(list(range(8)), 4, send, NullSession)  # user i sends items i, then i + 4
    first, second = level["by_round"]
    assert (first["round"], first["requests"], first["failed"], first["ttft_p50_ms"]) == (1, 4, 0, 101.5)
    assert (second["round"], second["requests"], second["failed"], second["ttft_p50_ms"]) == (2, 3, 1, 50.0)
    # 90 ms between the first and the last of the second round, less what the first's spread took back
    assert first["sent_over_ms"] < 40 and second["sent_over_ms"] >= 50


def test_a_request_that_fails_is_counted_and_its_user_goes_on():
    def send(session, item):
        if item in (0, 33):  # the first user's first request, the second user's second
            raise OSError(f"the server closed the connection ({item})")
        time.sleep(0.01)
        return {"ttft_ms": 1.0, "tokens": 2, "decode_s": 0.1, "tok_s": 10.0, "steps": {}}

    for _ in range(5):  # the failure races the others' wake-up from the barrier
        level = run_users(list(range(64)), 32, send, NullSession)  # two requests per user
        assert level["requests"] == 62 and level["failed"] == 2
        assert "the server closed the connection" in level["first_failure"]
        assert len(level["timeline"]) == 62


def test_a_level_without_failures_says_none():
    def send(session, item):
        return {"ttft_ms": 1.0, "tokens": 2, "decode_s": 0.1, "tok_s": 10.0, "steps": {}}

    level = run_users(list(range(8)), 4, send, NullSession)
    assert level["requests"] == 8 and "failed" not in level


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the user's own, expected
def test_a_user_whose_session_cannot_open_stops_the_level_at_once():
    def unreachable():
        raise OSError("no client")

    started = time.perf_counter()
    with pytest.raises(threading.BrokenBarrierError):
        run_users([1, 2], 2, lambda session, item: {}, unreachable)
    assert time.perf_counter() - started < 30  # not the barrier's 300 s


@pytest.mark.parametrize(
    ("status", "body", "emptied"),
    [
        (200, b'{"success": true}', True),  # vLLM 0.26 with VLLM_SERVER_DEV_MODE=1
        (200, b'{"success": false}', False),  # blocks still held
        (200, b"", True),  # earlier versions
        (404, b'{"detail": "Not Found"}', False),  # without the dev mode
    ],
)
def test_the_prefix_cache_reset_says_whether_the_engine_emptied_it(status, body, emptied):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Engine(BaseHTTPRequestHandler):
        def do_POST(self):
            asked.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert reset_prefix_cache(f"http://127.0.0.1:{server.server_port}") is emptied
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/reset_prefix_cache"]
    assert reset_prefix_cache(f"http://127.0.0.1:{server.server_port}") is False  # no engine there now


def test_the_burst_probe_times_a_burst_as_requests_and_in_one_call(hub_mirror, tmp_path, monkeypatch, wiki_records):
    from pipeline.retrieval.loading import load_retrieval
    from pipeline.settings.sources import with_retrieval

    monkeypatch.setattr(gpu_host, "BURST_SIZES", (1, 4))
    monkeypatch.setattr(gpu_host, "BURST_ROUNDS", 2)
    settings = with_retrieval(jawiki_settings(hub_mirror, tmp_path, backend="exact"), mode="dense")
    service = load_retrieval(settings)
    questions = [record["text"][:60] for record in wiki_records[:30]]
    embedding = service.embedding.model
    one_by_one = [embedding.get_query_embedding(q) for q in questions[:3]]
    assert np.allclose(embedding.encode_queries(questions[:3]), one_by_one, atol=1e-5)
    on_gpu = service.embedding.device.startswith("cuda")
    default = "captured" if on_gpu else "sentence-transformers"  # embedding.query_encoder = auto
    assert gpu_host.query_encoder_in_use(service) == default
    assert embedding.use_padded_encoder("eager")  # the GPU's path, eager
    assert gpu_host.query_encoder_in_use(service) == "eager"
    fp16 = on_gpu  # the padded encoder halves the model on a GPU
    assert np.allclose(embedding.encode_queries(questions[:3]), one_by_one, atol=1e-3 if fp16 else 1e-5)

    result = gpu_host.retrieval_burst(service, settings, itertools.cycle(questions))
    assert result["retriever"] == "dense" and result["top_k"] == settings.retrieval.top_k
    for size in (1, 4):
        in_one_call = result[f"size_{size}"]["in_one_call"]
        for way in ("as_requests", "as_requests_switch_0_5ms"):
            timed = result[f"size_{size}"][way]
            assert timed["all_done_ms_p50"] >= timed["request_ms_p50"] > timed["embed_ms_p50"] > 0
            assert timed["burst_cpu_ms_p50"] >= timed["cpu_ms_p50"] > 0 and timed["search_ms_p50"] > 0
        assert in_one_call["embed_ms_p50"] > 0 and in_one_call["search_ms_p50"] > 0
    assert sys.getswitchinterval() == 0.005  # put back
    profile = result["one_by_one_profile"]
    assert profile["wall_ms"] > 0 and profile["cpu_ms"] > 0 and len(profile["heaviest"]) == 15
    own = [row["own_ms"] for row in profile["heaviest"]]
    assert own == sorted(own, reverse=True) and all(row["calls"] > 0 for row in profile["heaviest"])
    assert sum(own) <= profile["wall_ms"]  # a part of each call's time
    beside = result["step_beside_busy_threads"]
    assert set(beside) == {"threads_0", "threads_8", "threads_32"} and min(beside.values()) > 0


def test_a_stacks_summary_counts_work_and_leaves_out_waits():
    raw = "\n".join([
        "run (server.py:10);answer (service.py:5);retrieve (service.py:9) 6",
        "run (server.py:10);answer (service.py:5);fit_request (budget.py:3) 2",
        "run (server.py:10);EpollSelector.select (selectors.py:468) 50",  # the event loop, idle
        "relay (streams.py:1);Condition.wait (threading.py:327) 40",  # a thread waiting
    ])  # fmt: skip
    summary = gpu_host.stacks_summary(raw)
    assert summary["samples"] == 8
    shares = {row["function"]: row["share"] for row in summary["inclusive"]}
    assert shares == {"run": 1.0, "answer": 1.0, "retrieve": 0.75, "fit_request": 0.25}
    assert summary["own"][0] == {"function": "retrieve (service.py:9)", "share": 0.75}


def test_sampled_stacks_say_where_a_process_spends_its_time(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", BUSY_PROGRAM])
    try:
        time.sleep(0.5)
        with gpu_host.sampled_stacks(busy.pid, tmp_path / "stacks.txt") as found:
            time.sleep(1.5)
    finally:
        busy.kill()
        busy.wait()
    if "ermission" in found.get("error", ""):  # a host that lets no process read another's memory
        pytest.skip(f"py-spy may not read another process here: {found['error']}")
    assert found["samples"] > 50, found
    assert {"function": "turn_the_wheel", "share": 1.0} in found["inclusive"]


BUSY_PROGRAM = """
def turn_the_wheel():
    while True:
        sum(range(1000))
turn_the_wheel()
"""
