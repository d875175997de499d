"""A RAG API replica's administration, as the settings page sees a local one: the
:class:`~pipeline.serving.admin.ServerAdmin` interface over the replica's ``/admin/``
routes, with the admin token (``api.admin_token``).

The page asks the same guard first (:func:`~pipeline.serving.admin.refuse_unless_admin`):
the replica trusts whoever holds the token, so a non-admin viewer must be stopped here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from pipeline.core.errors import DataUnavailableError, FieldProblem, RagError, SettingsError
from pipeline.core.schema import AdminState, EngineStatus, SaveOutcome
from pipeline.generation.memory_plan import MemoryPlan
from pipeline.serving.admin import Actor, AdminRefusedError, refuse_unless_admin
from pipeline.serving.in_flight import InFlight
from pipeline.settings.model import Settings

PLAN = TypeAdapter(MemoryPlan | None)


class AdminApiClient:
    """:class:`~pipeline.serving.admin.ServerAdmin` of one RAG API replica."""

    def __init__(self, url: str, token: str, settings: Settings, timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.label = self.url
        #: The UI's own settings: where its audit log of refusals goes.
        self._settings = settings
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self._in_flight = InFlight(self._http.close)

    def close(self) -> None:
        """Let go of the connections once no request of another session is under way."""
        self._in_flight.close()

    def state(self) -> AdminState:
        return AdminState.model_validate(self._call("GET", "/admin/state"))

    def save(self, actor: Actor, values: dict[str, Any]) -> SaveOutcome:
        refuse_unless_admin(actor, f"save server settings of {self.url}", self._settings)
        return SaveOutcome.model_validate(self._call("PUT", "/admin/settings", actor, json={"values": values}))

    def reset(self, actor: Actor) -> SaveOutcome:
        refuse_unless_admin(actor, f"reset server settings of {self.url}", self._settings)
        return SaveOutcome.model_validate(self._call("DELETE", "/admin/settings", actor))

    def restart_engine(self, actor: Actor) -> EngineStatus:
        refuse_unless_admin(actor, f"restart the engine of {self.url}", self._settings)
        return EngineStatus.model_validate(self._call("POST", "/admin/engine/restart", actor))

    def wait_engine(self, timeout_s: float, progress: Callable[[str], None]) -> EngineStatus:
        deadline, last = time.monotonic() + timeout_s, ""
        while True:
            engine = self.state().engine
            line = next((x for x in reversed(engine.log_tail) if x.strip()), "")
            if line != last:
                progress(line)
                last = line
            if engine.state != "starting" or time.monotonic() > deadline:
                return engine
            time.sleep(1.0)

    def memory_plan(self, values: dict[str, Any] | None = None) -> MemoryPlan | None:
        return PLAN.validate_python(self._call("POST", "/admin/memory-plan", json={"values": values or {}}))

    def start_download(self, actor: Actor) -> bool:
        refuse_unless_admin(actor, f"start the jawiki download on {self.url}", self._settings)
        return bool(self._call("POST", "/admin/download", actor)["started"])

    # -- HTTP ------------------------------------------------------------------------------

    def _call(self, method: str, path: str, actor: Actor | None = None, **kwargs: Any) -> Any:
        headers = {"X-Rag-Actor": quote(actor.name)} if actor is not None else {}  # headers are ASCII
        try:
            with self._in_flight.request():
                response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise DataUnavailableError(
                en=f"cannot reach the RAG API at {self.url}: {type(exc).__name__}",
                ja=f"RAG API（{self.url}）に接続できません。",
            ) from exc
        if response.status_code == 200:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = body.get("detail") if isinstance(body, dict) else None
        if isinstance(detail, list):  # fields refused: the page shows each beside its widget
            raise SettingsError([FieldProblem(".".join(d["loc"][1:]), None, en=d["msg"], ja=d["ja"]) for d in detail])
        en, ja = str(detail), str(body.get("ja") or f"RAG API がエラー（HTTP {response.status_code}）を返しました。")
        if response.status_code in (401, 403):
            raise AdminRefusedError(en=f"{self.url}: {en}", ja=f"{self.url}: {ja}")
        raise RagError(en=f"{self.url} answered HTTP {response.status_code}: {en}", ja=f"{self.url}: {ja}")
