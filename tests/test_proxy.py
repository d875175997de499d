"""The app behind a real nginx, configured as deploy/nginx-ui.conf ships, visited by two
separate Chromium contexts through the proxy and by one directly on 127.0.0.1: only the
direct local visitor is the admin, and no visitor sees another's conversation."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess

import pytest
from playwright.sync_api import expect

from tests.conftest import ROOT, StreamlitServer, free_port, launch_chromium, streamlit_answers

pytestmark = pytest.mark.browser

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
QUESTION = "日本で梅雨がないのは北海道とどこか。"
SECOND = "ラオスの首都はどこか。"


class Nginx:
    """nginx in the foreground with deploy/nginx-ui.conf, its ports pointed at this test's;
    ``bare``: without its Host and X-Forwarded-For lines, as a minimal WebSocket proxy is
    often written (nginx then sends the upstream's address as Host, and no forwarding header)."""

    def __init__(self, folder, upstream_port: int, bare: bool = False) -> None:
        self.port = free_port()
        config = (ROOT / "deploy" / "nginx-ui.conf").read_text(encoding="utf-8")
        config = config.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        config = config.replace("proxy_pass http://127.0.0.1:8501;", f"proxy_pass http://127.0.0.1:{upstream_port};")
        assert str(self.port) in config and str(upstream_port) in config
        if bare:
            forwarding = "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
            for line in ("proxy_set_header Host $host;", forwarding):
                assert line in config
                config = config.replace(line, "")
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        (folder / "nginx.conf").write_text(config, encoding="utf-8")
        self.process = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"),
             "-g", f"daemon off; pid {folder}/nginx.pid; error_log {folder}/logs/error.log;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        if not streamlit_answers(self.url, 30):
            self.process.kill()
            raise RuntimeError(f"nginx did not start: {self.process.stderr.read().decode()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def deployment(demo_cache, tmp_path_factory):
    """Streamlit on 127.0.0.1 as the README runs it, nginx in front of it."""
    assert os.path.exists(NGINX), "Debian's nginx is needed: run scripts/test.sh (it installs it)"
    app = StreamlitServer(tmp_path_factory.mktemp("proxied-app"), RAG_CACHE_DIR=str(demo_cache),
                          RAG_LLM_BACKEND="none")  # fmt: skip
    proxy = Nginx(tmp_path_factory.mktemp("nginx"), app.port)
    yield app, proxy
    proxy.stop()
    app.stop()


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def chromium(playwright):
    browser = launch_chromium(playwright)
    yield browser
    browser.close()


def stored_conversations(history) -> int:
    if not history.exists():
        return 0
    with sqlite3.connect(history) as connection:
        return connection.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]


def visitor(chromium):
    """A browser context of its own: its own cookies, storage and session."""
    return chromium.new_context(viewport={"width": 1280, "height": 1600}, locale="ja-JP").new_page()


def ask(page, question: str) -> None:
    chat_box = page.get_by_test_id("stChatInput").locator("textarea")
    chat_box.wait_for(timeout=240_000)
    chat_box.fill(question)
    chat_box.press("Enter")
    page.get_by_text("（検索のみ）").last.wait_for(timeout=120_000)


def test_proxied_visitors_are_not_admins_and_never_see_each_others_conversations(deployment, chromium):
    app, proxy = deployment
    first, second = visitor(chromium), visitor(chromium)
    first.goto(proxy.url, timeout=120_000)
    ask(first, QUESTION)
    sidebar = first.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("ログインしていないため")).to_be_visible()
    assert "?c=" not in first.url  # nothing to share: the conversation lives in this tab

    second.goto(proxy.url, timeout=120_000)
    ask(second, SECOND)
    expect(second.get_by_text(QUESTION)).to_have_count(0)  # neither in the chat nor in a history list
    expect(first.get_by_text(SECOND)).to_have_count(0)
    assert stored_conversations(app.history) == 0  # nothing of theirs went to the shared store

    second.goto(f"{proxy.url}/settings", timeout=120_000)
    second.get_by_role("tab", name="サーバー全体").click()
    expect(second.get_by_text("サーバー全体の設定は表示のみです")).to_be_visible(timeout=60_000)
    expect(second.get_by_role("spinbutton", name="LLM タイムアウト（秒）")).to_be_disabled()
    second.get_by_role("button", name="保存", exact=True).click()  # live, and refused behind it
    expect(second.get_by_text("管理者だけが行えます").first).to_be_visible(timeout=60_000)
    assert not (app.history.parent / "settings.toml").exists()


def test_a_bare_proxy_does_not_make_its_visitors_admins(demo_cache, tmp_path, playwright):
    """nginx without Host or X-Forwarded-For: to the app the connection is a loopback peer
    asking for 127.0.0.1, as a browser on the host is; the browser's Origin, the site's
    public name (mapped to 127.0.0.1 in Chromium here), tells them apart. Streamlit refuses
    such a WebSocket unless its CORS check is off, as operators often set it behind a proxy."""
    app = StreamlitServer(tmp_path / "app", RAG_CACHE_DIR=str(demo_cache), RAG_LLM_BACKEND="none",
                          STREAMLIT_SERVER_ENABLE_CORS="false")  # fmt: skip
    proxy = Nginx(tmp_path, app.port, bare=True)
    try:
        browser = launch_chromium(playwright, "--host-resolver-rules=MAP qa.example.test 127.0.0.1")
        page = browser.new_context(locale="ja-JP").new_page()
        page.goto(f"http://qa.example.test:{proxy.port}/settings", timeout=120_000)
        page.get_by_role("tab", name="サーバー全体").click()
        expect(page.get_by_text("サーバー全体の設定は表示のみです")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("spinbutton", name="LLM タイムアウト（秒）")).to_be_disabled()
        browser.close()
    finally:
        proxy.stop()
        app.stop()


def test_the_direct_local_visitor_is_still_the_admin(deployment, chromium):
    app, _ = deployment
    page = visitor(chromium)
    page.goto(f"{app.url}/settings", timeout=120_000)
    page.get_by_role("tab", name="サーバー全体").click()
    expect(page.get_by_role("spinbutton", name="LLM タイムアウト（秒）")).to_be_enabled(timeout=60_000)
    expect(page.get_by_text("サーバー全体の設定は表示のみです")).to_have_count(0)
    page.goto(app.url, timeout=120_000)
    ask(page, QUESTION)
    page.wait_for_url("**?c=*", timeout=60_000)  # the operator's conversations are kept
    assert stored_conversations(app.history) == 1
