"""The UI's client of the RAG API against a real API process on loopback."""

import pytest

from pipeline.api import client as client_module
from pipeline.api.client import RagApiClient
from pipeline.config import load_settings
from pipeline.engine import Turn
from pipeline.errors import DataUnavailableError, EmptyQueryError, RagError
from tests.conftest import ApiServer, free_port

QUESTION = "日本で梅雨がないのは北海道とどこか。"


@pytest.fixture(scope="module")
def api(standin, tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("client-api"), RAG_LLM_BASE_URL=standin.base_url,
                       RAG_API_TOKEN="secret-token")  # fmt: skip
    yield server
    server.stop()


def test_answers_stream_with_sources_first_and_timings_last(api, standin):
    client = RagApiClient(api.url, "secret-token")
    settings = load_settings(environ={"RAG_RETRIEVAL_TOP_K": "3", "RAG_GENERATION_MAX_NEW_TOKENS": "300"}, path="/x")
    answer = client.answer(QUESTION, [Turn("梅雨前線とは", "前線です[1]。")], settings)
    assert len(answer.sources) == 3 and answer.sources[0].number == 1  # before any text
    assert answer.text == ""
    text = "".join(answer.stream())
    assert "[1]" in text and answer.complete and answer.mode == "demo"
    assert answer.timings["ttft"] > 0 and answer.citations.used == [1, 2]
    assert answer.standalone_question == "梅雨前線とは 日本で梅雨がないのは北海道とどこか。"
    assert standin.last_request()["max_tokens"] == 300


def test_search_and_passages(api):
    client = RagApiClient(api.url, "secret-token")
    assert client.size == 1145 and client.modes == ["bm25"] and client.auto_mode == "bm25"
    result = client.search(QUESTION, mode="bm25", top_k=4)
    assert result.mode == "bm25" and len(result.hits) == 4 and result.hits[0].node.metadata["title"] == "梅雨"
    passage, previous_row, next_row = client.passage(1)
    assert passage.row == 1 and previous_row == 0 and next_row == 2


def test_status_is_asked_once_per_short_interval(api, monkeypatch):
    client = RagApiClient(api.url, "secret-token")
    asked = []
    real_get = client._http.get
    monkeypatch.setattr(client._http, "get", lambda *a, **k: asked.append(a[0]) or real_get(*a, **k))
    assert (client.size, client.modes, client.auto_mode) == (1145, ["bm25"], "bm25")
    assert asked == ["/readyz"]  # one page rerun's questions, one request
    monkeypatch.setattr(client_module, "STATUS_MAX_AGE_S", 0.0)
    assert client.status().passages == 1145 and asked == ["/readyz", "/readyz"]


def test_refusals_and_outages_are_japanese_errors(api):
    with pytest.raises(DataUnavailableError, match="token"):
        RagApiClient(api.url, "wrong").status()
    with pytest.raises(EmptyQueryError):
        RagApiClient(api.url, "secret-token").answer("  ")
    with pytest.raises(RagError) as caught:
        RagApiClient(api.url, "secret-token").search("梅" * 5000)
    assert "質問が長すぎます" in caught.value.ja
    with pytest.raises(DataUnavailableError) as caught:
        RagApiClient(f"http://127.0.0.1:{free_port()}").status()
    assert "接続できません" in caught.value.ja
