"""Sources: search the corpus directly, open a passage with its neighbours, and compare
how BM25, dense and hybrid retrieval rank the same question."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.common import retrieval_service, session_settings
from pages.render import show_notices
from pipeline.errors import RagError
from pipeline.markdown import escape_markdown

VIEWS = ["検索", "パッセージ", "比較"]

settings = session_settings()
service = retrieval_service(settings)
st.title("出典を調べる")
if service is None:
    st.stop()

view = st.segmented_control("表示", VIEWS, key="sources_view", default="検索", label_visibility="collapsed")


def ranking_table(hits) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "順位": range(1, len(hits) + 1),
            "スコア": [round(h.score or 0.0, 4) for h in hits],
            "タイトル": [h.node.metadata["title"] for h in hits],
            "節": [h.node.metadata["section"] for h in hits],
            "行": [h.node.metadata["row"] for h in hits],
            "本文": [h.node.get_content()[:120] for h in hits],
        }
    )


if view == "パッセージ":
    row = int(st.number_input("行番号", min_value=0, max_value=service.size - 1, step=1, key="open_row"))
    passage, previous_row, next_row = service.passage(row)
    st.subheader(escape_markdown(passage.title))
    st.caption(
        f"節: {escape_markdown(passage.section_label or '-')} ・ 行 {passage.row} ・ パッセージ ID {passage.id} ・ "
        f"pageid {passage.pageid if passage.pageid is not None else '不明'} ・ "
        f"revid {passage.revid if passage.revid is not None else '不明'}"
    )
    st.link_button("Wikipedia で開く", passage.url, icon="🔗")
    with st.container(border=True):
        st.markdown(escape_markdown(passage.text))
    previous, following = service.passages.neighbours(row)
    left, right = st.columns(2)
    for column, neighbour, label in ((left, previous, "← 前のパッセージ"), (right, following, "次のパッセージ →")):
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
        columns = st.columns(3)
        for column, mode in zip(columns, ["bm25", "dense", "hybrid"], strict=True):
            with column:
                st.markdown(f"**{mode}**")
                if mode not in service.modes:
                    st.caption("この環境では使えません")
                    continue
                try:
                    result = service.search(query, mode=mode, top_k=top_k, settings=settings)
                except RagError as exc:
                    st.warning(exc.ja)
                    break
                st.caption(f"{result.timings['retrieval_total']:.0f} ms")
                st.dataframe(ranking_table(result.hits)[["順位", "タイトル", "行", "スコア"]], hide_index=True)

else:
    with st.form("search"):
        query = st.text_input("質問", key="search_query")
        left, right = st.columns(2)
        options = ["auto", *service.modes]
        mode = left.selectbox(
            "検索方式",
            options,
            index=options.index(settings.retrieval.mode) if settings.retrieval.mode in options else 0,
            format_func=lambda m: f"auto（{service.auto_mode}）" if m == "auto" else m,
        )
        top_k = right.slider("件数", 1, 50, settings.retrieval.top_k)
        searched = st.form_submit_button("検索")
    if searched:
        try:
            result = service.search(query, mode=mode, top_k=top_k, settings=settings)
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
