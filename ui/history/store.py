"""The process's conversation store as the pages get it: opened once it can be, its
problems kept for the page to say (:func:`ui.history.chat.history_warning`)."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable

import streamlit as st

from pipeline.core.errors import HistoryUnavailableError
from pipeline.history.store import ConversationStore, database_url, open_store
from pipeline.settings.model import Settings
from ui.auth import Viewer

PROBLEM = "history_problem"
#: A store that failed to open is tried again after this long.
RETRY_S = 30


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


# One database at a time: the store of an earlier db.url is closed (max_entries=1).
@st.cache_resource(show_spinner=False, max_entries=1, on_release=lambda opener: opener.store and opener.store.close())
def _opener(key: str, _settings: Settings) -> StoreOpener:
    return StoreOpener(_settings)


def conversation_store(settings: Settings, viewer: Viewer) -> ConversationStore | None:
    """The store, or None: for a viewer whose history is not kept, or when it cannot be
    opened (with the reason kept for :func:`ui.history.chat.history_warning`)."""
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


def guarded(action: Callable[[], object]) -> bool:
    """Run a store action; False, with the problem reported, when the store is away."""
    try:
        action()
        return True
    except HistoryUnavailableError as exc:
        report(exc)
        return False
