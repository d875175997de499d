"""Reading SQuAD-v1.1-format files such as JSQuAD: one paragraph becomes one passage.

JSQuAD contexts are ``"<article title> [SEP] <paragraph text>"``. The passages are in
the wikipedia-utils schema; JSQuAD does not record Wikipedia page or revision ids, so
those stay empty (null) rather than invented.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TITLE_SEPARATOR = " [SEP] "


class SquadFormatError(ValueError):
    """The file is missing, unreadable or not SQuAD-shaped; the message says which."""


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: tuple[str, ...]
    gold_row: int


@dataclass
class SquadCorpus:
    passages: list[dict]
    questions: list[Question]


def split_context(context: str, fallback_title: str) -> tuple[str, str]:
    title, separator, text = context.partition(TITLE_SEPARATOR)
    if not separator:
        return fallback_title, context
    return title, text


def read_squad(paths: list[Path], with_questions: list[bool]) -> SquadCorpus:
    """Passages of every paragraph of every file, in file order; questions only from the
    files flagged in ``with_questions`` (distractor files add passages only)."""
    corpus = SquadCorpus(passages=[], questions=[])
    for path, keep_questions in zip(paths, with_questions, strict=True):
        for article in _load_articles(path):
            for paragraph in article.get("paragraphs", []):
                row = len(corpus.passages)
                title, text = split_context(paragraph["context"], article.get("title", ""))
                corpus.passages.append(
                    {
                        "id": row,
                        "pageid": None,
                        "revid": None,
                        "title": title,
                        "section": "",
                        "text": text,
                    }
                )
                if keep_questions:
                    for qa in paragraph.get("qas", []):
                        corpus.questions.append(
                            Question(
                                id=str(qa.get("id", "")),
                                text=qa["question"],
                                answers=tuple(a["text"] for a in qa.get("answers", [])),
                                gold_row=row,
                            )
                        )
    return corpus


def _load_articles(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SquadFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SquadFormatError(f"{path}: not readable JSON ({exc})") from None
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list) or not all(
        isinstance(a, dict)
        and isinstance(a.get("paragraphs"), list)
        and all(isinstance(p, dict) and isinstance(p.get("context"), str) for p in a["paragraphs"])
        and all(
            isinstance(q, dict) and isinstance(q.get("question"), str)
            for p in a["paragraphs"]
            for q in p.get("qas", [])
        )
        for a in articles
    ):
        raise SquadFormatError(f"{path}: not SQuAD-shaped (expected data[].paragraphs[].context and qas[].question)")
    return articles
