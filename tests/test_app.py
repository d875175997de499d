"""The Streamlit app's logic through AppTest (the browser test lives in test_browser.py)."""

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


@pytest.fixture
def app(demo_cache, isolated_env, monkeypatch):
    monkeypatch.setenv("RAG_CACHE_DIR", str(demo_cache))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def submit(at: AppTest, question: str) -> AppTest:
    at.text_input[0].set_value(question)
    at.button[0].click()
    return at.run()


def test_search_page_finds_passages_for_a_japanese_question(app):
    assert app.title[0].value == "日本語 Wikipedia 検索"
    submit(app, "日本で梅雨がないのは北海道とどこか。")
    assert not app.exception
    texts = [m.value for m in app.markdown]
    assert any("梅雨" in t for t in texts)
    assert any("小笠原諸島" in t for t in texts)
    assert "件" in app.caption[0].value


def test_empty_question_gets_a_gentle_message(app):
    submit(app, "   ")
    assert [w.value for w in app.warning] == ["質問が空です。検索したい内容を入力してください。"]


def test_markup_in_the_question_is_not_rendered(app):
    submit(app, "<script>alert(1)</script> **梅雨**")
    assert not app.exception
    for markdown in app.markdown:
        assert "<script>" not in markdown.value


def test_broken_settings_are_explained_in_japanese(demo_cache, isolated_env, monkeypatch):
    monkeypatch.setenv("RAG_RETRIEVAL_TOP_K", "0")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert "retrieval.top_k" in at.error[0].value and "1 以上 100 以下の整数" in at.error[0].value
