"""A conversation as a file to keep or share: Markdown to read, JSON to process.

Both are built from the stored :class:`~pipeline.core.schema.Conversation`. Questions,
answers and comments are escaped in the Markdown, so that text typed by a user or
written by the model stays text in any Markdown viewer.
"""

from __future__ import annotations

from pipeline.core.schema import Conversation, StoredTurn
from pipeline.text.markdown import escape_markdown

RATING_MARKS = {1: "👍", -1: "👎"}


def as_json(conversation: Conversation) -> str:
    return conversation.model_dump_json(indent=2)


def as_markdown(conversation: Conversation) -> str:
    parts = [
        f"# {escape_markdown(conversation.title)}",
        f"{conversation.created_at:%Y-%m-%d %H:%M} UTC ・ {len(conversation.turns)} 件の質問",
    ]
    parts.extend(_turn_markdown(number, turn) for number, turn in enumerate(conversation.turns, 1))
    return "\n\n".join(parts) + "\n"


def _turn_markdown(number: int, turn: StoredTurn) -> str:
    answer = turn.answer
    lines = [f"## 質問 {number}", "", escape_markdown(answer.question), ""]
    if answer.standalone_question != answer.question:
        lines += [f"（検索に使った質問: {escape_markdown(answer.standalone_question)}）", ""]
    lines += ["### 回答", "", escape_markdown(answer.text) or "（回答なし）", ""]
    if not answer.complete:
        lines += ["（この回答は途中で止まりました）", ""]
    if answer.sources:
        lines += ["### 出典", ""]
        lines += [
            f"{source.number}. [{escape_markdown(source.title)}]({source.url})"
            f"{' ・ ' + escape_markdown(source.section) if source.section else ''} ・ 行 {source.row}"
            f" ・ スコア {source.score:.3f}"
            for source in answer.sources
        ]
        lines.append("")
    feedback = turn.feedback
    if feedback.rating is not None or feedback.comment:
        mark = RATING_MARKS.get(feedback.rating, "")
        lines += [f"評価: {mark} {escape_markdown(feedback.comment)}".rstrip(), ""]
    return "\n".join(lines).rstrip()
