"""Small pieces of UI that several pages draw: source cards, answer captions, notices.

Everything that came from the corpus, the model or the user goes through
``escape_markdown`` (or a widget that shows plain text); no ``unsafe_allow_html``.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from pipeline.core.schema import Answer, Notice, Source
from ui.labels import MODE_LABELS, TIMING_LABELS, WARNING_CODES
from ui.markdown import escape_markdown, highlight, link_citations

SOURCES_PAGE = "pages/sources.py"


def timing_line(timings: dict[str, float]) -> str:
    return " ・ ".join(label + " " + fmt.format(timings[key]) for key, label, fmt in TIMING_LABELS if key in timings)


def answer_caption(answer: Answer) -> str:
    parts = [f"モード: {MODE_LABELS.get(answer.mode, answer.mode)}", f"検索方式: {answer.retriever}"]
    line = timing_line(answer.timings)
    return " ・ ".join(parts + ([line] if line else []))


def show_notices(notices: Sequence[Notice]) -> None:
    for notice in notices:
        warning = notice.code in WARNING_CODES
        (st.warning if warning else st.info)(notice.ja, icon="⚠️" if warning else "ℹ️")


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
        left, middle, right = st.columns(3)
        left.link_button("Wikipedia で開く", source.url, icon="🔗")
        if source.revision_url:  # the article as the corpus's dump had it
            middle.link_button("コーパスの版を開く", source.revision_url, icon="🕰️")
        if right.button("出典ページで詳しく見る", key=key, icon="🔎"):
            open_in_sources(source.row)


def show_answer(turn: int, answer: Answer) -> None:
    """A finished (or stopped) answer: the question searched, the text with linked
    citations, notices, timings, the source cards and the exact prompt."""
    if answer.rewritten:
        st.caption(f"検索に使った質問: {escape_markdown(answer.standalone_question)}")
    st.markdown(link_citations(escape_markdown(answer.text), f"source-{turn}", len(answer.sources)))
    show_notices(answer.notices)
    if not answer.complete:
        st.warning("この回答は完了していません（生成の途中で止まったか、別のタブでまだ生成中です）。", icon="⏸️")
    st.caption(answer_caption(answer))
    for source in answer.sources:
        source_card(f"source-{turn}", source, key=f"open-{turn}-{source.number}")
    with st.expander("回答のテキスト（コピー用）とプロンプト"):
        st.code(answer.text, language=None, wrap_lines=True)
        if answer.prompt and answer.prompt_format == "chat-template":
            st.caption("LLM に送ったメッセージ（そのまま。チャットテンプレートは vLLM が適用します）")
            st.code(answer.prompt, language="json", wrap_lines=True)
        elif answer.prompt:
            st.caption("LLM に送ったプロンプト（そのまま）")
            st.code(answer.prompt, language=None, wrap_lines=True)
