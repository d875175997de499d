"""The UI's client of the RAG API against a real API process on loopback: the same
interface and schema as the local service."""

import concurrent.futures
import contextlib
import gc
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pipeline.core.errors import DataUnavailableError, EmptyQueryError, RagError
from pipeline.core.schema import RAG_MODEL_NAME, Turn
from pipeline.serving import client as client_module
from pipeline.serving.client import RagApiClient
from pipeline.settings.sources import load_settings, with_retrieval, with_session_values
from tests.conftest import ApiServer, StandinServer, free_port

QUESTION = "日本で梅雨がないのは北海道とどこか。"


@pytest.fixture(scope="module")
def api(standin, tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("client-api"), RAG_LLM_BASE_URL=standin.base_url,
                       RAG_API_TOKEN="secret-token")  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def ui_settings():
    """The UI process's own settings (its defaults: what a session did not change)."""
    return load_settings(environ={}, path="/none.toml")


def test_answers_stream_with_sources_first_and_timings_last(api, standin, ui_settings):
    client = RagApiClient(api.url, "secret-token", settings=ui_settings)
    session = with_session_values(ui_settings, {"retrieval.top_k": 3, "generation.max_new_tokens": 300})
    stream = client.answer(QUESTION, [Turn(question="梅雨前線とは", answer="前線です[1]。")], session)
    answer = stream.answer
    assert len(answer.sources) == 3 and answer.sources[0].number == 1  # before any text
    assert answer.text == "" and answer.prompt and answer.prompt.startswith("<s>[INST]")
    text = "".join(stream)
    assert "[1]" in text and text == answer.text and answer.complete and answer.mode == "demo"
    assert answer.timings["ttft"] > 0 and answer.citations.used == [1, 2]
    assert answer.standalone_question == "梅雨前線とは 日本で梅雨がないのは北海道とどこか。"
    assert standin.last_request()["max_tokens"] == 300


def test_search_passages_and_status(api, ui_settings):
    client = RagApiClient(api.url, "secret-token", settings=ui_settings)
    status = client.status()
    assert status.state == "ready" and status.retrieval.passages == 1145 and status.retrieval.modes == ["bm25"]
    result = client.search(QUESTION, with_retrieval(ui_settings, mode="bm25", top_k=4))
    assert result.mode == "bm25" and len(result.hits) == 4 and result.hits[0].title == "梅雨"
    context = client.passage(1)
    assert context.passage.row == 1 and context.previous.row == 0 and context.next.row == 2
    with pytest.raises(RagError) as caught:
        client.passage(99999)
    assert "コーパスの範囲" in caught.value.ja  # the API's own Japanese message


def test_status_is_asked_once_per_short_interval(api, monkeypatch):
    client = RagApiClient(api.url, "secret-token")
    asked = []
    real_get = client._http.get
    monkeypatch.setattr(client._http, "get", lambda *a, **k: asked.append(a[0]) or real_get(*a, **k))
    assert client.status().retrieval.passages == 1145 and client.status().retrieval.auto_mode == "bm25"
    assert asked == ["/readyz"]  # one page rerun's questions, one request
    monkeypatch.setattr(client_module, "STATUS_MAX_AGE_S", 0.0)
    assert client.status().retrieval.passages == 1145 and asked == ["/readyz", "/readyz"]


def test_refusals_and_outages_are_japanese_errors(api, standin):
    with pytest.raises(DataUnavailableError, match="token"):
        RagApiClient(api.url, "wrong").status()
    with pytest.raises(DataUnavailableError, match="token"):
        RagApiClient(api.url, "wrong").answer(QUESTION)
    with pytest.raises(EmptyQueryError):
        RagApiClient(api.url, "secret-token").answer("  ")
    with pytest.raises(RagError) as caught:
        RagApiClient(api.url, "secret-token").search("梅" * 5000)
    assert "質問が長すぎます" in caught.value.ja
    with pytest.raises(RagError) as caught:
        RagApiClient(api.url, "secret-token").answer("梅" * 5000)
    assert "質問が長すぎます" in caught.value.ja
    with pytest.raises(DataUnavailableError) as caught:
        RagApiClient(f"http://127.0.0.1:{free_port()}").status()
    assert "接続できません" in caught.value.ja
    with pytest.raises(DataUnavailableError):
        RagApiClient(f"http://127.0.0.1:{free_port()}").answer(QUESTION)
    with pytest.raises(DataUnavailableError) as caught:  # api.url set to the LLM server itself
        RagApiClient(standin.url).answer(QUESTION)
    assert "RAG API として応答しませんでした" in caught.value.ja
    llm_named_like_the_api = StandinServer(model=RAG_MODEL_NAME)  # answers, without the RAG record
    try:
        with pytest.raises(DataUnavailableError) as caught:
            RagApiClient(llm_named_like_the_api.url).answer(QUESTION)
        assert "RAG API として応答しませんでした" in caught.value.ja
    finally:
        llm_named_like_the_api.stop()


def test_the_ui_closes_a_client_made_with_earlier_api_settings(tmp_path):
    """The UI keeps one client (and one set of replica admins) at a time: new API
    settings close the pooled connections of the old ones."""
    from ui import resources

    first, second = (
        load_settings(environ={"RAG_API_URL": f"http://127.0.0.1:{port}"}, path="/none.toml")
        for port in (free_port(), free_port())
    )
    old = resources._client(resources._api_key(first), first)
    old_admins = resources._replica_admins(resources._api_key(first), first)
    new = resources._client(resources._api_key(second), second)
    resources._replica_admins(resources._api_key(second), second)
    assert old._http.is_closed and all(admin._http.is_closed for admin in old_admins)
    assert not new._http.is_closed


def test_a_replaced_client_closes_once_nothing_goes_through_it(api, ui_settings):
    """New API settings close the old client, while other sessions may be using it: an
    answer being read streams to its end, a request under way is answered, an answer
    asked and dropped unread (a rerun in between) ends too, and the connections close
    when the last of them ends."""
    client = RagApiClient(api.url, "secret-token", settings=ui_settings)
    stream = client.answer(QUESTION)
    chunks = iter(stream)
    first = next(chunks)
    dropped = client.answer(QUESTION)  # never read nor closed
    with delayed(api.url, seconds=1.0) as slow_url:
        slow = RagApiClient(slow_url, "secret-token")
        under_way = concurrent.futures.ThreadPoolExecutor(1).submit(slow.passage, 1)
        time.sleep(0.3)
        slow.close()  # while the request waits for its answer
        assert under_way.result(timeout=30).passage.row == 1 and slow._http.is_closed
    client.close()  # the UI's cache lets go of it
    text = first + "".join(chunks)
    assert stream.answer.complete and stream.answer.error is None and text == stream.answer.text
    assert not client._http.is_closed  # the dropped answer still holds it
    del dropped
    gc.collect()
    assert client._http.is_closed
    with pytest.raises(DataUnavailableError) as caught:
        client.search(QUESTION)  # a page run that took it just before
    assert "API の設定が変わりました" in caught.value.ja


@contextlib.contextmanager
def delayed(url: str, seconds: float):
    """A loopback proxy that answers each GET ``seconds`` late, as a busy API would."""

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(seconds)
            answer = httpx.get(url + self.path, headers={"Authorization": self.headers["Authorization"]})
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
