"""Sources: search the corpus directly, open a passage with its neighbours, and compare
how BM25, dense and hybrid retrieval rank the same question."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pipeline.core.errors import RagError
from pipeline.core.schema import Source
from pipeline.settings.model import RETRIEVER_NAMES
from pipeline.settings.sources import with_retrieval
from ui.frame import enter_page
from ui.markdown import escape_markdown
from ui.resources import rag_service, server_settings, service_status, session_settings
from ui.widgets import show_notices

enter_page()

VIEWS = ["検索", "パッセージ", "比較"]

server = server_settings()
settings = session_settings(server)
service = rag_service(server)
st.title("出典を調べる")
if service is None:
    st.stop()
retrieval = service_status(service).retrieval
if retrieval is None:
    st.error("検索の準備ができていません。状態ページを確認してください。")
    st.stop()

view = st.segmented_control("表示", VIEWS, key="sources_view", default="検索", label_visibility="collapsed")


def ranking_table(hits: list[Source]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "順位": [h.number for h in hits],
            "スコア": [round(h.score, 4) for h in hits],
            "タイトル": [h.title for h in hits],
            "節": [h.section for h in hits],
            "行": [h.row for h in hits],
            "本文": [h.text[:120] for h in hits],
        }
    )


if view == "パッセージ":
    row = int(st.number_input("行番号", min_value=0, max_value=retrieval.passages - 1, step=1, key="open_row"))
    try:
        context = service.passage(row)
    except RagError as exc:
        st.warning(exc.ja)
        st.stop()
    passage = context.passage
    st.subheader(escape_markdown(passage.title))
    st.caption(
        f"節: {escape_markdown(passage.section or '-')} ・ 行 {passage.row} ・ パッセージ ID {passage.id} ・ "
        f"pageid {passage.pageid if passage.pageid is not None else '不明'} ・ "
        f"revid {passage.revid if passage.revid is not None else '不明'}"
    )
    st.link_button("Wikipedia で開く", passage.url, icon="🔗")
    if passage.revision_url:
        st.link_button("コーパスの版を開く", passage.revision_url, icon="🕰️")
    with st.container(border=True):
        st.markdown(escape_markdown(passage.text))
    left, right = st.columns(2)
    neighbours = ((left, context.previous, "← 前のパッセージ"), (right, context.next, "次のパッセージ →"))
    for column, neighbour, label in neighbours:
        with column:
            if neighbour is None:
                st.caption(f"{label}: 同じ記事にはありません")
            else:
                st.button(
                    label, key=f"go-{label}", on_click=st.session_state.__setitem__, args=("open_row", neighbour.row)
                )
                st.caption(escape_markdown(neighbour.text[:80]) + "…")

elif view == "比較":
    with st.form("compare"):
        query = st.text_input("質問", key="compare_query")
        top_k = st.slider("件数", 1, 20, 10)
        compared = st.form_submit_button("比較する")
    if compared:
        for column, mode in zip(st.columns(len(RETRIEVER_NAMES)), RETRIEVER_NAMES, strict=True):
            with column:
                st.markdown(f"**{mode}**")
                try:  # a mode that cannot run yet is stood in for (and, if asked for, prepared)
                    result = service.search(query, with_retrieval(settings, mode=mode, top_k=top_k))
                except RagError as exc:
                    st.warning(exc.ja)
                    break
                if result.mode != mode:
                    st.caption(f"この環境ではまだ使えないため、{result.mode} の結果です。")
                    show_notices(result.notices)
                st.caption(f"{result.timings['retrieval_total']:.0f} ms")
                st.dataframe(ranking_table(result.hits)[["順位", "タイトル", "行", "スコア"]], hide_index=True)

else:
    with st.form("search"):
        query = st.text_input("質問", key="search_query")
        left, right = st.columns(2)
        options = ["auto", *retrieval.modes]
        mode = left.selectbox(
            "検索方式",
            options,
            index=options.index(settings.retrieval.mode) if settings.retrieval.mode in options else 0,
            format_func=lambda m: f"auto（{retrieval.auto_mode}）" if m == "auto" else m,
        )
        top_k = right.slider("件数", 1, 50, settings.retrieval.top_k)
        searched = st.form_submit_button("検索")
    if searched:
        try:
            result = service.search(query, with_retrieval(settings, mode=mode, top_k=top_k))
        except RagError as exc:
            st.warning(exc.ja)
        else:
            show_notices(result.notices)
            st.caption(f"{result.mode} ・ {len(result.hits)} 件 ・ {result.timings['retrieval_total']:.0f} ms")
            if result.hits:
                st.dataframe(ranking_table(result.hits), hide_index=True, width="stretch")
                st.caption("行番号を「パッセージ」で開くと、全文と前後のパッセージを読めます。")
            else:
                st.write("該当するパッセージが見つかりませんでした。")
