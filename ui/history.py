"""The conversation history in the UI: the shared store, the conversation in the URL
(``?c=<id>``, so a reload or a bookmark opens it again), and the sidebar to open,
rename, delete, export and start conversations.

History never stands between a user and an answer: when the database cannot be opened
or written, the page keeps the conversation in the session, says in Japanese that
history is not being saved (naming the file or server), and tries the database again
a little later.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import streamlit as st

from pipeline.core.errors import HistoryUnavailableError
from pipeline.core.schema import Answer, Conversation, Feedback, StoredTurn
from pipeline.core.settings import SESSION_FIELDS, Settings
from pipeline.history.export import as_json, as_markdown
from pipeline.history.store import ConversationStore, database_url, open_store
from ui.auth import Viewer
from ui.markdown import escape_markdown

CONVERSATION_PARAM = "c"
SESSION_CHAT = "chat"
PROBLEM = "history_problem"
#: A store that failed to open is tried again after this long.
RETRY_S = 30
#: While streaming, the partial answer is saved at most this often.
SAVE_EVERY_S = 1.0


@dataclass
class OpenedStore:
    store: ConversationStore | None
    problem_ja: str = ""


@st.cache_resource(ttl=RETRY_S, show_spinner=False)
def _opened(key: str, _settings: Settings) -> OpenedStore:
    # A failure is cached too (for RETRY_S): a PostgreSQL that is down would otherwise
    # cost its connect timeout on every rerun of every session.
    try:
        return OpenedStore(open_store(_settings))
    except HistoryUnavailableError as exc:
        return OpenedStore(None, exc.ja)


def conversation_store(settings: Settings) -> ConversationStore | None:
    """The store, or None (with the reason kept for :func:`history_warning`)."""
    key = hashlib.sha256(f"{database_url(settings)}\x00{settings.db.busy_timeout_s}".encode()).hexdigest()
    opened = _opened(key, settings)
    if opened.store is None:
        st.session_state[PROBLEM] = opened.problem_ja
    return opened.store


def report(problem: HistoryUnavailableError) -> None:
    st.session_state[PROBLEM] = problem.ja


def history_warning() -> None:
    problem = st.session_state.pop(PROBLEM, None)
    if problem:
        st.warning(problem, icon="💾")


def settings_used(settings: Settings) -> dict:
    """What a turn is stored with to be reproducible: the session values, the profile,
    the LLM and its backend."""
    values = {path: settings.value(path) for path in SESSION_FIELDS}
    return {"profile": settings.profile, "llm.model": settings.llm.model, "llm.backend": settings.llm.backend,
            "llm.prompt_format": settings.llm.prompt_format, "corpus.repo": settings.corpus.repo,
            **values}  # fmt: skip


@dataclass
class Chat:
    """The conversation on screen: stored turns when history works, else this session's."""

    conversation_id: str | None
    title: str = ""
    turns: list[StoredTurn] = field(default_factory=list)


def current_chat(store: ConversationStore | None, viewer: Viewer) -> Chat:
    """The conversation named in the URL, else the one this session has open (after a
    visit to another page). It is read again from the store on every run (another tab
    may have added to it); the session's copy serves while the store fails."""
    kept: Chat = st.session_state.setdefault(SESSION_CHAT, Chat(None))
    wanted = st.query_params.get(CONVERSATION_PARAM) or kept.conversation_id
    if wanted is None:
        return kept
    conversation = None
    if store is not None:
        try:
            conversation = store.conversation(viewer.owner, wanted)
        except HistoryUnavailableError as exc:
            report(exc)
            store = None
    if conversation is not None:
        chat = Chat(conversation.id, conversation.title, conversation.turns)
    elif store is None and kept.conversation_id == wanted:
        chat = kept
    else:
        if store is not None:
            st.toast("この会話は見つかりませんでした（削除されたか、別の利用者のものです）。")
        chat = Chat(None)
    if chat.conversation_id is None:
        st.query_params.pop(CONVERSATION_PARAM, None)
    else:
        st.query_params[CONVERSATION_PARAM] = chat.conversation_id
    st.session_state[SESSION_CHAT] = chat
    return chat


def start_turn(
    store: ConversationStore | None, viewer: Viewer, chat: Chat, question: str, settings: Settings
) -> StoredTurn:
    """Write the question before anything is generated (a new conversation on the first)."""
    now = datetime.now(UTC)
    answer = Answer(question=question, standalone_question=question, retriever="")
    turn = StoredTurn(id=None, answer=answer, settings=settings_used(settings), created_at=now, updated_at=now)
    if store is not None:
        try:
            turn.id = (
                store.add_turn(viewer.owner, chat.conversation_id, answer, turn.settings)
                if chat.conversation_id
                else None
            )
            if turn.id is None:
                created = store.create(viewer.owner, question)
                chat.conversation_id, chat.title = created.id, created.title
                st.query_params[CONVERSATION_PARAM] = created.id
                turn.id = store.add_turn(viewer.owner, created.id, answer, turn.settings)
        except HistoryUnavailableError as exc:
            report(exc)
    chat.turns.append(turn)
    return turn


