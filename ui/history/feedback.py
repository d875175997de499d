"""👍/👎 and a comment on an answer, stored with its turn."""

from __future__ import annotations

import streamlit as st

from pipeline.core.errors import HistoryUnavailableError
from pipeline.core.schema import Feedback, StoredTurn
from pipeline.history.store import ConversationStore
from ui.auth import Viewer
from ui.history.store import report
from ui.markdown import escape_markdown

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
