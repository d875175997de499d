"""The conversation on screen: this session's copy, written to the store turn by turn as
it is asked and as its answer streams; what the store could not take stays pending."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import streamlit as st

from pipeline.core.errors import HistoryUnavailableError, HistoryVanishedError
from pipeline.core.schema import Answer, StoredTurn
from pipeline.core.unicode import well_formed
from pipeline.history.store import ConversationStore, new_conversation_id
from pipeline.settings.model import SESSION_FIELDS, Settings
from ui.auth import Viewer
from ui.history.store import PROBLEM, guarded, report

CONVERSATION_PARAM = "c"
SESSION_CHAT = "chat"
#: Conversations left (a new one opened) with turns the store did not take yet.
LEFT_CHATS = "chats_left_unsaved"
#: While streaming, the partial answer is saved at most this often.
SAVE_EVERY_S = 1.0


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
    #: Stored turns taken off the conversation (to ask again) that the store still holds:
    #: the database was away when they were dropped.
    dropped: list[int] = field(default_factory=list)


def sync(store: ConversationStore | None, viewer: Viewer, chat: Chat) -> bool:
    """Delete the turns dropped meanwhile, then write the chat's pending turns, in order;
    True when nothing is left. A failure is reported (once per run) and leaves the rest
    pending."""
    if store is None or chat.conversation_id is None:
        return not chat.pending and not chat.dropped
    for attempt in range(2):
        if chat.epoch and chat.epoch != store.epoch:  # the database started anew: nothing of ours is in it
            for turn in chat.turns:
                turn.id = None
            chat.pending, chat.dropped = set(range(len(chat.turns))), []
        chat.epoch = store.epoch
        try:
            while chat.dropped:  # before the turn asked again is written: a reload shows it once
                store.delete_turn(viewer.owner, chat.dropped[0])
                chat.dropped.pop(0)
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
        asked = self.turn.answer.question  # the engine's is cut to max_query_chars (its notice says so)
        self.turn.answer = answer if answer.question == asked else answer.model_copy(update={"question": asked})
        if not self.viewer.keeps_history:
            return
        self.chat.pending.add(self._position)
        now = time.monotonic()
        if not force and (self._failed or now - self._last < SAVE_EVERY_S):
            return
        self._last = now
        self._failed = not sync(self.store, self.viewer, self.chat)


def drop_last_turn(store: ConversationStore | None, viewer: Viewer, chat: Chat) -> StoredTurn:
    """Take the last turn off the conversation (to ask it again), in the store too."""
    last = chat.turns.pop()
    chat.pending.discard(len(chat.turns))
    if last.id is not None and (store is None or not guarded(lambda: store.delete_turn(viewer.owner, last.id))):
        chat.dropped.append(last.id)  # deleted by the next sync that reaches the store
    return last


def open_conversation(conversation_id: str | None) -> None:
    """Open a stored conversation (None: a new one); the one left keeps its pending turns."""
    if conversation_id is None:
        st.query_params.pop(CONVERSATION_PARAM, None)
    else:
        st.query_params[CONVERSATION_PARAM] = conversation_id
    leaving = st.session_state.get(SESSION_CHAT)
    if leaving is not None and (leaving.pending or leaving.dropped):  # still to be written: kept until it is
        st.session_state.setdefault(LEFT_CHATS, []).append(leaving)
    st.session_state[SESSION_CHAT] = Chat(None)
