"""Small pieces of UI that several pages draw: source cards, timing lines, notices.

Everything that came from the corpus, the model or the user goes through
``escape_markdown`` (or a widget that shows plain text); no ``unsafe_allow_html``.
"""

from __future__ import annotations

import streamlit as st

from pages.common import MODE_LABELS
from pipeline.engine import Answer, Source
from pipeline.errors import Notice
from pipeline.markdown import escape_markdown, highlight

SOURCES_PAGE = "pages/sources.py"
#: Notices that mean something went wrong (a warning), as opposed to information.
WARNING_CODES = {
    "llm_unreachable", "llm_timeout", "llm_error", "llm_interrupted", "llm_malformed", "invalid_citation",
    "prompt_too_long", "llm_unavailable",
}  # fmt: skip

TIMING_LABELS = (
    ("embed", "埋め込み", "{:.0f} ms"),
    ("search", "検索", "{:.0f} ms"),
    ("fetch", "取得", "{:.1f} ms"),
    ("ttft", "最初のトークン", "{:.0f} ms"),
    ("tokens_per_s", "生成", "{:.1f} トークン/秒"),
)


def timing_line(timings: dict[str, float]) -> str:
    return " ・ ".join(label + " " + fmt.format(timings[key]) for key, label, fmt in TIMING_LABELS if key in timings)


def answer_caption(answer: Answer) -> str:
    parts = [f"モード: {MODE_LABELS.get(answer.mode, answer.mode)}", f"検索方式: {answer.retriever}"]
    line = timing_line(answer.timings)
    return " ・ ".join(parts + ([line] if line else []))


def show_notices(notices: list[Notice]) -> None:
    for notice in notices:
        (st.warning if notice.code in WARNING_CODES else st.info)(
            notice.ja, icon="⚠️" if notice.code in WARNING_CODES else "ℹ️"
        )


def open_in_sources(row: int) -> None:
    """Show a passage on the Sources page."""
    st.session_state["open_row"] = row
    st.session_state["sources_view"] = "パッセージ"
    st.switch_page(SOURCES_PAGE)


def source_card(anchor: str, source: Source, key: str) -> None:
    """A numbered source: heading (link target of [n]), where it is, its text with the
    supporting sentence highlighted, and links to Wikipedia and to the Sources page."""
    with st.container(border=True):
        st.subheader(f"\\[{source.number}\\] {escape_markdown(source.title)}", anchor=f"{anchor}-{source.number}")
        where = [escape_markdown(source.section)] if source.section else []
        st.caption(" ・ ".join([*where, f"スコア {source.score:.3f}", f"行 {source.row}"]))
        st.markdown(highlight(source.text, source.highlight))
        left, right = st.columns(2)
        left.link_button("Wikipedia で開く", source.url, icon="🔗")
        if right.button("出典ページで詳しく見る", key=key, icon="🔎"):
            open_in_sources(source.row)