class TurnSaver:
    """Saves a turn's answer while it streams (at most every SAVE_EVERY_S) and at the end;
    after a failure it stops trying for this answer and reports once."""

    def __init__(self, store: ConversationStore | None, viewer: Viewer, turn: StoredTurn) -> None:
        self.store = store if turn.id is not None else None
        self.viewer, self.turn = viewer, turn
        self._last = 0.0

    def save(self, answer: Answer, *, force: bool = False) -> None:
        self.turn.answer = answer
        now = time.monotonic()
        if self.store is None or (not force and now - self._last < SAVE_EVERY_S):
            return
        self._last = now
        try:
            self.store.save_answer(self.viewer.owner, self.turn.id, answer)
        except HistoryUnavailableError as exc:
            report(exc)
            self.store = None


THUMBS = {0: -1, 1: 1}  # st.feedback("thumbs"): 0 is 👎, 1 is 👍


def feedback_widget(store: ConversationStore | None, viewer: Viewer, turn: StoredTurn) -> None:
    """👍/👎 and an optional comment, stored with the turn (only a stored turn has them)."""
    if store is None or turn.id is None:
        return
    stored = turn.feedback
    left, right = st.columns([1, 4])
    with left:
        default = next((index for index, rating in THUMBS.items() if rating == stored.rating), None)
        chosen = st.feedback("thumbs", key=f"feedback-{turn.id}", default=default)
        rating = THUMBS.get(chosen) if chosen is not None else None
        if rating != stored.rating:
            _save_feedback(store, viewer, turn, Feedback(rating=rating, comment=stored.comment))
    with right, st.popover("コメント", icon="💬"), st.form(f"comment-{turn.id}"):
        comment = st.text_area(
            "この回答へのコメント", value=stored.comment, max_chars=2000, key=f"comment-text-{turn.id}"
        )
        if st.form_submit_button("保存"):
            _save_feedback(store, viewer, turn, Feedback(rating=turn.feedback.rating, comment=comment.strip()))
    if turn.feedback.comment:
        st.caption("コメント: " + escape_markdown(turn.feedback.comment))


def _save_feedback(store: ConversationStore, viewer: Viewer, turn: StoredTurn, feedback: Feedback) -> None:
    try:
        store.set_feedback(viewer.owner, turn.id, feedback)
        turn.feedback = feedback
        st.toast("評価を保存しました。")
    except HistoryUnavailableError as exc:
        report(exc)


def _open(conversation_id: str | None) -> None:
    if conversation_id is None:
        st.query_params.pop(CONVERSATION_PARAM, None)
    else:
        st.query_params[CONVERSATION_PARAM] = conversation_id
    st.session_state[SESSION_CHAT] = Chat(None)


def history_sidebar(store: ConversationStore | None, viewer: Viewer, chat: Chat) -> None:
    """New conversation, the list (newest first), and the current one's actions."""
    with st.sidebar:
        st.button("新しい会話", icon="🆕", on_click=_open, args=(None,), width="stretch",
                  disabled=not chat.turns)  # fmt: skip
        st.subheader("会話の履歴")
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
                f"{summary.title}",
                key=f"conversation-{summary.id}",
                help=f"{summary.updated_at.astimezone():%Y-%m-%d %H:%M}",
                type="primary" if current else "tertiary",
                on_click=_open,
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
                _guarded(lambda: store.rename(viewer.owner, chat.conversation_id, title))
                st.rerun()
        conversation = Conversation(
            id=chat.conversation_id, title=chat.title, turns=chat.turns,
            created_at=chat.turns[0].created_at if chat.turns else datetime.now(UTC),
            updated_at=chat.turns[-1].updated_at if chat.turns else datetime.now(UTC),
        )  # fmt: skip
        stem = f"conversation-{chat.conversation_id[:8]}"
        st.download_button("Markdown で書き出す", lambda: as_markdown(conversation), f"{stem}.md",
                           "text/markdown", icon="📝", on_click="ignore")  # fmt: skip
        st.download_button("JSON で書き出す", lambda: as_json(conversation), f"{stem}.json",
                           "application/json", icon="🧾", on_click="ignore")  # fmt: skip
        confirm = st.checkbox("削除してよい", key="confirm-delete")
        if st.button("この会話を削除", icon="🗑️", disabled=not confirm):
            if _guarded(lambda: store.delete(viewer.owner, chat.conversation_id)):
                _open(None)
            st.rerun()


def _guarded(action) -> bool:
    try:
        action()
        return True
    except HistoryUnavailableError as exc:
        report(exc)
        return False
