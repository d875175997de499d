"""Chat: ask in Japanese, read the streamed answer, follow each [n] to its passage.

The title and the chat box come first, before the library is imported and the corpus
loaded: on a first start the page is usable at once, says that search is getting ready,
and a question typed meanwhile is answered as soon as it is. Conversations are kept in
the history store (``ui.history``): the question is written before generation starts
and the answer as it streams, and whatever was shown is written when the answer ends,
however it ends (a rerun or a new question mid-answer too), so a reload, a restart or a
crash loses nothing that was shown."""

from __future__ import annotations

import sys

import streamlit as st

from ui.frame import enter_page

enter_page()

st.title("日本語 Wikipedia に質問する")
question = st.chat_input("質問を入力してください") or st.session_state.pop("pending_question", None)
starting = st.empty()
if "pipeline.serving.local" not in sys.modules:  # this process's first run: the library is yet to load
    starting.caption("⏳ 起動したばかりのため、検索の準備をしています（数秒で終わります）。質問はもう入力できます。")

from pipeline.core.errors import EmptyQueryError, RagError  # noqa: E402 - after the chat box, see the docstring
from pipeline.core.schema import Notice, Turn  # noqa: E402
from ui.auth import current_viewer, user_menu  # noqa: E402
from ui.history.chat import TurnSaver, current_chat, drop_last_turn, history_warning, start_turn  # noqa: E402
from ui.history.feedback import feedback_widget  # noqa: E402
from ui.history.sidebar import history_sidebar  # noqa: E402
from ui.history.store import conversation_store  # noqa: E402
from ui.labels import MODE_LABELS, corpus_label  # noqa: E402
from ui.markdown import escape_markdown  # noqa: E402
from ui.resources import rag_service, server_settings, service_status, session_settings  # noqa: E402
from ui.widgets import show_answer  # noqa: E402

EXAMPLES = [
    "日本で梅雨がないのは北海道とどこか。",
    "グスタフ・マーラーが作曲した交響曲はいくつあるか。",
    "ラオスの首都はどこか。",
]

server = server_settings()
settings = session_settings(server)
viewer = current_viewer(server)
user_menu(viewer)
store = conversation_store(server, viewer)
chat = current_chat(store, viewer)
history_sidebar(store, viewer, chat)
service = rag_service(server)
starting.empty()
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
corpus = corpus_label(settings.profile, status.retrieval.build if status.retrieval else None)
passages = status.retrieval.passages if status.retrieval else 0
st.caption(f"コーパス: {corpus} ・ {passages:,} パッセージ ・ 回答: {source}（{health_ja}）")
if not healthy:
    st.warning(f"LLM が使えない状態です（{health_ja}）。検索結果のみでお答えします。", icon="⚠️")
for notice in status.notices:
    if notice.code == "dense_loading":
        st.caption(f"⏳ {notice.ja}")

for number, turn in enumerate(chat.turns):
    with st.chat_message("user"):
        st.markdown(escape_markdown(turn.answer.question))
    with st.chat_message("assistant"):
        show_answer(number, turn.answer)
        feedback_widget(store, viewer, turn)

if chat.turns and st.button("最後の回答を再生成", icon="🔄"):
    st.session_state["pending_question"] = drop_last_turn(store, viewer, chat).answer.question
    st.rerun()

if not chat.turns:
    st.write("例:")
    for example in EXAMPLES:
        if st.button(example, key=f"example-{example}"):
            st.session_state["pending_question"] = example
            st.rerun()

if question is not None and not question.strip():
    st.warning(EmptyQueryError().ja)
elif question is not None:
    history = [Turn(question=t.answer.question, answer=t.answer.text) for t in chat.turns if t.answer.text]
    turn = start_turn(store, viewer, chat, question, settings)
    saver = TurnSaver(store, viewer, chat, turn)
    with st.chat_message("user"):
        st.markdown(escape_markdown(question))
    with st.chat_message("assistant"):
        try:
            stream = service.answer(question, history, settings)
        except RagError as exc:  # in API mode, the API refusing or unreachable
            turn.answer.notices.append(Notice(code="refused", en=exc.en, ja=exc.ja))
            saver.save(turn.answer, force=True)
            st.warning(exc.ja)
            history_warning()
            st.stop()
        answer = stream.answer
        saver.save(answer, force=True)
        if answer.rewritten:
            st.caption(f"検索に使った質問: {escape_markdown(answer.standalone_question)}")
        st.caption(
            f"モード: {MODE_LABELS.get(answer.mode, answer.mode)} ・ 資料 {len(answer.sources)} 件を読んでいます…"
        )

        def shown():
            for chunk in stream:
                saver.save(answer)
                yield escape_markdown(chunk)

        try:
            st.write_stream(shown())
        finally:  # also when a rerun (a new question, a click) cuts the answer short
            stream.close()
            saver.save(answer, force=True)
    st.rerun()
history_warning()
