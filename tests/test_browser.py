"""End to end in a real browser: `streamlit run` on 127.0.0.1, headless Debian Chromium
driven by Playwright, the stand-in LLM behind it. (The README's screenshots are made by
scripts/screenshots.py, not by the tests.)"""

import os
import signal
import subprocess
import sys

import pytest
from playwright.sync_api import expect, sync_playwright

from pipeline.core.gpu import gpus
from pipeline.history.store import ConversationStore
from tests.conftest import (
    CHROMIUM,
    HERMETIC_ENV,
    ROOT,
    StandinServer,
    StreamlitServer,
    dump_page,
    engine_marker,
    launch_chromium,
    processes_with,
    wait_for,
    write_dump,
)

pytestmark = pytest.mark.browser

QUESTION = "日本で梅雨がないのは北海道とどこか。"


@pytest.fixture(scope="module")
def app_url(demo_cache, standin, tmp_path_factory):
    server = StreamlitServer(tmp_path_factory.mktemp("browser"), RAG_CACHE_DIR=str(demo_cache),
                             RAG_LLM_BASE_URL=standin.base_url)  # fmt: skip
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(CHROMIUM), "Debian's chromium is needed: run scripts/test.sh (it installs it)"
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


#: Records whether the page ever said that search is getting ready (it may be brief).
WATCH_STARTING = """
window.startingShown = false;
new MutationObserver(() => {
  window.startingShown ||= (document.body?.textContent ?? "").includes("検索の準備をしています");
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture(scope="module")
def page(browser, app_url):
    """The first page of a freshly started server."""
    page = browser.new_page(viewport={"width": 1280, "height": 1800}, locale="ja-JP")
    page.add_init_script(WATCH_STARTING)
    page.goto(app_url, timeout=120_000)
    yield page
    page.close()


def ask(page, question: str) -> None:
    chat_box = page.get_by_test_id("stChatInput").locator("textarea")
    chat_box.wait_for(timeout=240_000)
    chat_box.fill(question)
    chat_box.press("Enter")


def test_ask_follow_a_citation_and_inspect_the_source(page):
    ask(page, QUESTION)

    citation = page.get_by_role("link", name="[1]").first
    citation.wait_for(timeout=120_000)
    assert citation.get_attribute("href").endswith("#source-0-1")
    expect(page.get_by_text("資料によると").first).to_be_visible()
    expect(page.locator("#source-0-1")).to_be_attached()
    # The server's first run said that search was getting ready, and says it no more.
    assert page.evaluate("window.startingShown")
    expect(page.get_by_text("検索の準備をしています")).to_have_count(0)

    page.get_by_role("button", name="出典ページで詳しく見る").first.click()
    expect(page.get_by_role("heading", name="出典を調べる")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("heading", name="梅雨")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("link", name="Wikipedia で開く")).to_have_attribute(
        "href", "https://ja.wikipedia.org/wiki/%E6%A2%85%E9%9B%A8"
    )


def test_a_reload_brings_the_conversation_back_with_its_citations(page, app_url):
    page.goto(app_url, timeout=120_000)
    ask(page, "ラオスの首都はどこか。")
    page.get_by_role("link", name="[1]").first.wait_for(timeout=120_000)
    page.wait_for_url("**?c=*", timeout=60_000)
    conversation_url = page.url

    page.reload(timeout=120_000)  # a new session: only the database remembers
    history = page.get_by_test_id("stSidebar")
    expect(history.get_by_role("button", name="ラオスの首都はどこか。")).to_be_visible(timeout=120_000)
    expect(page.get_by_role("link", name="[1]").first).to_be_visible(timeout=60_000)
    expect(page.locator("#source-0-1")).to_be_attached()

    page.goto(app_url, timeout=120_000)  # a fresh start, then open it from the history list
    history.get_by_role("button", name="ラオスの首都はどこか。").click(timeout=120_000)
    page.wait_for_url(conversation_url, timeout=60_000)
    expect(page.get_by_role("link", name="[1]").first).to_be_visible(timeout=60_000)
    expect(page.get_by_role("button", name="出典ページで詳しく見る").first).to_be_visible()


def test_settings_and_status_pages_render(page, app_url):
    page.goto(f"{app_url}/settings", timeout=120_000)
    expect(page.get_by_role("heading", name="設定")).to_be_visible(timeout=120_000)
    expect(page.get_by_text("検索件数").first).to_be_visible()
    page.get_by_role("tab", name="サーバー全体").click()
    expect(page.get_by_text("GPU メモリ使用率").first).to_be_visible()
    if not gpus():
        expect(page.get_by_text("GPU がありません").first).to_be_visible()

    page.goto(f"{app_url}/status", timeout=120_000)
    expect(page.get_by_role("heading", name="状態")).to_be_visible(timeout=120_000)
    expect(page.get_by_text("1,145").first).to_be_visible()


@pytest.fixture(scope="module")
def api_mode_page(browser, standin, tmp_path_factory):
    """The UI as a client of a RAG API process (`--api-url`), in the browser."""
    from tests.conftest import ApiServer

    api = ApiServer(tmp_path_factory.mktemp("browser-api"), RAG_LLM_BASE_URL=standin.base_url)
    server = StreamlitServer(tmp_path_factory.mktemp("browser-ui"), RAG_API_URL=api.url,
                             RAG_CACHE_DIR=str(tmp_path_factory.mktemp("ui-cache")))  # fmt: skip
    page = browser.new_page(viewport={"width": 1280, "height": 1800}, locale="ja-JP")
    page.goto(server.url, timeout=120_000)
    yield page
    page.close()
    server.stop()
    api.stop()


def test_api_mode_source_cards_sources_page_and_status(api_mode_page):
    page = api_mode_page
    ask(page, QUESTION)
    page.get_by_role("link", name="[1]").first.wait_for(timeout=120_000)
    expect(page.get_by_text("RAG API").first).to_be_visible()
    cards = page.get_by_role("button", name="出典ページで詳しく見る")
    expect(cards.first).to_be_visible()
    for index in range(cards.count()):  # every source card opens its passage
        page.get_by_role("button", name="出典ページで詳しく見る").nth(index).click()
        expect(page.get_by_role("heading", name="出典を調べる")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("行番号").first).to_be_visible()
        expect(page.get_by_role("link", name="Wikipedia で開く")).to_be_visible()
        expect(page.get_by_text("前のパッセージ").first).to_be_visible()
        page.go_back()
        page.get_by_role("link", name="[1]").first.wait_for(timeout=60_000)
    origin = "/".join(page.url.split("/")[:3])
    page.goto(f"{origin}/status", timeout=120_000)
    expect(page.get_by_role("heading", name="RAG API（API モード）")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("1,145").first).to_be_visible()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_streamlit_stopped_by_a_signal_leaves_no_engine(browser, demo_cache, tmp_path, stop):
    command, marker = engine_marker()
    server = StreamlitServer(tmp_path, RAG_CACHE_DIR=str(demo_cache), RAG_LLM_BACKEND="local",
                             RAG_LLM_SERVE_COMMAND=command)  # fmt: skip
    try:
        page = browser.new_page()
        page.goto(server.url, timeout=120_000)  # the first page run starts the engine
        expect(page.get_by_text("回答: local").first).to_be_visible(timeout=120_000)
        wait_for(lambda: processes_with(marker), 60)
        page.close()
        server.process.send_signal(stop)  # Ctrl-C, or a service manager's stop
        server.process.wait(60)
        wait_for(lambda: not processes_with(marker), 30)
    finally:
        server.stop()


def test_an_answer_cut_short_by_a_new_question_is_saved_as_far_as_it_was_shown(browser, demo_cache, tmp_path):
    slow = StandinServer("--token-delay", "0.25")
    server = StreamlitServer(tmp_path, RAG_CACHE_DIR=str(demo_cache), RAG_LLM_BASE_URL=slow.base_url)
    page = browser.new_page(viewport={"width": 1280, "height": 1800}, locale="ja-JP")
    try:
        page.goto(server.url, timeout=120_000)
        ask(page, QUESTION)
        answer = page.get_by_text("資料によると").first
        answer.wait_for(timeout=120_000)
        page.wait_for_timeout(1600)  # more than a throttled save's second into the stream
        shown = answer.inner_text()
        ask(page, "ラオスの首都はどこか。")  # a rerun in the middle of the answer
        page.get_by_text("ラオスの首都はどこか。").last.wait_for(timeout=60_000)
        conversation = page.url.split("?c=")[1] if "?c=" in page.url else None
        store = ConversationStore.open(f"sqlite:///{server.history}")

        def first_answer():
            [summary] = store.conversations("local")
            return summary, store.conversation("local", summary.id).turns[0].answer

        # The interrupted run writes it on its way out, which may end just after the next
        # run has drawn the new question: wait for that write (at most 15 s), never sleep.
        wait_for(lambda: first_answer()[1].text.startswith(shown), 15)
        summary, first = first_answer()
        store.close()
        assert conversation == summary.id and not first.complete
        assert first.text.startswith(shown) and len(first.text) >= len(shown) > len("資料によると")
    finally:
        page.close()
        server.stop()
        slow.stop()


def test_a_built_corpus_answers_with_its_dump_date_on_the_status_page(browser, tmp_path):
    """A dump built with `python -m pipeline.build`, served by the custom profile."""
    dump = tmp_path / "jawiki-20251201-cirrussearch-content.json.gz"
    write_dump(dump, [
        dump_page(5, "アンパサンド", "'''アンパサンド'''（&）は、並立助詞「…と…」を意味する記号である。"
             "ラテン語の単語を起源とする。\n== 歴史 ==\nその使用は1世紀に遡るローマの筆記体に見られる。"),
        dump_page(10, "梅雨", "'''梅雨'''は、5月から7月にかけて来る曇りや雨の多い期間のことである。"),
    ])  # fmt: skip
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAG_")}, **HERMETIC_ENV,
           "RAG_CACHE_DIR": str(tmp_path / "cache"), "RAG_SETTINGS_FILE": str(tmp_path / "none.toml")}  # fmt: skip
    built = subprocess.run(
        [sys.executable, "-m", "pipeline.build", "--dump", str(dump), "--out", str(tmp_path / "out"),
         "--stages", "passages,bm25,install", "--workers", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    server = StreamlitServer(tmp_path / "app", RAG_CACHE_DIR=str(tmp_path / "cache"), RAG_PROFILE="custom",
                             RAG_CORPUS_BUILD=str(tmp_path / "out"), RAG_LLM_BACKEND="none")  # fmt: skip
    view = browser.new_page(viewport={"width": 1280, "height": 1800}, locale="ja-JP")
    try:
        view.goto(server.url, timeout=120_000)
        expect(view.get_by_text("ビルドしたコーパス（2025-12-01 のダンプ）").first).to_be_visible(timeout=120_000)
        ask(view, "アンパサンドの起源は何語か。")
        expect(view.get_by_text("（検索のみ）").first).to_be_visible(timeout=120_000)
        expect(view.get_by_role("heading", name="アンパサンド").first).to_be_visible()
        revision = view.get_by_role("link", name="コーパスの版を開く").first
        expect(revision).to_have_attribute("href", "https://ja.wikipedia.org/w/index.php?oldid=507")
        view.goto(f"{server.url}/status", timeout=120_000)
        expect(view.get_by_text("ダンプの日付")).to_be_visible(timeout=120_000)
        expect(view.get_by_text("2025-12-01").first).to_be_visible()
        expect(view.get_by_text("3 パッセージ（2 ページから）").first).to_be_visible()
    finally:
        view.close()
        server.stop()


AUTH_SECRETS = """[auth]
redirect_uri = "http://127.0.0.1:9/oauth2callback"
cookie_secret = "a test cookie secret, not a real one"
client_id = "test-client"
client_secret = "test-secret"
server_metadata_url = "http://127.0.0.1:9/.well-known/openid-configuration"
"""


@pytest.mark.parametrize("login", [False, True], ids=["no login", "login configured"])
def test_a_fresh_servers_first_request_for_a_page_runs_it_inside_the_frame(browser, demo_cache, tmp_path, login):
    """With pages/ beside the entry script, Streamlit serves a page's URL by running that
    script alone until some session calls st.navigation: the first visitor of a freshly
    started server who opened /settings skipped the login and saw file names as pages."""
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(AUTH_SECRETS if login else "", encoding="utf-8")
    server = StreamlitServer(tmp_path, streamlit_args=["--secrets.files", str(secrets)],
                             RAG_CACHE_DIR=str(demo_cache), RAG_LLM_BACKEND="none")  # fmt: skip
    try:
        page = browser.new_page(locale="ja-JP")
        page.goto(f"{server.url}/settings", timeout=120_000)
        if login:
            expect(page.get_by_text("このアプリを使うにはログインしてください。")).to_be_visible(timeout=60_000)
            expect(page.get_by_role("button", name="ログイン")).to_be_visible()
            assert page.get_by_role("heading", name="設定").count() == 0
            assert page.get_by_test_id("stSidebarNav").count() == 0
        else:
            expect(page.get_by_role("heading", name="設定")).to_be_visible(timeout=60_000)
            navigation = page.get_by_test_id("stSidebarNav")
            for title in ["質問する", "出典を調べる", "設定", "状態"]:
                expect(navigation.get_by_text(title)).to_be_visible()
            assert "streamlit app" not in navigation.inner_text()
        page.close()
    finally:
        server.stop()
