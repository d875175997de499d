"""The RAG API's wire protocol: request and response models, nothing else.

The RAG's own shapes (answers, sources, passages, search results, status) are the schema
models of :mod:`pipeline.core.schema`, used as they are. Here are the requests, and the
OpenAI shapes the RAG's answer travels in. Sampling fields are typed here and bounded by
the settings schema when applied (one place for the ranges), so an out-of-range value is
a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline.core.schema import Answer
from pipeline.core.unicode import well_formed
from pipeline.settings.model import RetrieverChoice

#: A user's text: JSON may carry lone surrogates ("\ud800"), which nothing downstream
#: can encode; they become U+FFFD here.
UserText = Annotated[str, AfterValidator(well_formed)]

#: Request fields (the seed's and OpenAI's names) and the settings they set.
REQUEST_FIELDS = {
    "max_new_tokens": "generation.max_new_tokens",
    "max_tokens": "generation.max_new_tokens",
    "max_completion_tokens": "generation.max_new_tokens",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "do_sample": "generation.do_sample",
    "repetition_penalty": "generation.repetition_penalty",
}


#: ``/v1/search`` fields and the settings they set.
SEARCH_FIELDS = {"mode": "retrieval.mode", "top_k": "retrieval.top_k"}


class QuestionRequest(BaseModel):
    """The seed's ``POST /question`` body."""

    model_config = ConfigDict(extra="forbid")
    question: UserText
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    repetition_penalty: float | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: UserText


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
    #: Session settings for this request by dotted path (an extension; OpenAI clients
    #: pass it in ``extra_body``), e.g. {"retrieval.mode": "bm25", "retrieval.top_k": 3}.
    rag_settings: dict[str, Any] = Field(default_factory=dict)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: UserText
    mode: RetrieverChoice | None = None
    top_k: int | None = None
    rag_settings: dict[str, Any] = Field(default_factory=dict)


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
    #: The RAG's record of the answer: question, sources, citations, timings, notices.
    rag: Answer


class ErrorInfo(BaseModel):
    """OpenAI's error object; ``message`` is the Japanese one, ``message_en`` for logs."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    message_en: str


class ErrorResponse(BaseModel):
    error: ErrorInfo
