"""HTTP routes: translate requests to :class:`ApiService` calls and back, nothing more."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pipeline.api.errors import Problem, RequestError, field_error
from pipeline.api.protocol import (
    SEARCH_FIELDS,
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ErrorResponse,
    QuestionRequest,
    SearchRequest,
    Usage,
)
from pipeline.api.service import ApiService
from pipeline.api.streams import (
    RelayedResponse,
    chat_chunks,
    completion_id,
    interrupted_error,
    joined_text,
    openai_finish_reason,
    question_events,
    record,
)
from pipeline.core.errors import RagError
from pipeline.core.schema import RAG_MODEL_NAME, PassageContext, SearchResult, ServiceStatus, Turn
from pipeline.serving import access, metrics

ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "invalid request"),
        (401, "missing or invalid token"),
        (403, "not allowed by the operator's settings"),
        (413, "request body too large"),
        (429, "too many generations at once"),
        (503, "still loading, or failed to load"),
    ]
}


async def service(request: Request) -> ApiService:
    """The loaded service, or 503. This and :func:`require_token` are ``async``: FastAPI
    runs a plain dependency in the worker-thread pool where the answers prepare, so every
    request waited there twice before its question was even read."""
    api: ApiService = request.app.state.api
    if api.rag is None:
        en = f"not ready: {api.state} {api.error}".strip()
        ja = (
            "RAG API は起動中です。少し待ってからもう一度お試しください。"
            if api.state == "loading"
            else ("RAG API はコーパスや索引を読み込めませんでした。管理者に連絡してください。")
        )
        raise RequestError(503, Problem(None, en, ja), code="not_ready", headers={"Retry-After": "5"})
    return api


async def require_token(request: Request) -> None:
    """Bearer token check, in constant time, when ``api.token`` / RAG_API_TOKEN is set.
    Without one, only requests straight from this machine are answered
    (:mod:`pipeline.serving.access`): bound to 0.0.0.0 without a token, the API answers no
    other machine, nor what a proxy forwards with ``X-Forwarded-For`` (a proxy that sets no
    forwarding header hides where a request comes from: behind one, set a token)."""
    expected = request.app.state.api.settings.api.token.get_secret_value()
    if not expected:
        peer = request.client.host if request.client else None
        if not access.classify(access.is_loopback(peer), request.headers.items()).direct_local:
            problem = Problem(
                None,
                "this API server has no token (api.token / RAG_API_TOKEN): it answers its own machine only",
                "この API サーバーにはトークン（api.token / RAG_API_TOKEN）が設定されていないため、"
                "同じマシンからの直接の要求にだけ応答します。運用者にトークンの設定を依頼してください。",
            )
            raise RequestError(401, problem, code="token_required", headers={"WWW-Authenticate": "Bearer"})
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        problem = Problem(
            None,
            "missing or invalid bearer token",
            "API トークンがないか、正しくありません（Authorization: Bearer <token>）。",
        )
        raise RequestError(401, problem, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


Api = Annotated[ApiService, Depends(service)]
open_router = APIRouter()
router = APIRouter(dependencies=[Depends(require_token)], responses=ERRORS)


@open_router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (no auth, no dependencies)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ServiceStatus, responses={503: {"model": ServiceStatus}})
def readyz(request: Request) -> JSONResponse:
    """Index, corpus and embedding model loaded; LLM reachable ('degraded' when it is not)."""
    status, body = request.app.state.api.ready()
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


@router.post("/question", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def question(body: QuestionRequest, api: Api) -> StreamingResponse:
    """The seed's endpoint: the answer as server-sent events (``sources``, text data
    events, ``error`` if generation failed, ``done`` with the whole record)."""
    api.check_question(body.question)
    settings = api.request_settings(body.model_dump(exclude={"question"}))
    relay = await api.answer(body.question, [], settings)
    return RelayedResponse(relay, question_events(relay))


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, api: Api, request: Request):
    """OpenAI-compatible chat over the RAG: the last user message is the question, earlier
    user/assistant pairs are the history (system messages are ignored: the RAG's own
    prompt applies). The RAG's record of the answer comes in ``rag``."""
    turns = [m for m in body.messages if m.role != "system"]
    if not turns or turns[-1].role != "user":
        raise field_error(
            "messages", "the last message must be from the user", "最後のメッセージはユーザーの質問にしてください。"
        )
    question_text = turns[-1].content
    api.check_question(question_text, field="messages")
    history = [
        Turn(question=q.content, answer=a.content)
        for q, a in zip(turns[:-1:2], turns[1:-1:2], strict=False)
        if q.role == "user" and a.role == "assistant"
    ]
    settings = api.request_settings(body.model_dump(exclude={"messages", "model", "stream"}), body.rag_settings)
    relay = await api.answer(question_text, history, settings)
    if body.stream:
        return RelayedResponse(relay, chat_chunks(relay, body.model or RAG_MODEL_NAME))
    text = await joined_text(relay, request)
    answer = relay.answer
    if not answer.complete:  # cut short: an error, not a shorter answer (the record rides along)
        raise interrupted_error(answer, extra={"rag": record(answer)})
    tokens = int(answer.timings.get("completion_tokens", 0))
    prompt_tokens = int(answer.timings.get("prompt_tokens", answer.timings.get("prompt_tokens_estimated", 0)))
    return ChatCompletionResponse(
        id=completion_id(),
        created=int(time.time()),
        model=body.model or RAG_MODEL_NAME,
        choices=[Choice(message=AssistantMessage(content=text), finish_reason=openai_finish_reason(answer))],
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens, total_tokens=prompt_tokens + tokens),
        rag=answer,
    )


@router.get("/metrics", include_in_schema=False)
def metrics_exposition() -> Response:
    """Prometheus's scrape (pipeline/serving/metrics.py; deploy/prometheus.yml)."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/v1/models")
def models() -> dict:
    """What OpenAI clients list: this RAG as one model."""
    return {"object": "list", "data": [{"id": RAG_MODEL_NAME, "object": "model", "owned_by": "jawiki-rag"}]}


@router.post("/v1/search", response_model=SearchResult)
async def search(body: SearchRequest, api: Api) -> SearchResult:
    """Retrieval only: ranked passages with scores and metadata."""
    api.check_question(body.query, field="query")
    fields = {"mode": body.mode, "top_k": body.top_k}
    settings = api.request_settings(fields, body.rag_settings, names=SEARCH_FIELDS)
    return await run_in_threadpool(api.rag.search, body.query, settings)


@router.get("/v1/passages/{row}", response_model=PassageContext, responses={404: {"model": ErrorResponse}})
def passage(row: int, api: Api) -> PassageContext:
    """One passage by corpus row, with its neighbours in the same article."""
    try:
        return api.rag.passage(row)
    except RagError as exc:
        raise RequestError(404, Problem("row", exc.en, exc.ja), code="passage_not_found") from exc
