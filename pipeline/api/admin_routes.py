"""The RAG API's administrative routes (``/admin/...``): the
:class:`~pipeline.serving.admin.ServerAdmin` operations of this replica over HTTP, for
the settings page of a UI in API mode (:mod:`pipeline.serving.admin_client`).

They need their own token, ``api.admin_token`` (RAG_API_ADMIN_TOKEN), never the users'
``api.token``; without one configured they are off (403). Whoever holds the token is an
admin; the name the UI sends in ``X-Rag-Actor`` goes into the audit log. What an admin
may change is decided by :class:`~pipeline.serving.admin.LocalAdmin`, as in-process.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, TypeAdapter
from starlette.concurrency import run_in_threadpool

from pipeline.api.errors import Problem, RequestError
from pipeline.api.service import ApiService
from pipeline.core.errors import RagError, SettingsError
from pipeline.core.schema import AdminState, EngineStatus, SaveOutcome
from pipeline.generation.memory_plan import MemoryPlan
from pipeline.serving.admin import Actor, AdminRefusedError

ACTOR_HEADER = "x-rag-actor"
PLAN = TypeAdapter(MemoryPlan | None)


def require_admin_token(request: Request) -> None:
    expected = request.app.state.api.settings.api.admin_token.get_secret_value()
    if not expected:
        problem = Problem(
            None,
            "administration over the API is off: api.admin_token is not set",
            "この API サーバーでは管理操作が無効です（運用者が api.admin_token / "
            "RAG_API_ADMIN_TOKEN を設定していません）。",
        )
        raise RequestError(403, problem, code="admin_disabled")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        problem = Problem(None, "missing or invalid admin token", "管理トークンがないか、正しくありません。")
        raise RequestError(401, problem, code="invalid_admin_token", headers={"WWW-Authenticate": "Bearer"})


def actor(request: Request) -> Actor:
    name = unquote(request.headers.get(ACTOR_HEADER, "")).strip()[:200] or "unnamed"
    return Actor(f"{name} (API admin token)", admin=True)


def api_service(request: Request) -> ApiService:
    return request.app.state.api


Api = Annotated[ApiService, Depends(api_service)]
Caller = Annotated[Actor, Depends(actor)]
admin_router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin_token)], include_in_schema=False)


class SettingsChange(BaseModel):
    """Dotted setting paths and their new values, e.g. {"llm.timeout_s": 30}."""

    values: dict[str, Any]


def _refusals(call):
    """Run an admin operation; its refusals as the API's errors (fields named)."""
    try:
        return call()
    except AdminRefusedError as exc:
        raise RequestError(403, Problem(None, exc.en, exc.ja), code="admin_refused") from None
    except SettingsError as exc:
        problems = [Problem(p.field, p.en, p.ja) for p in exc.problems]
        raise RequestError(422, problems, code="invalid_value") from None
    except RagError as exc:  # settings that do not load here (a corpus missing, ...): nothing saved
        raise RequestError(409, Problem(None, exc.en, exc.ja), code="not_applied") from None


@admin_router.get("/state", response_model=AdminState)
def state(api: Api) -> AdminState:
    return api.admin.state()


@admin_router.put("/settings", response_model=SaveOutcome)
async def save(change: SettingsChange, api: Api, who: Caller) -> SaveOutcome:
    return await run_in_threadpool(_refusals, lambda: api.admin.save(who, change.values))


@admin_router.delete("/settings", response_model=SaveOutcome)
async def reset(api: Api, who: Caller) -> SaveOutcome:
    return await run_in_threadpool(_refusals, lambda: api.admin.reset(who))


@admin_router.post("/engine/restart", response_model=EngineStatus)
def restart_engine(api: Api, who: Caller) -> EngineStatus:
    return _refusals(lambda: api.admin.restart_engine(who))


@admin_router.post("/memory-plan")
def memory_plan(change: SettingsChange, api: Api) -> Any:
    return PLAN.dump_python(_refusals(lambda: api.admin.memory_plan(change.values or None)), mode="json")


@admin_router.post("/download")
def download(api: Api, who: Caller) -> dict[str, bool]:
    return {"started": _refusals(lambda: api.admin.start_download(who))}
