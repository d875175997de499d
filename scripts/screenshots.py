"""The README's screenshots, made on purpose rather than as a side effect of the tests.

    python scripts/screenshots.py [--out docs/screenshots]

Starts the stand-in `vllm serve` (deterministic Japanese answers) and `streamlit run` on
the demo profile with a throwaway settings file, history and cache, then drives Debian's
chromium (as the browser tests do) through the four pages: the chat with a streamed,
cited answer; the Sources page on its first passage; the settings page's server tab; the
status page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.conftest import StandinServer, StreamlitServer, launch_chromium  # noqa: E402

QUESTION = "日本で梅雨がないのは北海道とどこか。"


def shoot(url: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 2300}, locale="ja-JP")
        page.goto(url, timeout=120_000)
        chat_box = page.get_by_test_id("stChatInput").locator("textarea")
        chat_box.wait_for(timeout=240_000)
        chat_box.fill(QUESTION)
        chat_box.press("Enter")
        page.get_by_role("link", name="[1]").first.wait_for(timeout=120_000)
        page.wait_for_timeout(800)  # the chat keeps itself scrolled to the bottom
        page.screenshot(path=out / "chat.png")
        page.set_viewport_size({"width": 1280, "height": 1800})
        page.get_by_role("button", name="出典ページで詳しく見る").first.click()
        expect(page.get_by_role("heading", name="出典を調べる")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=out / "sources.png")
        page.goto(f"{url}/settings", timeout=120_000)
        page.get_by_role("tab", name="サーバー全体").click()
        expect(page.get_by_text("GPU メモリ使用率").first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=out / "settings.png")
        page.goto(f"{url}/status", timeout=120_000)
        expect(page.get_by_role("heading", name="状態")).to_be_visible(timeout=120_000)
        page.wait_for_timeout(500)
        page.screenshot(path=out / "status.png")
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/screenshots.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    llm = StandinServer()
    with tempfile.TemporaryDirectory() as scratch:
        app = StreamlitServer(Path(scratch), RAG_CACHE_DIR=str(Path(scratch) / "cache"), RAG_LLM_BASE_URL=llm.base_url)
        try:
            shoot(app.url, args.out)
        finally:
            app.stop()
            llm.stop()
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
