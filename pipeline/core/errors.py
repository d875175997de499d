"""Errors that carry a message for the user (Japanese) and one for the log (English).

Every failure a user can cause or fix (bad settings, a missing file, an unreachable
hub) is raised as a :class:`RagError`, so that the UI, the CLIs and the API can show
``error.ja`` without a traceback, while ``str(error)`` stays English for logs.
"""

from __future__ import annotations


class RagError(Exception):
    """A failure with a bilingual, actionable message."""

    def __init__(self, en: str, ja: str) -> None:
        super().__init__(en)
        self.en = en
        self.ja = ja


class SettingsError(RagError):
    """One or more settings values are invalid; ``problems`` lists each field."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__(
            en="; ".join(p.en for p in problems),
            ja="\n".join(p.ja for p in problems),
        )


class FieldProblem:
    """An invalid value of one settings field, described in both languages."""

    def __init__(self, field: str, value: object, en: str, ja: str) -> None:
        self.field = field
        self.value = value
        self.en = en
        self.ja = ja

    def __repr__(self) -> str:
        return f"FieldProblem({self.field!r}, {self.value!r})"


class EmptyQueryError(RagError):
    def __init__(self) -> None:
        super().__init__(
            en="The question is empty.",
            ja="質問が空です。検索したい内容を入力してください。",
        )


class DataUnavailableError(RagError):
    """A corpus, index or model file could not be found, downloaded or read."""


class IndexMismatchError(DataUnavailableError):
    """The vector index does not fit the corpus or the embedding model."""


class RetrieverUnavailableError(RagError):
    """The requested retriever mode cannot run with what is loaded."""


class HistoryUnavailableError(RagError):
    """The conversation store cannot be opened or written (a corrupt or unopenable
    SQLite file, PostgreSQL down). Answers go on; history is not saved meanwhile."""


class HistoryBusyError(HistoryUnavailableError):
    """Another process held the database longer than the busy timeout."""


class HistoryVanishedError(HistoryUnavailableError):
    """The SQLite file was deleted or replaced while the app ran; a new one was started."""
