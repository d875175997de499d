"""End to end in a real browser: `streamlit run` on 127.0.0.1, headless Debian Chromium
driven by Playwright, the stand-in LLM behind it. Saves the README's screenshots."""

import os
import subprocess
import sys
import time

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from pipeline.core.gpu import gpus
from tests.conftest import CHROMIUM, HERMETIC_ENV, ROOT, free_port, launch_chromium

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "docs" / "screenshots"
QUESTION = "日本で梅雨がないのは北海道とどこか。"


def start_app(tmp_path_factory, **env: str):
    """`streamlit run streamlit_app.py` on a free loopback port, with these RAG_* values."""
    port = free_port()
    folder = tmp_path_factory.mktemp("browser")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAG_")},
        "RAG_SETTINGS_FILE": str(folder / "settings.toml"),
        "RAG_DB_URL": f"sqlite:///{folder / 'history.sqlite3'}",
        **HERMETIC_ENV,
        **env,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    return server, url


@pytest.fixture(scope="module")
def app_url(demo_cache, standin, tmp_path_factory):
    server, url = start_app(tmp_path_factory, RAG_CACHE_DIR=str(demo_cache), RAG_LLM_BASE_URL=standin.base_url)
    yield url
    server.terminate()
    server.wait(20)


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
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ask(page, QUESTION)

    citation = page.get_by_role("link", name="[1]").first
    citation.wait_for(timeout=120_000)
    assert citation.get_attribute("href").endswith("#source-0-1")
    expect(page.get_by_text("資料によると").first).to_be_visible()
    expect(page.locator("#source-0-1")).to_be_attached()
    # The server's first run said that search was getting ready, and says it no more.
    assert page.evaluate("window.startingShown")
    expect(page.get_by_text("検索の準備をしています")).to_have_count(0)
    # Tall enough for the question, the answer and its source cards in one picture
    # (the chat keeps itself scrolled to the bottom).
    page.set_viewport_size({"width": 1280, "height": 2300})
    page.wait_for_timeout(800)
    page.screenshot(path=SCREENSHOTS / "chat.png")
    page.set_viewport_size({"width": 1280, "height": 1800})

    page.get_by_role("button", name="出典ページで詳しく見る").first.click()
    expect(page.get_by_role("heading", name="出典を調べる")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("heading", name="梅雨")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("link", name="Wikipedia で開く")).to_have_attribute(
        "href", "https://ja.wikipedia.org/wiki/%E6%A2%85%E9%9B%A8"
    )
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "sources.png")


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
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "settings.png")

    page.goto(f"{app_url}/status", timeout=120_000)
    expect(page.get_by_role("heading", name="状態")).to_be_visible(timeout=120_000)
    expect(page.get_by_text("1,145").first).to_be_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "status.png")


@pytest.fixture(scope="module")
def api_mode_page(browser, standin, tmp_path_factory):
    """The UI as a client of a RAG API process (`--api-url`), in the browser."""
    from tests.conftest import ApiServer

    api = ApiServer(tmp_path_factory.mktemp("browser-api"), RAG_LLM_BASE_URL=standin.base_url)
    server, url = start_app(tmp_path_factory, RAG_CACHE_DIR=str(tmp_path_factory.mktemp("ui-cache")),
                            RAG_API_URL=api.url)  # fmt: skip
    page = browser.new_page(viewport={"width": 1280, "height": 1800}, locale="ja-JP")
    page.goto(url, timeout=120_000)
    yield page
    page.close()
    server.terminate()
    server.wait(20)
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
