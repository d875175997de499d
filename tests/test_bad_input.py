"""Inputs nobody should send, and model output nobody should trust (docs/reliability.md)."""

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from pipeline.core.settings_files import load_settings
from pipeline.generation.llm import open_backend
from pipeline.generation.token_count import EstimatedTokenCounter
from pipeline.retrieval.loading import load_retrieval
from pipeline.serving.local import LocalRag
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


def test_garbage_questions_through_the_api(standin, tmp_path):
    api = ApiServer(tmp_path, RAG_LLM_BASE_URL=standin.base_url)
    try:
        for question in GARBAGE:
            response = httpx.post(f"{api.url}/v1/chat/completions", timeout=60,
                                  json={"messages": [{"role": "user", "content": question}]})  # fmt: skip
            assert response.status_code in (200, 422), response.text
            search = httpx.post(f"{api.url}/v1/search", json={"query": question})
            assert search.status_code in (200, 422)
    finally:
        api.stop()


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
