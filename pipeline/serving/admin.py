"""Administering a server, beside :class:`~pipeline.serving.interface.RagService`: its
server-wide settings, a reload, the engine, the GPU memory plan, the data download.

One interface, :class:`ServerAdmin`, two implementations: :class:`LocalAdmin` over this
process's :class:`~pipeline.serving.runtime.RagRuntime`, and
:class:`~pipeline.serving.admin_client.AdminApiClient` over a RAG API replica's
``/admin/`` routes (its own admin token), so that in API mode the settings page
administers the replicas that answer, not a file no replica reads.

What an admin may do is decided here, whoever calls (docs/security.md): the caller
names an :class:`Actor`; a non-admin is refused and the refusal is audited; an admin
changes only the server-wide fields that are not the operator's
(:func:`~pipeline.settings.model.is_operator_field`: code to run, where data goes, who
is trusted), and the LLM only among the models the operator allowed. A save writes
only what changed to the settings file (never a value from the environment or a
secret), records what it wrote, and reloads only what the change touches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.assets.presence import data_status
from pipeline.core.errors import FieldProblem, RagError, SettingsError
from pipeline.core.schema import AdminState, EngineStatus, ReloadReport, SaveOutcome
from pipeline.generation.llm import resolve_backend
from pipeline.generation.memory_plan import MemoryPlan
from pipeline.serving import audit
from pipeline.serving.runtime import RagRuntime
from pipeline.settings.model import Settings, allowed_models, is_operator_field, section_model
from pipeline.settings.sources import (
    env_overridden,
    load_settings,
    save_file_values,
    settings_file_path,
    with_values,
)

DOWNLOAD_LOG = Path("logs") / "download.log"
LOG_LINES = 8


@dataclass(frozen=True)
class Actor:
    """Who asks for an administrative operation, as the caller established it (a login,
    the local operator, the admin password, the API's admin token)."""

    name: str
    admin: bool


class AdminRefusedError(RagError):
    """An operation the actor may not perform (not an admin, or an operator's field)."""


def admin_paths() -> list[str]:
    """Every dotted path an admin may set from the settings page (server-wide fields
    that are not the operator's, and the session fields' server defaults)."""
    paths = []
    for name, field in Settings.model_fields.items():
        section = section_model(field.annotation)
        for path in [f"{name}.{sub}" for sub in section.model_fields] if section else [name]:
            if not is_operator_field(path):
                paths.append(path)
    return paths


class ServerAdmin(Protocol):
    """The administrative operations of one server."""

    #: Which server, for messages (「このサーバー」 or a replica's URL).
    label: str

    def state(self) -> AdminState:
        """Its settings, what the environment sets, the engine, the data on disk."""

    def save(self, actor: Actor, values: dict[str, Any]) -> SaveOutcome:
        """Save these dotted-path values as server settings and apply them. Raises
        :class:`AdminRefusedError`, or :class:`SettingsError` naming each bad field."""

    def reset(self, actor: Actor) -> SaveOutcome:
        """Remove every admin-set value from the settings file and apply the result."""

    def restart_engine(self, actor: Actor) -> EngineStatus:
        """Restart the local engine with the current settings (not waiting)."""

    def wait_engine(self, timeout_s: float, progress: Callable[[str], None]) -> EngineStatus:
        """Wait for a starting engine, telling ``progress`` its latest log line."""

    def memory_plan(self, values: dict[str, Any] | None = None) -> MemoryPlan | None:
        """The engine's GPU share with these values applied (None without a GPU)."""

    def start_download(self, actor: Actor) -> bool:
        """Start downloading the jawiki profile's data; False if one is running."""


def refuse_unless_admin(actor: Actor, action: str, settings: Settings) -> None:
    """The guard of every operation: a non-admin is refused, and the attempt audited."""
    if not actor.admin:
        audit.record(settings, actor.name, f"refused: {action}", reason="not an admin")
        raise AdminRefusedError(
            en=f"{actor.name} is not an admin: {action} refused",
            ja="サーバー全体の設定の変更・エンジンの再起動・ダウンロードは、管理者だけが行えます。",
        )


class LocalAdmin:
    """:class:`ServerAdmin` for this process: its runtime and its settings file."""

    label = "このサーバー"

    def __init__(self, runtime: RagRuntime, settings_file: Path | str | None = None) -> None:
        self.runtime = runtime
        self.settings_file = settings_file_path(settings_file)

    def current(self) -> Settings:
        """The server settings as the file and the environment say now; with a settings
        file that cannot be read, what the environment says (a save then keeps the bad
        file as a backup and writes a new one)."""
        try:
            return load_settings(self.settings_file)
        except SettingsError:
            return load_settings(os.devnull)

    def state(self) -> AdminState:
        settings = self.runtime.settings
        retrieval = self.runtime.retrieval
        log = settings.resolved_cache_dir / DOWNLOAD_LOG
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        return AdminState(
            settings=settings.model_dump(mode="json"),
            settings_file=str(self.settings_file),
            env_overridden=sorted(env_overridden()),
            allowed_models=allowed_models(settings),
            backend=resolve_backend(settings),
            engine=self.runtime.supervisor.status(),
            passages=retrieval.size if retrieval is not None else 0,
            data=data_status(settings),
            download_log=text.replace("\r", "\n").splitlines()[-LOG_LINES:],
        )

    def save(self, actor: Actor, values: dict[str, Any]) -> SaveOutcome:
        current = self.current()
        refuse_unless_admin(actor, "save server settings", current)
        allowed = set(admin_paths())
        self._refuse_what_admins_may_not_set(actor, current, values, allowed)
        changes = {p: v for p, v in values.items() if _json(current.value(p)) != _json(v)}
        new = with_values(current, changes)  # SettingsError: each bad field named
        if resolve_backend(new) == "local" and any(p.startswith("llm.") or p == "index.backend" for p in changes):
            plan = self.runtime.memory_plan(new)
            if plan is not None and not plan.fits:  # refused before anything is saved or restarted
                en, ja = plan.refusal()
                value = new.llm.gpu_memory_utilization
                raise SettingsError([FieldProblem("llm.gpu_memory_utilization", value, en=en, ja=ja)])
        return self._write(actor, current, "save server settings", changes, ())

    def reset(self, actor: Actor) -> SaveOutcome:
        current = self.current()
        refuse_unless_admin(actor, "reset server settings", current)
        return self._write(actor, current, "reset server settings", {}, admin_paths())

    def restart_engine(self, actor: Actor) -> EngineStatus:
        settings = self.runtime.settings
        refuse_unless_admin(actor, "restart the engine", settings)
        audit.record(settings, actor.name, "restart the engine")
        return self.runtime.restart_engine()

    def wait_engine(self, timeout_s: float, progress: Callable[[str], None]) -> EngineStatus:
        return self.runtime.supervisor.wait_ready(timeout_s, progress)

    def memory_plan(self, values: dict[str, Any] | None = None) -> MemoryPlan | None:
        """The plan for values an admin may set (any other is ignored: this asks, it does
        not change anything, and it has no actor)."""
        settings = self.runtime.settings
        allowed = set(admin_paths())
        values = {path: value for path, value in (values or {}).items() if path in allowed}
        return self.runtime.memory_plan(with_values(settings, values) if values else settings)

    def start_download(self, actor: Actor) -> bool:
        settings = self.runtime.settings
        refuse_unless_admin(actor, "start the jawiki download", settings)
        started = self.runtime.start_download(settings.resolved_cache_dir / DOWNLOAD_LOG)
        audit.record(settings, actor.name, "start the jawiki download" if started else "download already running")
        return started

    # -- internals ------------------------------------------------------------------------

    def _refuse_what_admins_may_not_set(
        self, actor: Actor, current: Settings, values: dict[str, Any], allowed: set[str]
    ) -> None:
        """Only the exact paths an admin may set (never a whole section, which would carry
        the operator's fields with it), and the LLM only among the allowed models."""
        problems = [
            FieldProblem(
                path,
                value,
                en=f"{path} is the operator's: set it in the environment or the settings file",
                ja=f"{path} は運用者だけが設定できます（環境変数か設定ファイルで設定してください）。",
            )
            if _exists(path) and is_operator_field(path)
            else FieldProblem(
                path,
                value,
                en=f"there is no setting {path} an admin may set",
                ja=f"{path} という、管理者が変更できる設定はありません。",
            )
            for path, value in values.items()
            if path not in allowed
        ]
        model = values.get("llm.model")
        if "llm.model" in allowed and model is not None and model not in allowed_models(current):
            problems.append(
                FieldProblem(
                    "llm.model",
                    model,
                    en=f"llm.model: {model} is not among the models the operator allowed (llm.allowed_models)",
                    ja=f"llm.model: モデル {model} は運用者が許可したモデル（llm.allowed_models）に含まれていません。",
                )
            )
        if problems:
            audit.record(current, actor.name, "refused: save server settings", fields=sorted(p.field for p in problems))
            raise AdminRefusedError(en="; ".join(p.en for p in problems), ja="\n".join(p.ja for p in problems))

    def _write(
        self, actor: Actor, current: Settings, action: str, values: dict[str, Any], remove: list[str] | tuple
    ) -> SaveOutcome:
        reports: list[ReloadReport] = []  # applied before written: settings that do not load are not saved
        try:
            saved = save_file_values(
                values, remove, self.settings_file, before_writing=lambda new: reports.append(self.runtime.reload(new))
            )
        except RagError as exc:
            audit.record(current, actor.name, f"failed: {action}", reason=exc.en)
            raise
        audit.record(
            current,
            actor.name,
            action,
            file=str(saved.path),
            written=audit.without_secrets(saved.written),
            removed=saved.removed,
        )
        report = reports[0]
        return SaveOutcome(
            settings_file=str(saved.path),
            written=saved.written,
            removed=saved.removed,
            backup=str(saved.backup) if saved.backup else None,
            reload=report,
        )


def _exists(path: str) -> bool:
    section, _, name = path.partition(".")
    field = Settings.model_fields.get(section)
    model = section_model(field.annotation) if field else None
    return field is not None and (model is None if not name else model is not None and name in model.model_fields)


def _json(value: Any) -> Any:
    """A value as it would be compared in JSON (a float 60 and an int 60 are equal)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
