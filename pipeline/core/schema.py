"""The shapes the product passes around, defined once: the engine's results, the RAG
API's wire types and what the UI renders are these same pydantic models.

A :class:`Passage` is a corpus row; a :class:`Source` is a passage as numbered in a
prompt and cited as ``[n]``; an :class:`Answer` is everything known about one answer
(sources before the first token, text and citations as it streams, timings and notices
at the end); :class:`ServiceStatus` is what the status page and ``/readyz`` show; a
:class:`Conversation` is what the UI keeps of a chat (its turns hold those answers).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, computed_field

#: The retrievers (:mod:`pipeline.retrieval.service`).
RetrieverName = Literal["bm25", "dense", "hybrid"]
#: How messages reach the model (:mod:`pipeline.generation.prompt_formats`).
PromptFormatName = Literal["llama2", "chat-template"]
WIKIPEDIA_BASE_URL = "https://ja.wikipedia.org/wiki/"
WIKIPEDIA_REVISION_URL = "https://ja.wikipedia.org/w/index.php?oldid="
#: The model name the RAG API answers to (OpenAI clients pass it as ``model``).
RAG_MODEL_NAME = "jawiki-rag"

#: full: generated over the jawiki corpus; demo: generated over the demo corpus;
#: search-only: no model generated the text (no LLM, or it failed before the first token).
AnswerMode = Literal["full", "demo", "search-only"]
ServiceState = Literal["ready", "degraded", "loading", "failed"]


class _Schema(BaseModel):
    """Python names in code, the documented names on the wire (``n``, ``answer``)."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class Notice(_Schema):
    """Something the user should know about a result that is not an error (a truncated
    question, a retriever that stood in for another, a failed generation)."""

    model_config = ConfigDict(frozen=True, **_Schema.model_config)
    code: str
    en: str
    ja: str


class Passage(_Schema):
    """One corpus row. ``section`` is as a reader sees it ('' for an article's lead)."""

    row: int
    id: int
    pageid: int | None = None
    revid: int | None = None
    title: str
    section: str = ""
    text: str

    @computed_field
    @property
    def url(self) -> str:
        url = WIKIPEDIA_BASE_URL + quote(self.title.replace(" ", "_"))
        if self.section:
            url += "#" + quote(self.section.split(" > ")[-1].replace(" ", "_"))
        return url

    @computed_field
    @property
    def revision_url(self) -> str | None:
        """The article as of the corpus's dump (its revision), when the corpus names one."""
        return f"{WIKIPEDIA_REVISION_URL}{self.revid}" if self.revid else None


class Source(Passage):
    """A retrieved passage as numbered in the prompt and cited as ``[number]``."""

    number: int = Field(alias="n")
    score: float
    #: (start, end) in ``text`` of the sentence that answers / supports the answer.
    highlight: tuple[int, int] | None = None


class PassageContext(_Schema):
    """A passage with its neighbours in the same article (None at the article's ends)."""

    passage: Passage
    previous: Passage | None = None
    next: Passage | None = None


class Turn(_Schema):
    """One earlier exchange of a conversation."""

    question: str
    answer: str


class Citations(_Schema):
    #: Valid source numbers cited anywhere, in order of first use.
    used: list[int] = Field(default_factory=list)
    #: Cited numbers that point at no source.
    invalid: list[int] = Field(default_factory=list)


class Answer(_Schema):
    """One answer, filled in as it is produced."""

    question: str
    #: The question actually searched (a follow-up rewritten to stand alone).
    standalone_question: str
    retriever: str
    sources: list[Source] = Field(default_factory=list)
    notices: list[Notice] = Field(default_factory=list)
    #: Milliseconds per step (embed, search, fetch, ttft, ...), tokens and tokens/s.
    timings: dict[str, float] = Field(default_factory=dict)
    mode: AnswerMode = "search-only"
    #: The exact request sent to the LLM, if any: the prompt text (``llama2``) or the chat
    #: messages as JSON (``chat-template``: the server applies the model's template).
    prompt: str | None = None
    prompt_format: PromptFormatName | None = None
    text: str = Field("", alias="answer")
    complete: bool = False
    #: The LLM's reason for stopping ("stop", "length"), when it said.
    finish_reason: str | None = None
    error: Notice | None = None
    citations: Citations = Field(default_factory=Citations)

    @property
    def rewritten(self) -> bool:
        return self.standalone_question != self.question


class SearchResult(_Schema):
    """Retrieval only: the ranked passages for a query."""

    query: str
    mode: RetrieverName
    hits: list[Source]
    timings: dict[str, float] = Field(default_factory=dict)
    notices: list[Notice] = Field(default_factory=list)


class CorpusBuild(_Schema):
    """What ``python -m pipeline.build`` recorded of the corpus being served."""

    dump_date: str | None = None
    passages: int = 0
    #: Pages of the dump read (None when built from a passages dataset).
    pages: int | None = None
    model: str | None = None
    #: When its last stage finished (UTC, ISO 8601).
    finished: str | None = None

    @classmethod
    def from_manifest(cls, manifest: dict) -> CorpusBuild:
        counts, stages = manifest.get("counts") or {}, manifest.get("stages") or {}
        return cls(
            dump_date=manifest.get("dump_date"),
            passages=int(counts.get("passages", 0)),
            pages=counts.get("pages"),
            model=(manifest.get("model") or {}).get("repo"),
            finished=max((stage.get("finished", "") for stage in stages.values()), default=None) or None,
        )


