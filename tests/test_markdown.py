import html
import re

from markdown_it import MarkdownIt

from ui.markdown import escape_markdown


def rendered(markdown: str) -> str:
    return MarkdownIt("commonmark").render(markdown)


def visible_text(markdown: str) -> str:
    """What a reader sees of rendered Markdown: tags stripped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", rendered(markdown))).strip()


def test_markup_in_passages_is_shown_literally():
    for text in [
        "<script>alert('x')</script>",
        "**太字** _斜体_ `code` [リンク](http://example.com)",
        "# 見出し\n- 箇条書き\n1. 番号",
        "数式 $x^2$ と :red[色] と :material/home:",
        "a\\b | c ~~d~~ <b>e</b> &amp;",
    ]:
        escaped = escape_markdown(text)
        assert "<script" not in rendered(escaped) and "<b>" not in rendered(escaped)
        assert visible_text(escaped).replace("\n", "") == text.replace("\n", "")


def test_japanese_text_is_untouched():
    assert escape_markdown("梅雨（つゆ）は、東アジアの気象現象。") == "梅雨（つゆ）は、東アジアの気象現象。"
