"""Search the corpus: a question in, ranked passages out."""

from __future__ import annotations

import streamlit as st

from pages.common import retrieval_service, settings
from pipeline.errors import RagError
from pipeline.markdown import escape_markdown

st.title("日本語 Wikipedia 検索")

current = settings()
service = retrieval_service(current) if current else None
if service is not None:
    for notice in service.notices:
        st.info(notice.ja)
    with st.form("search"):
        query = st.text_input("質問", placeholder="例: 梅雨がないのは北海道とどこか")
        left, right = st.columns(2)
        options = ["auto", *service.modes]
        mode = left.selectbox(
            "検索方式",
            options,
            index=options.index(current.retrieval.mode) if current.retrieval.mode in options else 0,
            format_func=lambda m: f"auto（{service.auto_mode}）" if m == "auto" else m,
        )
        top_k = right.number_input("件数", min_value=1, max_value=50, value=current.retrieval.top_k)
        submitted = st.form_submit_button("検索")
    if submitted:
        try:
            result = service.search(query, mode=mode, top_k=int(top_k))
        except RagError as exc:
            st.warning(exc.ja)
        else:
            for notice in result.notices:
                st.info(notice.ja)
            st.caption(f"{result.mode} ・ {len(result.hits)} 件 ・ {result.timings['retrieval_total']:.0f} ms")
            if not result.hits:
                st.write("該当するパッセージが見つかりませんでした。")
            for rank, hit in enumerate(result.hits, start=1):
                meta = hit.node.metadata
                heading = meta["title"] + (f" ＞ {meta['section']}" if meta["section"] else "")
                with st.container(border=True):
                    st.markdown(f"**{rank}. {escape_markdown(heading)}** （スコア {hit.score:.3f}）")
                    st.markdown(escape_markdown(hit.node.get_content()))
                    st.caption(f"行 {meta['row']} ・ {meta['url']}")
