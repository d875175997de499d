"""The conversation history in the UI: the shared store, the conversation in the URL
(``?c=<id>``, so a reload or a bookmark opens it again), and the sidebar to open,
rename, delete, export and start conversations.

History never stands between a user and an answer, and what the user saw is what is
stored: the conversation on screen is this session's; each turn is written to the store
as it is asked and as its answer streams, and a turn the store could not take (the
database away, its file deleted) stays pending and is written at the next page run
that finds the store working. Meanwhile the page says which turns are not saved yet.
The store's copy of a conversation never replaces turns on screen that it lacks.

An anonymous visitor's conversation (``Viewer.keeps_history`` false) is never stored:
it lives in their browser session only, so no visitor sees another's.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import streamlit as st

from pipeline.core.errors import HistoryUnavailableError, HistoryVanishedError
from pipeline.core.schema import Answer, Conversation, Feedback, StoredTurn
from pipeline.core.unicode import well_formed
from pipeline.history.export import as_json, as_markdown
from pipeline.history.store import ConversationStore, database_url, new_conversation_id, open_store
from pipeline.settings.model import SESSION_FIELDS, Settings
from ui.auth import Viewer
from ui.markdown import escape_markdown

CONVERSATION_PARAM = "c"
SESSION_CHAT = "chat"
#: Conversations left (a new one opened) with turns the store did not take yet.
LEFT_CHATS = "chats_left_unsaved"
PROBLEM = "history_problem"
#: A store that failed to open is tried again after this long.
RETRY_S = 30
#: While streaming, the partial answer is saved at most this often.
SAVE_EVERY_S = 1.0
ANONYMOUS_NOTE = (
    "ログインしていないため、会話はこのタブを開いている間だけ保持され、ほかの人には見えません"
    "（再読み込みすると消えます）。会話を保存してあとから開くには、ログインを使ってください。"
)


class StoreOpener:
    """The process's store of one database: opened once it can be, tried again at most
    every RETRY_S while it cannot (a PostgreSQL that is down would otherwise cost its
    connect timeout on every rerun of every session). Kept for the process: its
    :attr:`~pipeline.history.store.ConversationStore.epoch` must outlive reruns."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._tried = -math.inf
        self.store: ConversationStore | None = None
        self.problem_ja = ""

    def get(self) -> ConversationStore | None:
        with self._lock:
            if self.store is None and time.monotonic() - self._tried >= RETRY_S:
                self._tried = time.monotonic()
                try:
                    self.store = open_store(self._settings)
                except HistoryUnavailableError as exc:
                    self.problem_ja = exc.ja
            return self.store


@st.cache_resource(show_spinner=False, on_release=lambda opener: opener.store and opener.store.close())
def _opener(key: str, _settings: Settings) -> StoreOpener:
    return StoreOpener(_settings)


def conversation_store(settings: Settings, viewer: Viewer) -> ConversationStore | None:
    """The store, or None: for a viewer whose history is not kept, or when it cannot be
    opened (with the reason kept for :func:`history_warning`)."""
    if not viewer.keeps_history:
        return None
    key = hashlib.sha256(f"{database_url(settings)}\x00{settings.db.busy_timeout_s}".encode()).hexdigest()
    opener = _opener(key, settings)
    store = opener.get()
    if store is None:
        st.session_state[PROBLEM] = opener.problem_ja
    return store


def report(problem: HistoryUnavailableError) -> None:
    st.session_state[PROBLEM] = problem.ja


def history_warning() -> None:
    """What went wrong with the history this run, and which turns on screen are not
    stored yet (they are written as soon as the store works again)."""
    problem = st.session_state.pop(PROBLEM, None)
    chats = [st.session_state.get(SESSION_CHAT), *st.session_state.get(LEFT_CHATS, [])]
    unsaved = sum(len(chat.pending) for chat in chats if chat is not None)
    if problem and unsaved:
        problem += (
            f"\n\nこの会話のうち {unsaved} 件のやりとりはまだ保存されていません。"
            "データベースが使えるようになりしだい保存します。"
        )
    if problem:
        st.warning(problem, icon="💾")


def settings_used(settings: Settings) -> dict:
    """What a turn is stored with to be reproducible: the session values, the profile,
    the LLM and its backend."""
    values = {path: settings.value(path) for path in SESSION_FIELDS}
    return {
        "profile": settings.profile,
        "llm.model": settings.llm.model,
        "llm.backend": settings.llm.backend,
        "llm.prompt_format": settings.llm.prompt_format,
        "corpus.repo": settings.corpus.repo,
        **values,
    }


@dataclass
class Chat:
    """The conversation on screen, this session's: its turns, and which of them (by
    position) the store does not hold as shown yet."""

    conversation_id: str | None
    title: str = ""
    turns: list[StoredTurn] = field(default_factory=list)
    pending: set[int] = field(default_factory=set)
    #: The store's epoch when this chat was last written ('' before; another: its file was lost).
    epoch: str = ""