class RetrievalStatus(_Schema):
    corpus: str
    passages: int
    modes: list[RetrieverName]
    auto_mode: RetrieverName
    embedding_model: str | None = None
    embedding_device: str | None = None
    #: The vector search in words (e.g. "IndexIVFPQ (cpu)"), None without dense retrieval.
    vector_search: str | None = None
    vectors: int | None = None
    dimension: int | None = None
    #: IVF lists probed per query; None for an exhaustive search.
    nprobe: int | None = None
    load_seconds: float = 0.0
    #: The corpus's build record, when ``python -m pipeline.build`` made it.
    build: CorpusBuild | None = None


class LLMStatus(_Schema):
    backend: Literal["local", "remote", "none"]
    model: str | None = None
    url: str | None = None
    reachable: bool = False
    detail_en: str = ""
    detail_ja: str = ""
    #: The local engine's state and its log's last lines (local backend only).
    engine_state: str | None = None
    log_tail: list[str] = Field(default_factory=list)


class ServiceStatus(_Schema):
    state: ServiceState
    retrieval: RetrievalStatus | None = None
    llm: LLMStatus | None = None
    #: What is missing or degraded (e.g. dense retrieval still loading).
    notices: list[Notice] = Field(default_factory=list)
    error: str = ""
    #: The RAG API this status came through, when the UI is its client.
    api_url: str | None = None


class Feedback(_Schema):
    """A user's rating of one answer: 1 (👍) or -1 (👎), and a comment kept as plain text."""

    rating: Literal[-1, 1] | None = None
    comment: str = ""


class StoredTurn(_Schema):
    """One question of a conversation with its answer as last saved: written before
    generation starts and updated as it streams, so ``answer.complete`` is false when it
    stopped midway (a crash, a closed tab, an LLM that died)."""

    #: None while it is not stored (history unavailable).
    id: int | None = None
    answer: Answer
    #: What the answer was produced with: the session's settings, profile and LLM model.
    settings: dict[str, Any] = Field(default_factory=dict)
    feedback: Feedback = Field(default_factory=Feedback)
    created_at: datetime
    updated_at: datetime


class ConversationSummary(_Schema):
    """A line of the history list."""

    id: str
    title: str
    created_at: datetime
    updated_at: datetime


class Conversation(ConversationSummary):
    turns: list[StoredTurn] = Field(default_factory=list)


# -- the engine and the server's administration (the settings page, the API's /admin/) -----

EngineState = Literal["stopped", "starting", "ready", "failed"]


class EngineStatus(_Schema):
    """The local `vllm serve` child as its supervisor sees it."""

    state: EngineState
    en: str = ""
    ja: str = ""
    log_tail: list[str] = Field(default_factory=list)
    base_url: str = ""
    pid: int | None = None
    #: The gpu_memory_utilization the engine was started with.
    utilization: float | None = None
    #: What the ready engine reported: weights_gib, kv_cache_gib, kv_cache_tokens.
    memory: dict[str, float] = Field(default_factory=dict)


class ReloadReport(_Schema):
    """What a reload rebuilt: the parts of retrieval loaded anew (``corpus``, ``bm25``,
    ``embedding``, ``vectors``, ``reranker``), whether the LLM backend was made anew, and
    what happened to the local engine."""

    changed: list[str] = Field(default_factory=list)
    retrieval: list[str] = Field(default_factory=list)
    llm: bool = False
    engine: Literal["unchanged", "restarting", "starting", "stopped"] = "unchanged"


class DataItem(_Schema):
    """One thing a data profile needs (corpus, index, model) and whether it is here."""

    label_ja: str
    location: str
    present: bool
    size_bytes: int


class AdminState(_Schema):
    """What the settings page shows of one server (this process, or one API replica)."""

    #: The server's effective settings (secrets masked), as JSON values.
    settings: dict[str, Any]
    settings_file: str
    #: Dotted paths set by RAG_* variables (they win over the file).
    env_overridden: list[str] = Field(default_factory=list)
    #: The LLMs an admin may choose (llm.allowed_models, the default, the current one).
    allowed_models: list[str] = Field(default_factory=list)
    #: The LLM backend ``llm.backend`` resolves to here (local, remote, none).
    backend: Literal["local", "remote", "none"]
    engine: EngineStatus
    #: Passages of the loaded corpus (the memory plan needs it for unloaded backends).
    passages: int = 0
    data: list[DataItem] = Field(default_factory=list)
    download_log: list[str] = Field(default_factory=list)


class SaveOutcome(_Schema):
    """What saving server settings did: the values written to the settings file, the
    paths removed from it, where an unreadable old file was kept, and the reload."""

    settings_file: str
    written: dict[str, Any] = Field(default_factory=dict)
    removed: list[str] = Field(default_factory=list)
    backup: str | None = None
    reload: ReloadReport = Field(default_factory=ReloadReport)
