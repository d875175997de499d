"""The RAG API's wire protocol: request and response models, nothing else.

Sampling fields are typed here and bounded by the settings schema when applied (one
place for the ranges), so an out-of-range value is a 422 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class QuestionRequest(BaseModel):
    """The seed's ``POST /question`` body."""

    model_config = ConfigDict(extra="forbid")
    question: str
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    repetition_penalty: float | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completions body; vLLM's ``top_k`` and ``repetition_penalty`` too.
    Other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = "jawiki-rag"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    #: Retrieval for this request (extensions; OpenAI clients pass them in ``extra_body``).
    rag_mode: Literal["auto", "bm25", "dense", "hybrid"] | None = None
    rag_top_k: int | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    mode: Literal["auto", "bm25", "dense", "hybrid"] | None = None
    top_k: int | None = None


class SourceOut(BaseModel):
    n: int
    row: int
    title: str
    section: str
    url: str
    score: float
    text: str
    pageid: int | None = None
    revid: int | None = None
    highlight: list[int] | None = None


class NoticeOut(BaseModel):
    code: str
    en: str
    ja: str


class RagInfo(BaseModel):
    """What the RAG adds to an OpenAI response: the passages and how it went."""

    question: str
    standalone_question: str
    mode: str
    retriever: str
    complete: bool
    sources: list[SourceOut]
    citations: dict[str, list[int]]
    timings: dict[str, float]
    notices: list[NoticeOut]


class SearchResponse(BaseModel):
    query: str
    mode: str
    hits: list[SourceOut]
    timings: dict[str, float]
    notices: list[NoticeOut]


class PassageResponse(BaseModel):
    row: int
    id: int
    pageid: int | None
    revid: int | None
    title: str
    section: str
    url: str
    text: str
    previous_row: int | None
    next_row: int | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    rag: RagInfo


class ReadyResponse(BaseModel):
    status: Literal["ready", "degraded", "loading", "failed"]
    components: dict[str, Any]


class ErrorResponse(BaseModel):
    detail: str
