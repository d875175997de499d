"""Every page's logic through Streamlit's AppTest (the browser test is test_browser.py)."""

import ast
import time
import tomllib

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.core.gpu import gpus
from tests.conftest import ROOT, free_port
from tests.helpers import QUESTION, ask_app, markdown_texts


@pytest.fixture
def app_env(demo_cache, isolated_env, fresh_app_process, monkeypatch):
    monkeypatch.setenv("RAG_CACHE_DIR", str(demo_cache))
    monkeypatch.chdir(ROOT)
    return isolated_env


def start(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def test_chat_streams_an_answer_with_linked_citations(app_env, standin, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BASE_URL", standin.base_url)
    at = ask_app(start(), QUESTION)
    assert at.title[0].value == "日本語 Wikipedia に質問する"
    assert any("[\\[1\\]](#source-0-1)" in text and "[\\[2\\]](#source-0-2)" in text for text in markdown_texts(at))
    headings = [h.value for h in at.subheader]
    assert headings[0] == "\\[1\\] 梅雨" and at.subheader[0].proto.anchor == "source-0-1"
    assert any(":orange-background[" in text for text in markdown_texts(at))  # the supporting sentence
    captions = [c.value for c in at.caption]
    assert any("モード: デモ" in c and "最初のトークン" in c and "トークン/秒" in c for c in captions)
    assert any(QUESTION in text for text in markdown_texts(at))


def test_search_only_mode_without_an_llm(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    at = ask_app(start(), QUESTION)
    assert any(text.startswith("（検索のみ）") for text in markdown_texts(at))
    assert any("LLM が設定されていない" in i.value for i in at.info)
    assert any("モード: 検索のみ" in c.value for c in at.caption)
    assert at.subheader  # the sources are still there


def test_unreachable_llm_shows_a_banner_and_the_sources(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    at = start()
    assert any("LLM が使えない状態です" in w.value for w in at.warning)
    ask_app(at, QUESTION)
    assert any("接続できません" in w.value for w in at.warning)
    assert any(text.startswith("（検索のみ）") for text in markdown_texts(at)) and at.subheader


def test_history_survives_page_switches_and_new_conversation_clears_it(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    at = ask_app(start(), QUESTION)
    at.switch_page("pages/sources.py").run()
    assert at.title[0].value == "出典を調べる"
    at.switch_page("pages/chat.py").run()
    assert any(QUESTION in text for text in markdown_texts(at))
    next(b for b in at.button if b.label == "新しい会話").click().run()
    assert not any(QUESTION in text for text in markdown_texts(at))


def test_regenerate_asks_the_last_question_again(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    at = ask_app(start(), QUESTION)
    next(b for b in at.button if b.label == "最後の回答を再生成").click().run()
    assert not at.exception
    assert sum(QUESTION in text for text in markdown_texts(at)) == 1
    turns = at.session_state["chat"].turns
    assert len(turns) == 1 and turns[0].answer.question == QUESTION and turns[0].answer.complete


def test_bad_questions(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    at = ask_app(start(), "   ")
    assert "質問が空です" in at.warning[0].value
    at = ask_app(start(), "<script>alert(1)</script> **梅雨** " + "梅雨前線はどこか。" * 2300)
    assert all("<script>" not in text for text in markdown_texts(at))
    assert any("\\<script\\>" in text for text in markdown_texts(at))
    assert any("質問が長すぎるため" in i.value for i in at.info)


def test_sources_page_search_passage_and_comparison(app_env):
    at = start("pages/sources.py")
    at.text_input(key="search_query").set_value(QUESTION)
    next(b for b in at.button if b.label == "検索").click().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["順位", "スコア", "タイトル", "節", "行", "本文"] and len(table) == 5

    at.session_state["sources_view"] = "パッセージ"
    at.session_state["open_row"] = 1
    at.run()
    assert at.subheader[0].value == "梅雨"
    next(b for b in at.button if b.label == "次のパッセージ →").click().run()
    assert at.number_input(key="open_row").value == 2

    at.session_state["sources_view"] = "比較"
    at.run()
    at.text_input(key="compare_query").set_value(QUESTION)
    next(b for b in at.button if b.label == "比較する").click().run()
    assert not at.exception
    assert len(at.dataframe) == 3  # one ranking per mode; BM25 stands in for dense while it is prepared
    stood_in = sum("この環境ではまだ使えないため" in c.value for c in at.caption)
    assert stood_in in (0, 2) and (stood_in == 0 or any("準備中" in i.value for i in at.info))


def test_citation_button_opens_the_passage_on_the_sources_page(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    at = ask_app(start(), QUESTION)
    row = at.session_state["chat"].turns[0].answer.sources[0].row
    next(b for b in at.button if b.key == "open-0-1").click().run()
    assert not at.exception
    assert at.title[0].value == "出典を調べる"
    assert at.number_input(key="open_row").value == row


def test_the_settings_page_shows_the_engine_arguments_and_the_llm_url_without_their_secrets(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_EXTRA_ARGS", "--enforce-eager --api-key sk-s3cret-0123")
    monkeypatch.setenv("RAG_LLM_BASE_URL", "http://rag:pa55word@127.0.0.1:9/v1")
    at = start("pages/settings.py")
    shown = {t.label: t.value for t in at.text_input}
    assert shown["vLLM の追加オプション"] == "--enforce-eager --api-key ***"
    assert shown["OpenAI 互換 API の URL（/v1 で終わる）"] == "http://rag:***@127.0.0.1:9/v1"


def test_settings_are_validated_applied_per_session_and_saved(app_env, tmp_path):
    settings_file = tmp_path / "settings.toml"  # RAG_SETTINGS_FILE of isolated_env
    at = start("pages/settings.py")
    at.text_area(key="setting:prompts.qa").set_value("資料を無視して答えて")
    next(b for b in at.button if b.label == "このセッションに適用").click().run()
    assert any("{context}, {question} を含めてください" in e.value for e in at.error)
    assert "session_overrides" not in at.session_state or not at.session_state["session_overrides"]

    at.text_area(key="setting:prompts.qa").set_value("{context}\n質問: {question}")
    at.number_input(key="setting:retrieval.top_k").set_value(3)
    next(b for b in at.button if b.label == "このセッションに適用").click().run()
    assert at.session_state["session_overrides"] == {"retrieval.top_k": 3, "prompts.qa": "{context}\n質問: {question}"}
    assert not settings_file.exists()  # session values are not saved

    at.number_input(key="setting:llm.timeout_s").set_value(0.0)
    next(b for b in at.button if b.label == "保存").click().run()
    assert any("「LLM タイムアウト（秒）」(llm.timeout_s) の値 0.0 は無効です" in e.value for e in at.error)
    assert not settings_file.exists()  # nothing saved when invalid

    at.number_input(key="setting:llm.timeout_s").set_value(30.0)
    at.select_slider(key="setting:llm.gpu_memory_utilization").set_value(0.7)
    at.selectbox(key="setting:llm.prompt_format").set_value("chat-template")
    next(b for b in at.button if b.label == "保存").click().run()
    assert not at.exception
    saved = tomllib.loads(settings_file.read_text(encoding="utf-8"))
    assert saved == {"llm": {"timeout_s": 30.0, "gpu_memory_utilization": 0.7, "prompt_format": "chat-template"}}
    base_url = next(t for t in at.text_input if t.label.startswith("OpenAI 互換 API の URL"))
    assert base_url.disabled and "運用者だけ" in base_url.help  # the operator's: shown, never saved from here

    next(b for b in at.button if b.label == "このセッションの設定を既定値に戻す").click().run()
    assert at.session_state["session_overrides"] == {}
    assert at.number_input(key="setting:retrieval.top_k").value == 5


def test_without_e5_the_app_searches_with_bm25_and_says_how_to_get_more(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    at = start("pages/status.py")
    assert "bm25（auto = bm25）" in at.table[0].value.to_string() and "なし" in at.table[0].value.to_string()
    assert any("python -m pipeline.download" in i.value and "BM25 で検索" in i.value for i in at.info)


def test_status_page_reports_what_is_loaded(app_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    at = start("pages/sources.py")
    at.session_state["sources_view"] = "比較"  # compares bm25, dense and hybrid: dense is asked for
    at.run()
    at.text_input(key="compare_query").set_value(QUESTION)
    next(b for b in at.button if b.label == "比較する").click().run()
    at.switch_page("pages/status.py").run()
    deadline = time.monotonic() + 300  # a first start builds the dense index behind BM25
    while "IndexFlatIP" not in at.table[0].value.to_string() and time.monotonic() < deadline:
        time.sleep(2)
        at.run()
    values = at.table[0].value
    assert "1,145" in values.to_string() and "IndexFlatIP" in values.to_string()
    assert "none" in at.table[1].value.to_string()
    if gpus():  # a GPU host shows its cards' memory, any other host says it has none
        assert any(f"GPU 0: {gpus()[0].name}" in p.proto.text for p in at.get("progress"))
    else:
        assert any("GPU はありません" in m for m in markdown_texts(at))


@pytest.fixture(scope="module")
def rag_api(standin, tmp_path_factory):
    from tests.conftest import ApiServer

    server = ApiServer(tmp_path_factory.mktemp("ui-api"), RAG_LLM_BASE_URL=standin.base_url)
    yield server
    server.stop()


def test_the_ui_as_a_client_of_the_rag_api(app_env, rag_api, monkeypatch):
    monkeypatch.setenv("RAG_API_URL", rag_api.url)
    at = ask_app(start(), QUESTION)
    assert any("RAG API" in c.value for c in at.caption)
    assert any("[\\[1\\]](#source-0-1)" in text for text in markdown_texts(at))
    assert at.subheader[0].value == "\\[1\\] 梅雨"
    assert any("最初のトークン" in c.value for c in at.caption)  # timings came through the API

    next(b for b in at.button if b.label == "出典ページで詳しく見る").click().run()  # the source card's button
    assert not at.exception, at.exception
    assert at.title[0].value == "出典を調べる" and at.subheader[0].value == "梅雨"
    assert any("次のパッセージ" in b.label for b in at.button)  # neighbours came through the API
    row = at.session_state["chat"].turns[0].answer.sources[0].row
    assert at.number_input(key="open_row").value == row
    next(b for b in at.button if b.label == "次のパッセージ →").click().run()
    assert not at.exception and at.number_input(key="open_row").value == row + 1

    at.session_state["sources_view"] = "検索"
    at.run()
    at.text_input(key="search_query").set_value(QUESTION)
    next(b for b in at.button if b.label == "検索").click().run()
    assert not at.exception and len(at.dataframe[0].value) == 5

    at.switch_page("pages/status.py").run()
    assert not at.exception
    assert any("RAG API（API モード）" in h.value for h in at.subheader)
    assert "1,145" in at.table[0].value.to_string()


def test_every_page_enters_the_frame_before_anything_else():
    """Streamlit's legacy pages/ mode may run any script in pages/ by itself on a fresh
    server (ui/frame.py): each must enter the frame, and so the login, before it draws or
    reads anything."""
    for path in sorted((ROOT / "pages").glob("*.py")):
        statements = [
            node
            for node in ast.parse(path.read_text(encoding="utf-8")).body
            if not isinstance(node, ast.Import | ast.ImportFrom)
            and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))  # the docstring
        ]
        first = statements[0]
        assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Call), path.name
        assert isinstance(first.value.func, ast.Name) and first.value.func.id == "enter_page", path.name
