"""HTTP routes: translate requests to :class:`RagService` calls and back, nothing more."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pipeline.api.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ErrorResponse,
    NoticeOut,
    PassageResponse,
    QuestionRequest,
    ReadyResponse,
    SearchRequest,
    SearchResponse,
    Usage,
)
from pipeline.api.service import (
    SEARCH_FIELDS,
    RagService,
    RequestError,
    chat_chunks,
    completion_id,
    field_error,
    openai_finish_reason,
    question_events,
    rag_info,
    source_out,
    stream_chunks,
)
from pipeline.engine import Source, Turn

MODEL_NAME = "jawiki-rag"
ERRORS = {401: {"model": ErrorResponse}, 422: {"description": "invalid request"}, 429: {"model": ErrorResponse}}


def service(request: Request) -> RagService:
    rag: RagService = request.app.state.rag
    if rag.engine is None:
        raise RequestError(503, f"not ready: {rag.state} {rag.error}".strip(), {"Retry-After": "5"})
    return rag


def require_token(request: Request) -> None:
    """Bearer token check, in constant time, when ``api.token`` / RAG_API_TOKEN is set."""
    expected = request.app.state.rag.settings.api.token.get_secret_value()
    if not expected:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise RequestError(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})


Rag = Annotated[RagService, Depends(service)]
open_router = APIRouter()
router = APIRouter(dependencies=[Depends(require_token)], responses=ERRORS)


@open_router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (no auth, no dependencies)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
def readyz(request: Request) -> JSONResponse:
    """Index, corpus and embedder loaded; LLM reachable ('degraded' when it is not)."""
    status, body = request.app.state.rag.ready()
    return JSONResponse(body.model_dump(), status_code=status)


@router.post("/question", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def question(body: QuestionRequest, rag: Rag, request: Request) -> StreamingResponse:
    """The seed's endpoint: the answer as server-sent events (``sources``, text data
    events, ``error`` if generation failed, ``done`` with timings)."""
    rag.check_question(body.question)
    settings = rag.request_settings(body.model_dump(exclude={"question"}))
    answer = await rag.answer(body.question, [], settings)
    return StreamingResponse(question_events(answer, rag, request), media_type="text/event-stream")


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, rag: Rag, request: Request):
    """OpenAI-compatible chat over the RAG: the last user message is the question, earlier
    user/assistant pairs are the history (system messages are ignored: the RAG's own
    prompt applies). Sources and timings come in ``rag``."""
    turns = [m for m in body.messages if m.role != "system"]
    if not turns or turns[-1].role != "user":
        raise field_error(
            "messages", "the last message must be from the user", "最後のメッセージはユーザーの質問にしてください。"
        )
    question_text = turns[-1].content
    rag.check_question(question_text, field="messages")
    history = [Turn(q.content, a.content) for q, a in zip(turns[:-1:2], turns[1:-1:2], strict=False)
               if q.role == "user" and a.role == "assistant"]  # fmt: skip
    settings = rag.request_settings(body.model_dump(exclude={"messages", "model", "stream"}))
    answer = await rag.answer(question_text, history, settings)
    if body.stream:
        return StreamingResponse(
            chat_chunks(answer, rag, request, body.model or MODEL_NAME), media_type="text/event-stream"
        )
    text = "".join([chunk async for chunk in stream_chunks(answer, rag, request)])
    tokens = int(answer.timings.get("completion_tokens", 0))
    prompt_tokens = int(answer.timings.get("prompt_tokens", answer.timings.get("prompt_tokens_estimated", 0)))
    return ChatCompletionResponse(
        id=completion_id(),
        created=int(time.time()),
        model=body.model or MODEL_NAME,
        choices=[Choice(message=AssistantMessage(content=text), finish_reason=openai_finish_reason(answer))],
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, total_tokens=prompt_tokens + tokens),
        rag=rag_info(answer),
    )


@router.get("/v1/models")
def models() -> dict:
    """What OpenAI clients list: this RAG as one model."""
    return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "jawiki-rag"}]}


@router.post("/v1/search", response_model=SearchResponse)
async def search(body: SearchRequest, rag: Rag) -> SearchResponse:
    """Retrieval only: ranked passages with scores and metadata."""
    rag.check_question(body.query, field="query")
    settings = rag.request_settings({"top_k": body.top_k}, SEARCH_FIELDS)
    retrieval = rag.engine.retrieval
    result = await run_in_threadpool(retrieval.search, body.query, mode=body.mode, settings=settings)
    return SearchResponse(
        query=result.query,
        mode=result.mode,
        hits=[source_out(Source.from_hit(i, hit)) for i, hit in enumerate(result.hits, start=1)],
        timings={k: round(v, 3) for k, v in result.timings.items()},
        notices=[NoticeOut(**n.as_dict()) for n in result.notices],
    )


@router.get("/v1/passages/{row}", response_model=PassageResponse, responses={404: {"model": ErrorResponse}})
def passage(row: int, rag: Rag) -> PassageResponse:
    """One passage by corpus row, with the rows of its neighbours in the same article."""
    retrieval = rag.engine.retrieval
    if not 0 <= row < retrieval.size:
        raise RequestError(404, f"row {row} is outside the corpus (0..{retrieval.size - 1})")
    found, previous_row, next_row = retrieval.passage(row)
    return PassageResponse(
        row=found.row, id=found.id, pageid=found.pageid, revid=found.revid, title=found.title,
        section=found.section_label, url=found.url, text=found.text, previous_row=previous_row, next_row=next_row,
    )  # fmt: skip
