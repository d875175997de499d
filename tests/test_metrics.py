"""Metrics an operator can scrape: the RAG API's /metrics and the app's metrics port,
after real requests, read back with prometheus_client's own parser."""

from __future__ import annotations

import gc

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from streamlit.testing.v1 import AppTest

from pipeline.serving.metrics import MetricsEndpoint
from tests.conftest import ROOT, ApiServer, free_port
from tests.helpers import engine_for

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = "日本で梅雨がないのは北海道とどこか。"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of every sample in an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def api(standin, tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("metrics-api"), RAG_LLM_BASE_URL=standin.base_url, RAG_API_TOKEN=TOKEN)
    yield server
    server.stop()


def test_the_api_exposes_steps_tokens_outcomes_and_refusals(api):
    assert httpx.get(f"{api.url}/metrics").status_code == 401  # behind the API's token, as every route but /healthz
    with httpx.stream("POST", f"{api.url}/question", json={"question": QUESTION}, headers=AUTH, timeout=60) as r:
        r.read()
    chat = {"messages": [{"role": "user", "content": QUESTION}]}
    assert httpx.post(f"{api.url}/v1/chat/completions", json=chat, headers=AUTH, timeout=60).status_code == 200
    assert httpx.post(f"{api.url}/v1/search", json={"query": QUESTION}, headers=AUTH).status_code == 200
    assert httpx.post(f"{api.url}/v1/search", json={"query": " "}, headers=AUTH).status_code == 400
    scrape = httpx.get(f"{api.url}/metrics", headers=AUTH)
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    seen = samples(scrape.text)
    assert seen[("jawiki_rag:request_success_total", (("finished_reason", "stop"),))] == 2
    assert seen[("jawiki_rag:time_to_first_token_seconds_count", ())] == 2
    assert seen[("jawiki_rag:e2e_request_latency_seconds_count", ())] == 2
    for step in ("queue", "search", "fetch", "prompt", "handoff", "ttft", "relay", "generation"):
        assert seen[("jawiki_rag:request_step_seconds_count", (("step", step),))] == 2, step
    assert seen[("jawiki_rag:search_request_seconds_count", ())] == 1
    assert seen[("jawiki_rag:num_requests_running", ())] == 0
    assert seen[("jawiki_rag:generation_tokens_total", ())] > 0 and seen[("jawiki_rag:prompt_tokens_total", ())] > 0
    assert seen[("jawiki_rag:request_refused_total", (("reason", "invalid_api_key"),))] == 1
    assert seen[("jawiki_rag:request_refused_total", (("reason", "empty_question"),))] == 1
    assert seen[("process_cpu_seconds_total", ())] > 0  # how many cores the process keeps busy


def test_the_app_serves_the_same_metrics_on_its_port(demo_cache, isolated_env, fresh_app_process, monkeypatch):
    port = free_port()
    for name, value in {
        "RAG_CACHE_DIR": str(demo_cache),
        "RAG_LLM_BACKEND": "none",
        "RAG_METRICS_PORT": str(port),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()  # starts the metrics server
    outcome = ("jawiki_rag:request_success_total", (("finished_reason", "search_only"),))
    before = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text).get(outcome, 0.0)
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception
    after = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    assert after[outcome] == before + 1


def test_the_apps_endpoint_moves_with_its_port_and_closes_when_turned_off():
    """A new metrics.port closes the old one (no address stays open); port 0 closes it."""
    endpoint, first, second = MetricsEndpoint(), free_port(), free_port()
    try:
        endpoint.serve("127.0.0.1", first)
        assert httpx.get(f"http://127.0.0.1:{first}/metrics").status_code == 200
        endpoint.serve("127.0.0.1", second)
        assert httpx.get(f"http://127.0.0.1:{second}/metrics").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{first}/metrics")
        endpoint.serve("127.0.0.1", 0)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{second}/metrics")
    finally:
        endpoint.close()


def test_a_metrics_port_already_taken_is_logged_and_the_app_goes_on(caplog):
    taken = MetricsEndpoint()
    port = free_port()
    taken.serve("127.0.0.1", port)
    second = MetricsEndpoint()
    try:
        second.serve("127.0.0.1", port)  # no exception: every page would fail with it
        assert "metrics not served" in caplog.text
        second.serve("127.0.0.1", port)  # not tried again at every page run
        assert caplog.text.count("metrics not served") == 1
    finally:
        second.close()
        taken.close()


def test_an_answer_dropped_unread_is_no_longer_counted_as_running(retrieval, standin):
    """A page rerun between asking and reading drops the stream: it ends then (the LLM
    request closed, the gauge of answers being produced back where it was)."""

    def running() -> float:
        return REGISTRY.get_sample_value("jawiki_rag:num_requests_running")

    def answers() -> float:  # every answer that asked the LLM, however it ended
        return REGISTRY.get_sample_value("jawiki_rag:e2e_request_latency_seconds_count")

    rag = engine_for(retrieval, standin.base_url)
    before, answered = running(), answers()
    stream = rag.answer(QUESTION)
    assert running() == before + 1
    del stream
    gc.collect()
    assert running() == before
    assert answers() == answered  # it never asked the LLM: not an answer in the metrics
    rag.answer(QUESTION).consume()
    assert answers() == answered + 1
