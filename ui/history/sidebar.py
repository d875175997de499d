"""The history sidebar: a new conversation, the list of this user's conversations, and
the current one's rename, export and delete."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from pipeline.core.errors import HistoryUnavailableError
from pipeline.core.schema import Conversation
from pipeline.history.export import as_json, as_markdown
from pipeline.history.store import ConversationStore
from ui.auth import Viewer
from ui.history.chat import Chat, open_conversation
from ui.history.store import guarded, report
from ui.markdown import escape_markdown

ANONYMOUS_NOTE = (
    "ログインしていないため、会話はこのタブを開いている間だけ保持され、ほかの人には見えません"
    "（再読み込みすると消えます）。会話を保存してあとから開くには、ログインを使ってください。"
)


def history_sidebar(store: ConversationStore | None, viewer: Viewer, chat: Chat) -> None:
    """New conversation, the list (newest first), and the current one's actions."""
    with st.sidebar:
        st.button(
            "新しい会話", icon="🆕", on_click=open_conversation, args=(None,), width="stretch", disabled=not chat.turns
        )
        st.subheader("会話の履歴")
        if not viewer.keeps_history:
            st.caption(ANONYMOUS_NOTE)
            return
        if store is None:
            st.caption("会話履歴は保存されていません（データベースを使えません）。")
            return
        try:
            summaries = store.conversations(viewer.owner)
        except HistoryUnavailableError as exc:
            report(exc)
            return
        if not summaries:
            st.caption("まだ会話はありません。")
        for summary in summaries:
            current = summary.id == chat.conversation_id
            st.button(
                escape_markdown(summary.title),  # a button label is Markdown: images would load
                key=f"conversation-{summary.id}",
                help=f"{summary.updated_at.astimezone():%Y-%m-%d %H:%M}",
                type="primary" if current else "tertiary",
                on_click=open_conversation,
                args=(summary.id,),
                width="stretch",
            )
        if chat.conversation_id:
            _conversation_actions(store, viewer, chat)


def _conversation_actions(store: ConversationStore, viewer: Viewer, chat: Chat) -> None:
    with st.popover("この会話を編集・書き出し", icon="✏️", width="stretch"):
        with st.form("rename"):
            title = st.text_input("名前", value=chat.title, max_chars=200, key="rename-title")
            if st.form_submit_button("名前を変更"):
                guarded(lambda: store.rename(viewer.owner, chat.conversation_id, title))
                st.rerun()
        conversation = Conversation(
            id=chat.conversation_id,
            title=chat.title,
            turns=chat.turns,
            created_at=chat.turns[0].created_at if chat.turns else datetime.now(UTC),
            updated_at=chat.turns[-1].updated_at if chat.turns else datetime.now(UTC),
        )
        stem = f"conversation-{chat.conversation_id[:8]}"
        st.download_button(
            "Markdown で書き出す",
            lambda: as_markdown(conversation),
            f"{stem}.md",
            "text/markdown",
            icon="📝",
            on_click="ignore",
        )
        st.download_button(
            "JSON で書き出す",
            lambda: as_json(conversation),
            f"{stem}.json",
            "application/json",
            icon="🧾",
            on_click="ignore",
        )
        confirm = st.checkbox("削除してよい", key="confirm-delete")
        if st.button("この会話を削除", icon="🗑️", disabled=not confirm):
            if guarded(lambda: store.delete(viewer.owner, chat.conversation_id)):
                open_conversation(None)
            st.rerun()
