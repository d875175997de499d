"""Answer and passage text as Streamlit Markdown: escaped (see
:mod:`pipeline.text.markdown`; raw HTML is never enabled, no ``unsafe_allow_html``), with
citations linked and the supporting sentence highlighted.
"""

from __future__ import annotations

import re

from pipeline.text.citations import numbers_in
from pipeline.text.markdown import escape_markdown

__all__ = ["escape_markdown", "highlight", "link_citations"]


_ESCAPED_CITATION = re.compile(r"(?:\\\[|［)\s*([0-9０-９]{1,3}(?:\s*(?:\\,|，|、)\s*[0-9０-９]{1,3})*)\s*(?:\\\]|］)")


def link_citations(escaped: str, anchor: str, source_count: int) -> str:
    """Turn the [n] markers of escaped answer text into links to ``#<anchor>-<n>``;
    a number with no source keeps its text and gets a warning sign."""

    def link(match: re.Match) -> str:
        parts = []
        for number in numbers_in(match.group(1).replace("\\,", ",")):
            if 1 <= number <= source_count:
                parts.append(f"[\\[{number}\\]](#{anchor}-{number})")
            else:
                parts.append(f"\\[{number}\\]⚠")
        return "".join(parts)

    return _ESCAPED_CITATION.sub(link, escaped)


def highlight(text: str, span: tuple[int, int] | None) -> str:
    """Escaped ``text`` with the ``span`` on a coloured background (Streamlit's directive;
    bold markers would not work next to Japanese punctuation)."""
    if span is None:
        return escape_markdown(text)
    start, end = span
    marked = escape_markdown(text[start:end]).strip()
    return f"{escape_markdown(text[:start])}:orange-background[{marked}]{escape_markdown(text[end:])}"
