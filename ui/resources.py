"""What every page shares: the settings (server-wide and per session) and the RAG
service, whose heavy parts are created once per process with ``st.cache_resource`` and
shared by all sessions.

Server-wide settings come from the settings file and ``RAG_*`` variables and decide what
the process loads (corpus, index, models, engine). Per-session settings (the settings'
session fields: retrieval mode, top-k, nprobe, sampling, prompts) live in
``st.session_state`` and travel with each call. Failures become Japanese messages on the
page, never tracebacks.
"""

from __future__ import annotations

import hashlib
import json

import streamlit as st

from pipeline.core.errors import RagError, SettingsError
from pipeline.core.gpu import ProductGpuUse, gpus
from pipeline.core.schema import ServiceStatus
from pipeline.core.settings import Settings, is_session_field
from pipeline.core.settings_files import load_settings, settings_file_path, with_session_values
from pipeline.generation.memory_plan import MemoryPlan, plan_memory
from pipeline.generation.supervisor import EngineSupervisor
from pipeline.retrieval.loading import load_retrieval
from pipeline.serving.compose import engine_supervisor as new_supervisor
from pipeline.serving.compose import open_client, open_llm
from pipeline.serving.interface import RagService
from pipeline.serving.local import LocalRag

SESSION_OVERRIDES = "session_overrides"
JAWIKI_PASSAGES, DEMO_PASSAGES = 5_555_583, 1_145
RETRIEVAL_FIELDS = (
    "profile", "cache_dir", "hub_mirror", "device", "corpus", "index", "embedding", "retrieval", "rerank",
)  # fmt: skip
LLM_FIELDS = ("profile", "cache_dir", "hub_mirror", "llm")


def server_settings() -> Settings:
    """The server-wide settings; an unreadable settings file is reported and skipped."""
    try:
        return load_settings()
    except SettingsError as exc:
        st.error(
            f"設定ファイル {settings_file_path()} に問題があるため、既定値と環境変数で動いています。\n\n{exc.ja}\n\n"
            "設定ページで保存すると、問題のあるファイルは別名で残したうえで書き直します。"
        )
        try:
            return load_settings(path="/dev/null")
        except SettingsError as env_exc:
            st.error(f"環境変数の設定にも問題があります。\n\n{env_exc.ja}")
            st.stop()


def session_settings(server: Settings | None = None) -> Settings:
    """The server settings with this session's own values on top."""
    server = server or server_settings()
    try:
        return with_session_values(server, st.session_state.get(SESSION_OVERRIDES, {}))
    except SettingsError as exc:
        st.session_state[SESSION_OVERRIDES] = {}
        st.warning(f"このセッションの設定が無効になったため、既定値に戻しました。\n\n{exc.ja}")
        return server


def resource_key(settings: Settings, fields: tuple[str, ...]) -> str:
    """A cache key of the server-wide settings that shape a resource: per-session values
    do not make new resources, and the API key is hashed."""
    data = settings.model_dump(mode="json", include=set(fields))
    for section, values in data.items():
        if isinstance(values, dict):
            data[section] = {k: v for k, v in values.items() if not is_session_field(f"{section}.{k}")}
    if "llm" in data:
        data["llm"]["api_key"] = hashlib.sha256(settings.llm.api_key.get_secret_value().encode()).hexdigest()
    return json.dumps(data, sort_keys=True)


@st.cache_resource(show_spinner=False)
def engine_supervisor() -> EngineSupervisor:
    """The one `vllm serve` supervisor of this process."""
    return new_supervisor(server_settings())


@st.cache_resource(show_spinner=False)
def _retrieval(key: str, _settings: Settings):
    # Dense retrieval (heavy imports, the model, perhaps an index to build) loads behind
    # BM25, which answers at once.
    return load_retrieval(_settings, dense_in_background=True)


@st.cache_resource(show_spinner=False)
def _llm(key: str, _settings: Settings, _retrieval):
    return open_llm(_settings, _retrieval, engine_supervisor())


@st.cache_resource(show_spinner=False)
def _client(key: str, _settings: Settings) -> RagService:
    return open_client(_settings)


def forget_service() -> None:
    """Drop the loaded corpus, indexes and LLM backend (after server settings changed)."""
    _retrieval.clear()
    _llm.clear()


def rag_service(settings: Settings) -> RagService | None:
    """The RAG API's client in API mode (``api.url`` set), else the service over this
    process's shared parts; None after showing why it is not available."""
    if settings.api.url:
        client = _client(resource_key(settings, ("api",)), settings)
        try:
            client.status()
        except RagError as exc:
            st.error(exc.ja)
            return None
        return client
    try:
        with st.spinner("コーパスと索引を読み込んでいます…（初回は索引の作成に数分かかることがあります）"):
            retrieval = _retrieval(resource_key(settings, RETRIEVAL_FIELDS), settings)
    except RagError as exc:
        st.error(exc.ja)
        if settings.profile == "jawiki":
            st.info(
                "全データ（jawiki）はまだ取得されていないようです。"
                "`RAG_PROFILE=jawiki python -m pipeline.download` で取得するか、"
                "設定ページでデモに切り替えるとすぐに試せます。"
            )
        return None
    return LocalRag(settings, retrieval, *_llm(resource_key(settings, LLM_FIELDS), settings, retrieval))


def memory_plan(settings: Settings, service: RagService | None) -> MemoryPlan | None:
    """The GPU memory plan for these (server) settings on this host: with what this
    process measured when the loaded search matches them, the running engine's share
    counted as free (a restart gives it back first). None without a GPU."""
    cards = gpus()
    if not cards:
        return None
    engine = engine_supervisor().status()
    running = engine.utilization or 0.0 if engine.state in ("starting", "ready") else 0.0
    loaded = service.retrieval if isinstance(service, LocalRag) else None
    if loaded is not None and loaded.settings.index.backend == settings.index.backend:
        return plan_memory(settings, cards, loaded.gpu_use, loaded.size, running)
    rows = JAWIKI_PASSAGES if settings.profile == "jawiki" else DEMO_PASSAGES
    return plan_memory(settings, cards, ProductGpuUse(0.0, 0.0, measured=False), rows, running)


@st.cache_data(ttl=10, show_spinner=False)
def _local_status(key: str, _service: LocalRag) -> ServiceStatus:
    return _service.status()


def service_status(service: RagService) -> ServiceStatus:
    """The service's status, asked at most every 10 seconds (it checks the LLM)."""
    if isinstance(service, LocalRag):
        return _local_status(resource_key(service.settings, RETRIEVAL_FIELDS + LLM_FIELDS), service)
    return service.status()
