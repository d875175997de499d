"""Inputs nobody should send, and model output nobody should trust (docs/reliability.md)."""

import json

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from pipeline.core.unicode import well_formed
from pipeline.generation.llm import open_backend
from pipeline.generation.token_count import EstimatedTokenCounter
from pipeline.retrieval.loading import load_retrieval
from pipeline.serving.local import LocalRag
from pipeline.settings.sources import load_settings
from tests.conftest import ROOT, ApiServer

GARBAGE = [
    "\x00\x01\x02\x1b[31m\ufffd\ufeff",  # control characters, a terminal escape, replacement char
    "𠮷野家😀👨‍👩‍👧 مرحبا 你好 Ελλάδα Привет 梅雨",  # astral plane, emoji ZWJ, mixed scripts
    "\u202e\u200b梅雨\u200d前線",  # bidi override, zero-width characters
    bytes(range(256)).decode("latin-1"),  # every byte value, decoded as text
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, standin):
    settings = load_settings(environ={}, path="/none.toml", overrides={
        "cache_dir": str(tmp_path_factory.mktemp("bad")), "llm": {"base_url": standin.base_url}})  # fmt: skip
    return LocalRag(settings, load_retrieval(settings, dense=False), open_backend(settings), EstimatedTokenCounter())


@pytest.mark.parametrize("question", GARBAGE)
def test_garbage_and_mixed_script_questions_get_an_answer_not_an_error(engine, question):
    answer = engine.answer(question).consume()
    assert answer.complete and answer.text
    assert all(1 <= n <= len(answer.sources) for n in answer.citations.used)


#: Text no encoder takes: a lone surrogate, as JSON may carry it ("\\ud800"), and a byte that
#: is not UTF-8, as a command line holds it (Python keeps it as "\\udcff").
MALFORMED = ["\ud800梅雨とは", "梅雨\udcffとは"]


def post(url: str, body: dict, **kwargs) -> httpx.Response:
    """A JSON body as a client in any language may send it: non-ASCII escaped, so a lone
    surrogate travels as ``\\ud800`` (httpx itself would refuse to encode one)."""
    return httpx.post(url, content=json.dumps(body).encode(), headers={"content-type": "application/json"}, **kwargs)


@pytest.fixture(scope="module")
def bad_input_api(standin, tmp_path_factory):
    api = ApiServer(tmp_path_factory.mktemp("bad-api"), RAG_LLM_BASE_URL=standin.base_url)
    yield api
    api.stop()


@pytest.mark.parametrize("question", GARBAGE + MALFORMED)
def test_garbage_and_malformed_questions_get_an_answer_on_every_route(bad_input_api, question):
    api = bad_input_api.url
    expected = well_formed(question)  # lone surrogates become U+FFFD, the rest stays as sent
    chat = post(f"{api}/v1/chat/completions", {"messages": [{"role": "user", "content": question}]}, timeout=60)
    assert chat.status_code == 200, chat.text
    assert chat.json()["rag"]["question"] == expected and chat.json()["choices"][0]["message"]["content"]
    search = post(f"{api}/v1/search", {"query": question})
    assert search.status_code == 200 and search.json()["hits"], search.text
    body = json.dumps({"question": question}).encode()
    headers = {"content-type": "application/json"}
    with httpx.stream("POST", f"{api}/question", content=body, headers=headers, timeout=60) as seed:
        assert seed.status_code == 200
        kinds = [line[7:] for line in seed.iter_lines() if line.startswith("event: ")]
    assert kinds[0] == "sources" and kinds[-1] == "done" and "error" not in kinds


def test_malformed_text_in_history_and_settings_is_replaced_or_refused_with_a_message(bad_input_api):
    api = bad_input_api.url
    history = [{"role": "user", "content": "梅雨\udc80の時期"}, {"role": "assistant", "content": "六月\ud800です[1]。"},
               {"role": "user", "content": "それはなぜ？"}]  # fmt: skip
    follow_up = post(f"{api}/v1/chat/completions", {"messages": history}, timeout=60)
    assert follow_up.status_code == 200 and "\ufffd" in follow_up.json()["rag"]["standalone_question"]
    refused = post(f"{api}/v1/search", {"query": "梅雨", "rag_settings": {"retrieval.mode": "bm25\ud800"}})
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["param"] == "rag_settings.retrieval.mode"
    assert "検索方式" in error["message"] and "bm25\ufffd" in error["message"]  # named, with the value as replaced


def test_markup_in_model_output_is_shown_as_text(demo_cache, isolated_env, monkeypatch, standin):
    standin.fault("markup", times=1)
    monkeypatch.setenv("RAG_CACHE_DIR", str(demo_cache))
    monkeypatch.setenv("RAG_LLM_BASE_URL", standin.base_url)
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()
    at.chat_input[0].set_value("日本で梅雨がないのは北海道とどこか。").run()
    assert not at.exception
    answer = next(m.value for m in at.markdown if "alert" in m.value)
    assert "<script>" not in answer and "\\<script\\>" in answer
    assert "\\*\\*太字\\*\\*" in answer and "\\$x^2\\$" in answer.replace("\\^", "^")
    assert ":red[" not in answer and "](javascript" not in answer


def test_a_corrupt_settings_file_leaves_the_app_working_with_defaults(demo_cache, isolated_env, monkeypatch):
    settings_file = isolated_env["RAG_SETTINGS_FILE"]
    with open(settings_file, "w", encoding="utf-8") as handle:
        handle.write("[retrieval\ntop_k = = 3")
    monkeypatch.setenv("RAG_CACHE_DIR", str(demo_cache))
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()
    assert not at.exception
    assert "問題があるため" in at.error[0].value and settings_file in at.error[0].value
    at.chat_input[0].set_value("日本で梅雨がないのは北海道とどこか。").run()
    assert any(m.value.startswith("（検索のみ）") for m in at.markdown)
    with open(settings_file, encoding="utf-8") as handle:
        assert handle.read() == "[retrieval\ntop_k = = 3"  # never overwritten silently