def sync(store: ConversationStore | None, viewer: Viewer, chat: Chat) -> bool:
    """Write the chat's pending turns, in order; True when none is left. A failure is
    reported (once per run) and leaves the rest pending."""
    if store is None or chat.conversation_id is None:
        return not chat.pending
    for attempt in range(2):
        if chat.epoch and chat.epoch != store.epoch:  # the database started anew: nothing of ours is in it
            for turn in chat.turns:
                turn.id = None
            chat.pending = set(range(len(chat.turns)))
        chat.epoch = store.epoch
        try:
            for position in sorted(chat.pending):
                turn = chat.turns[position]
                turn.id = store.put_turn(viewer.owner, chat.conversation_id, turn)
                chat.pending.discard(position)
            return True
        except HistoryVanishedError as exc:
            report(exc)
            if attempt == 1:
                return False
        except HistoryUnavailableError as exc:
            report(exc)
            return False
    return False


def current_chat(store: ConversationStore | None, viewer: Viewer) -> Chat:
    """The conversation named in the URL, else the one this session has open (after a
    visit to another page). Turns this session could not store yet are written first;
    then the stored copy is read (another tab may have added to it), unless turns on
    screen are still pending: the session's copy then stays as it is."""
    kept: Chat = st.session_state.setdefault(SESSION_CHAT, Chat(None))
    left = st.session_state.get(LEFT_CHATS, [])
    st.session_state[LEFT_CHATS] = [chat for chat in left if not sync(store, viewer, chat)]
    wanted = st.query_params.get(CONVERSATION_PARAM) or kept.conversation_id
    if wanted is None:
        return kept
    ours = kept.conversation_id == wanted
    if ours and not sync(store, viewer, kept):
        return kept
    conversation = None
    if store is not None:
        try:
            conversation = store.conversation(viewer.owner, wanted)
        except HistoryUnavailableError as exc:
            report(exc)
            store = None
    if conversation is not None and not (ours and len(conversation.turns) < len(kept.turns)):
        chat = Chat(conversation.id, conversation.title, conversation.turns, epoch=store.epoch)
    elif ours:
        chat = kept
    else:
        if store is not None:
            st.toast("この会話は見つかりませんでした（削除されたか、別の利用者のものです）。")
        chat = Chat(None)
    if chat.conversation_id is None or not viewer.keeps_history:  # nothing stored: no link to share
        st.query_params.pop(CONVERSATION_PARAM, None)
    else:
        st.query_params[CONVERSATION_PARAM] = chat.conversation_id
    st.session_state[SESSION_CHAT] = chat
    return chat


def start_turn(
    store: ConversationStore | None, viewer: Viewer, chat: Chat, question: str, settings: Settings
) -> StoredTurn:
    """Put the question on screen and write it before anything is generated (a new
    conversation, with its id in the URL, on the first question)."""
    now = datetime.now(UTC)
    question = well_formed(question)
    answer = Answer(question=question, standalone_question=question, retriever="")
    turn = StoredTurn(id=None, answer=answer, settings=settings_used(settings), created_at=now, updated_at=now)
    if chat.conversation_id is None:
        chat.conversation_id, chat.title = new_conversation_id(), question
        if viewer.keeps_history:
            st.query_params[CONVERSATION_PARAM] = chat.conversation_id
    chat.turns.append(turn)
    if viewer.keeps_history:  # an anonymous visitor's turns live in the session only
        chat.pending.add(len(chat.turns) - 1)
        sync(store, viewer, chat)
    return turn


class TurnSaver:
    """Writes a turn's answer while it streams (at most every SAVE_EVERY_S) and when it
    ends (``force``). After a failure it waits for the end to try again: a database that
    is away costs its connect timeout at every try. What is not written stays pending
    for the next page run (:func:`sync`)."""

    def __init__(self, store: ConversationStore | None, viewer: Viewer, chat: Chat, turn: StoredTurn) -> None:
        self.store, self.viewer, self.chat, self.turn = store, viewer, chat, turn
        self._position = chat.turns.index(turn)
        self._last = 0.0
        self._failed = False

    def save(self, answer: Answer, *, force: bool = False) -> None:
        self.turn.answer = answer
        if not self.viewer.keeps_history:
            return
        self.chat.pending.add(self._position)
        now = time.monotonic()
        if not force and (self._failed or now - self._last < SAVE_EVERY_S):
            return
        self._last = now
        self._failed = not sync(self.store, self.viewer, self.chat)


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


def drop_last_turn(store: ConversationStore | None, viewer: Viewer, chat: Chat) -> StoredTurn:
    """Take the last turn off the conversation (to ask it again), in the store too."""
    last = chat.turns.pop()
    chat.pending.discard(len(chat.turns))
    if store is not None and last.id is not None:
        _guarded(lambda: store.delete_turn(viewer.owner, last.id))
    return last


def _open(conversation_id: str | None) -> None:
    if conversation_id is None:
        st.query_params.pop(CONVERSATION_PARAM, None)
    else:
        st.query_params[CONVERSATION_PARAM] = conversation_id
    leaving = st.session_state.get(SESSION_CHAT)
    if leaving is not None and leaving.pending:  # still to be written: kept until it is
        st.session_state.setdefault(LEFT_CHATS, []).append(leaving)
    st.session_state[SESSION_CHAT] = Chat(None)


def history_sidebar(store: ConversationStore | None, viewer: Viewer, chat: Chat) -> None:
    """New conversation, the list (newest first), and the current one's actions."""
    with st.sidebar:
        st.button("新しい会話", icon="🆕", on_click=_open, args=(None,), width="stretch", disabled=not chat.turns)
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
