"""Chat: ask in Japanese, read the streamed answer, follow each [n] to its passage.

The title and the chat box come first, before the library is imported and the corpus
loaded: on a first start the page is usable at once, and a question typed meanwhile is
answered as soon as search is ready."""

from __future__ import annotations

import streamlit as st

st.title("日本語 Wikipedia に質問する")
question = st.chat_input("質問を入力してください") or st.session_state.pop("pending_question", None)

from pipeline.core.errors import RagError  # noqa: E402 - after the chat box, see the docstring
from pipeline.core.schema import Answer, Turn  # noqa: E402
from ui.labels import MODE_LABELS  # noqa: E402
from ui.markdown import escape_markdown, link_citations  # noqa: E402
from ui.resources import rag_service, service_status, session_settings  # noqa: E402
from ui.widgets import answer_caption, show_notices, source_card  # noqa: E402

EXAMPLES = [
    "日本で梅雨がないのは北海道とどこか。",
    "グスタフ・マーラーが作曲した交響曲はいくつあるか。",
    "ラオスの首都はどこか。",
]

settings = session_settings()
service = rag_service(settings)
chat: list[Answer] = st.session_state.setdefault("chat", [])

if service is None:
    st.stop()

status = service_status(service)
llm = status.llm
if llm is None or llm.backend == "none":
    source, healthy, health_ja = "なし", True, "検索のみ"
else:
    source, healthy, health_ja = llm.backend, llm.reachable, llm.detail_ja
if status.api_url:
    source = f"RAG API {status.api_url}（LLM: {source}）"
corpus = "全データ（jawiki）" if settings.profile == "jawiki" else "デモ（JSQuAD 1,145 段落）"
passages = status.retrieval.passages if status.retrieval else 0
st.caption(f"コーパス: {corpus} ・ {passages:,} パッセージ ・ 回答: {source}（{health_ja}）")
if not healthy:
    st.warning(f"LLM が使えない状態です（{health_ja}）。検索結果のみでお答えします。", icon="⚠️")
for notice in status.notices:
    if notice.code == "dense_loading":
        st.caption(f"⏳ {notice.ja}")

for turn, answer in enumerate(chat):
    with st.chat_message("user"):
        st.markdown(escape_markdown(answer.question))
    with st.chat_message("assistant"):
        if answer.rewritten:
            st.caption(f"検索に使った質問: {escape_markdown(answer.standalone_question)}")
        st.markdown(link_citations(escape_markdown(answer.text), f"source-{turn}", len(answer.sources)))
        show_notices(answer.notices)
        st.caption(answer_caption(answer))
        for source in answer.sources:
            source_card(f"source-{turn}", source, key=f"open-{turn}-{source.number}")
        with st.expander("回答のテキスト（コピー用）とプロンプト"):
            st.code(answer.text, language=None, wrap_lines=True)
            if answer.prompt:
                st.caption("LLM に送ったプロンプト（そのまま）")
                st.code(answer.prompt, language=None, wrap_lines=True)

left, right, _ = st.columns([1, 1, 3])
if left.button("新しい会話", icon="🆕", disabled=not chat):
    chat.clear()
    st.rerun()
if right.button("再生成", icon="🔄", disabled=not chat):
    st.session_state["pending_question"] = chat.pop().question
    st.rerun()

if not chat:
    st.write("例:")
    for example in EXAMPLES:
        if st.button(example, key=f"example-{example}"):
            st.session_state["pending_question"] = example
            st.rerun()

if question is not None:
    with st.chat_message("user"):
        st.markdown(escape_markdown(question))
    with st.chat_message("assistant"):
        try:
            stream = service.answer(question, [Turn(question=a.question, answer=a.text) for a in chat], settings)
        except RagError as exc:  # an empty question; in API mode, the API refusing or unreachable
            st.warning(exc.ja)
            st.stop()
        answer = stream.answer
        if answer.rewritten:
            st.caption(f"検索に使った質問: {escape_markdown(answer.standalone_question)}")
        st.caption(
            f"モード: {MODE_LABELS.get(answer.mode, answer.mode)} ・ 資料 {len(answer.sources)} 件を読んでいます…"
        )
        st.write_stream(escape_markdown(chunk) for chunk in stream)
    chat.append(answer)
    st.rerun()
