"""Refused requests on the wire, in the shape each kind of client expects.

OpenAI's routes (``/v1/...``) answer OpenAI's error object with OpenAI's status codes, so
the official SDK raises its typed errors (``BadRequestError``, ``AuthenticationError``,
``PermissionDeniedError``, ``RateLimitError`` ...) whose message is the Japanese one:

    {"error": {"message": "質問が空です。…", "type": "invalid_request_error",
               "param": "messages", "code": "empty_question", "message_en": "The question is empty."}}

The seed's routes (``/question``, ``/readyz``) keep FastAPI's ``{"detail": [...]}`` with
422, as the seed's clients read it; each item names the field and carries ``ja``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pipeline.serving import metrics

#: OpenAI's error ``type`` for each status the API answers.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "server_error",
}
OPENAI_PREFIX = "/v1/"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: the field (dotted, None for the whole request)
    and why, in both languages."""

    field: str | None
    en: str
    ja: str


class RequestError(Exception):
    """A request the API refuses: HTTP status, the problems, an error code and headers."""

    def __init__(
        self,
        status: int,
        problems: Problem | list[Problem],
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.problems = problems if isinstance(problems, list) else [problems]
        super().__init__("; ".join(p.en for p in self.problems))
        self.status = status
        self.code = code
        self.headers = headers or {}
        #: More members of OpenAI's error object (e.g. the partial answer's record).
        self.extra = extra or {}


def field_error(field: str, en: str, ja: str, code: str = "invalid_value") -> RequestError:
    """A bad value of one request field: 400 on OpenAI's routes, 422 on the seed's."""
    return RequestError(422, Problem(field, en, ja), code=code)


def openai_body(status: int, problems: list[Problem], code: str | None = None, **extra: Any) -> dict[str, Any]:
    status = 400 if status == 422 else status
    return {
        "error": {
            "message": "\n".join(p.ja for p in problems),
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": next((p.field for p in problems if p.field), None),
            "code": code,
            "message_en": "; ".join(p.en for p in problems),
            **extra,
        }
    }


def detail_body(problems: list[Problem]) -> dict[str, Any]:
    """FastAPI's shape: field problems as a list, a request-wide one as one object."""
    if len(problems) == 1 and problems[0].field is None:
        return {"detail": problems[0].en, "ja": problems[0].ja}
    return {
        "detail": [
            {"loc": ["body", *(p.field or "").split(".")], "msg": p.en, "type": "value_error", "ja": p.ja}
            for p in problems
        ]
    }


def error_response(path: str, error: RequestError) -> JSONResponse:
    """The refusal as the client of ``path`` expects it (and counted)."""
    metrics.REFUSED.labels(error.code or f"http_{error.status}").inc()
    if path.startswith(OPENAI_PREFIX):
        status = 400 if error.status == 422 else error.status
        return JSONResponse(
            openai_body(status, error.problems, error.code, **error.extra), status_code=status, headers=error.headers
        )
    return JSONResponse(detail_body(error.problems), status_code=error.status, headers=error.headers)


def validation_problems(errors: list[dict[str, Any]]) -> list[Problem]:
    """pydantic's complaints about a request body, named by field, in Japanese too."""
    problems = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        field = ".".join(location) or None
        kind, message = error.get("type", ""), error.get("msg", "invalid")
        name = f"「{field}」" if field else "リクエスト"
        if kind == "json_invalid":
            ja = "リクエスト本文が JSON として正しくありません。"
        elif kind == "missing":
            ja = f"{name}がありません。"
        elif kind == "extra_forbidden":
            ja = f"{name}という項目は受け付けていません。"
        else:
            ja = f"{name}の値が正しくありません（{message}）。"
        problems.append(Problem(field, f"{field or 'body'}: {message}", ja))
    return problems


async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
    return error_response(request.url.path, exc)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = validation_problems(list(exc.errors()))
    return error_response(request.url.path, RequestError(422, problems, code="invalid_request"))


async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (an unknown path, a wrong method) in the same shapes."""
    problem = Problem(None, str(exc.detail), f"このリクエストには応じられません（HTTP {exc.status_code}）。")
    return error_response(request.url.path, RequestError(exc.status_code, problem, headers=exc.headers or {}))


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A failure nobody foresaw: logged with its traceback, answered in the route's shape
    (an OpenAI client then raises InternalServerError with a message, not a parse error)."""
    logger.exception("unexpected error on %s", request.url.path)
    ja = "サーバー内部でエラーが発生しました。時間をおいてもう一度お試しください。"
    problem = Problem(None, f"internal error: {type(exc).__name__}", ja)
    return error_response(request.url.path, RequestError(500, problem, code="internal_error"))


EXCEPTION_HANDLERS = {
    RequestError: on_request_error,
    RequestValidationError: on_validation_error,
    HTTPException: on_http_error,
    Exception: on_unexpected_error,
}
