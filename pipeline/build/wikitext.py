"""Plain-text paragraphs, by section, from a page's wikitext (a CirrusSearch dump's
``source_text``).

wikipedia-utils makes its passages from the rendered HTML of each page (the REST API's
mobile-html): the text of every ``<p>``, under the title of the ``<h2>`` section it is
in (``__LEAD__`` before the first), sections 脚注, 出典, 参考文献, 関連項目 and 外部リンク
left out, tables and ``<sup>`` removed, NFKC-normalised with whitespace collapsed, and
paragraphs of 10 to 1,000 characters kept. A dump holds wikitext, not HTML, so this
module renders the wikitext to that shape itself:

- templates are rendered to nothing, except a few inline ones whose text is part of the
  sentence (仮リンク, lang, 読み仮名, nowrap, 生年月日と年齢, …: :data:`INLINE_TEMPLATES`);
  MediaWiki renders every template, so text that other templates produce is missing here
  (the main difference from wikipedia-utils' paragraphs);
- ``<ref>``, ``<sup>``, math, galleries and other non-prose tags go with their content,
  tables (``{| … |}``) and comments too; other tags leave their content;
- internal links become their label, file, category and interlanguage links nothing,
  external links their label;
- a paragraph is a run of ordinary lines ended by a blank line, a heading, a list or
  indented line (``* # : ;``), preformatted text (a leading space) or a table remnant:
  those are not ``<p>`` in HTML either. ``===`` subsections stay in their ``==`` section,
  as wikipedia-utils titles them by the enclosing ``<h2>``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterator

from pipeline.retrieval.corpus import LEAD_SECTION

IGNORED_SECTIONS = frozenset({"脚注", "出典", "参考文献", "関連項目", "外部リンク"})
MIN_PARAGRAPH_CHARS, MAX_PARAGRAPH_CHARS = 10, 1000

_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_DROPPED_TAGS = re.compile(
    r"<(ref|sup|math|chem|ce|gallery|timeline|syntaxhighlight|source|score|graph|mapframe|imagemap|templatedata"
    r"|references|hiero|inputbox|categorytree|noinclude)\b[^>]*?(?:/>|>.*?</\1\s*>)",
    re.S | re.I,
)
#: Opening and closing marks of templates, tables (at a line's start) and internal links.
_MARKS = re.compile(r"\{\{|\}\}|\[\[|\]\]|(?m:^[ \t]*\{\|)|(?m:^[ \t]*\|\}(?!\}))")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+(?:\s([^\]]*))?\]")
_QUOTES = re.compile(r"'{2,}")
_TAG = re.compile(r"<[^<>\n]+>")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1\s*$")
#: Link prefixes whose link shows nothing in the text (files, categories, other languages).
_HIDDEN_LINK = re.compile(
    r"^\s*(?:(?i:file|image|media|ファイル|画像|メディア|category|カテゴリ)|[a-z]{2,3}(?:-[a-z]+)?)\s*:"
)


def _param(index: int) -> Callable[[list[str]], str]:
    return lambda args: args[index] if len(args) > index else ""


def _with_reading(args: list[str]) -> str:
    word, reading = ([*args, "", ""])[:2]
    return f"{word}（{reading}）" if reading else word


def _date(first: int) -> Callable[[list[str]], str]:
    def render(args: list[str]) -> str:
        parts = args[first : first + 3]
        return "".join(f"{value}{unit}" for value, unit in zip(parts, "年月日", strict=False) if value)

    return render


#: Inline templates that render text of the sentence, by lower-cased name: what they show.
#: Every other template renders to nothing.
INLINE_TEMPLATES: dict[str, Callable[[list[str]], str]] = {
    "仮リンク": _param(0),
    "lang": _param(1),
    "読み仮名": _with_reading,
    "読み仮名 ruby不使用": _with_reading,
    "ruby": _with_reading,
    "生年月日と年齢": _date(0),
    "死亡年月日と没年齢": _date(3),
    "和暦": lambda args: f"{args[0]}年" if args else "",
    "color": _param(1),
    "convert": lambda args: "".join(args[:2]),
    **dict.fromkeys(
        [
            "nowrap",
            "nobr",
            "small",
            "big",
            "larger",
            "smaller",
            "visible anchor",
            "vanc",
            "要出典範囲",
            "独自研究範囲",
            "要検証範囲",
            "補助漢字フォント",
            "jis2004フォント",
        ],
        _param(0),
    ),
}


def render_template(inner: str) -> str:
    """The text a template shows, from what is between its braces (nested marks already
    rendered): its positional parameters through :data:`INLINE_TEMPLATES`, else nothing."""
    name, *params = inner.split("|")
    name = re.sub(r"^(template|テンプレート):", "", name.strip().replace("_", " "), flags=re.I).lower()
    render = INLINE_TEMPLATES.get(name) or (_param(0) if name.startswith("lang-") else None)
    if render is None:
        return ""
    args: list[str] = []
    for param in params:
        key, equals, value = param.partition("=")
        if not equals:
            args.append(param.strip())
        elif key.strip().isdigit():
            position = int(key) - 1
            args.extend([""] * (position + 1 - len(args)))
            args[position] = value.strip()
    return render(args)


def _render_link(inner: str) -> str:
    if _HIDDEN_LINK.match(inner) and not inner.lstrip().startswith(":"):
        return ""
    target, _, label = inner.partition("|")
    return label if label else target.lstrip(":").split("#")[0] or target


def render_markup(text: str) -> str:
    """Templates, tables and internal links rendered in one pass over their nesting
    (innermost first); a mark left unclosed stays as text."""
    frames: list[tuple[str, list[str]]] = [("", [])]
    position = 0
    for match in _MARKS.finditer(text):
        frames[-1][1].append(text[position : match.start()])
        position = match.end()
        mark = match.group().strip()
        if mark in ("{{", "{|", "[["):
            frames.append((mark, []))
            continue
        opening = {"}}": "{{", "|}": "{|", "]]": "[["}[mark]
        if frames[-1][0] != opening:
            frames[-1][1].append(match.group())
            continue
        _, pieces = frames.pop()
        inner = "".join(pieces)
        if mark == "}}":
            frames[-1][1].append(render_template(inner))
        elif mark == "]]":
            frames[-1][1].append(_render_link(inner))
        else:  # a table: nothing, but it ends the paragraph before it
            frames[-1][1].append("\n")
    frames[-1][1].append(text[position:])
    while len(frames) > 1:
        mark, pieces = frames.pop()
        frames[-1][1].append(mark + "".join(pieces))
    return "".join(frames[0][1])


def clean_inline(text: str) -> str:
    """What is left of the markup inside lines, once templates and links are rendered."""
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _QUOTES.sub("", text)
    text = _TAG.sub("", text)
    return html.unescape(_MAGIC_WORD.sub("", text))


def normalize_paragraph(text: str) -> str:
    """wikipedia-utils' normalisation: NFKC, whitespace collapsed, printable characters."""
    text = " ".join(unicodedata.normalize("NFKC", text).split())
    if not text.isprintable():  # rare: checking whole strings first is 4x faster
        text = "".join(char for char in text if char.isprintable())
    return text.strip()


def sections(wikitext: str) -> Iterator[tuple[str, list[str]]]:
    """(section title, its paragraphs) in page order, for the sections wikipedia-utils
    keeps; paragraphs are normalised and 10 to 1,000 characters long."""
    text = _DROPPED_TAGS.sub("", _COMMENT.sub("", wikitext))
    lines = clean_inline(render_markup(text)).split("\n")
    title, paragraphs, current = LEAD_SECTION, [], []

    def end_paragraph() -> None:
        paragraph = normalize_paragraph(" ".join(current))
        current.clear()
        if MIN_PARAGRAPH_CHARS <= len(paragraph) <= MAX_PARAGRAPH_CHARS:
            paragraphs.append(paragraph)

    for line in lines:
        heading = _HEADING.match(line)
        if heading is None and line.strip() and line[0] not in "*#:;| !" and not line.startswith("----"):
            current.append(line)
            continue
        end_paragraph()
        if heading is not None and len(heading.group(1)) <= 2:
            if paragraphs and title not in IGNORED_SECTIONS:
                yield title, paragraphs
            title, paragraphs = " ".join(heading.group(2).split()), []
    end_paragraph()
    if paragraphs and title not in IGNORED_SECTIONS:
        yield title, paragraphs
