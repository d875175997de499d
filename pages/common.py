"""What every page shares: the settings (server-wide and per session) and the heavy
objects, created once per process with ``st.cache_resource`` and shared by all sessions.

Server-wide settings come from the settings file and ``RAG_*`` variables and decide what
the process loads (corpus, index, models, engine). Per-session settings (retrieval mode,
top-k, nprobe, sampling, prompts) live in ``st.session_state`` and travel with each call.
Failures become Japanese messages on the page, never tracebacks.
"""

from __future__ import annotations

import hashlib
import json

import streamlit as st

from pipeline.api.client import RagApiClient
from pipeline.config import Settings, is_session_field, load_settings, settings_file_path, with_values
from pipeline.engine import AnswerEngine
from pipeline.errors import RagError, SettingsError
from pipeline.llm import LLMBackend, open_backend
from pipeline.retrieval import RetrievalService
from pipeline.supervisor import EngineSupervisor
from pipeline.tokens import load_token_counter

SESSION_OVERRIDES = "session_overrides"
DENSE_WAIT_S = 10.0
MODE_LABELS = {"full": "全データ（jawiki）", "demo": "デモ", "search-only": "検索のみ"}


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
    overrides = st.session_state.get(SESSION_OVERRIDES, {})
    try:
        return with_values(server, overrides) if overrides else server
    except SettingsError as exc:
        st.session_state[SESSION_OVERRIDES] = {}
        st.warning(f"このセッションの設定が無効になったため、既定値に戻しました。\n\n{exc.ja}")
        return server


RETRIEVAL_FIELDS = ("profile", "cache_dir", "hub_mirror", "device", "corpus", "index", "embedding", "retrieval")
LLM_FIELDS = ("profile", "cache_dir", "hub_mirror", "llm")


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
def _retrieval_service(key: str, _settings: Settings) -> RetrievalService:
    # A cached dense index loads within the wait; a first build goes on behind BM25.
    return RetrievalService.load(_settings, dense_in_background=DENSE_WAIT_S)


@st.cache_resource(show_spinner=False)
def _api_client(key: str, _settings: Settings) -> RagApiClient:
    return RagApiClient.from_settings(_settings)


def api_client(settings: Settings) -> RagApiClient | None:
    """In API mode (``api.url`` set), the client of that RAG API, once it answers."""
    if not settings.api.url:
        return None
    client = _api_client(resource_key(settings, ("api",)), settings)
    try:
        client.status()
    except RagError as exc:
        st.error(exc.ja)
        st.stop()
    return client


def retrieval_service(settings: Settings) -> RetrievalService | RagApiClient | None:
    """Where searches go: the shared retrieval service for these (server) settings, or
    the RAG API in API mode; None after showing why neither is available."""
    client = api_client(settings)
    if client is not None:
        return client
    try:
        with st.spinner("コーパスと索引を読み込んでいます…（初回は索引の作成に数分かかることがあります）"):
            return _retrieval_service(resource_key(settings, RETRIEVAL_FIELDS), settings)
    except RagError as exc:
        st.error(exc.ja)
        if settings.profile == "jawiki":
            st.info(
                "全データ（jawiki）はまだ取得されていないようです。"
                "`RAG_PROFILE=jawiki python -m pipeline.download` で取得するか、"
                "設定ページでデモに切り替えるとすぐに試せます。"
            )
        return None


def forget_retrieval() -> None:
    """Drop the loaded corpus and indexes (after the data profile changed)."""
    _retrieval_service.clear()


@st.cache_resource(show_spinner=False)
def engine_supervisor() -> EngineSupervisor:
    """The one `vllm serve` supervisor of this process."""
    return EngineSupervisor(server_settings().resolved_cache_dir / "logs")


@st.cache_resource(show_spinner=False)
def _llm_backend(key: str, _settings: Settings) -> LLMBackend:
    return open_backend(_settings, engine_supervisor())


def llm_backend(settings: Settings) -> LLMBackend:
    return _llm_backend(resource_key(settings, LLM_FIELDS), settings)


@st.cache_data(ttl=10, show_spinner=False)
def _backend_health(key: str, _settings: Settings) -> tuple[bool, str, str]:
    return llm_backend(_settings).health(_settings)


def llm_health(settings: Settings) -> tuple[bool, str, str]:
    """(ok, English, Japanese), checked at most every 10 seconds."""
    return _backend_health(resource_key(settings, LLM_FIELDS), settings)


@st.cache_resource(show_spinner=False)
def _token_counter(key: str, _settings: Settings):
    return load_token_counter(_settings)


def llm_summary(settings: Settings) -> tuple[str, bool, str]:
    """(where answers come from, whether it works, Japanese status) for page headers."""
    client = api_client(settings)
    if client is not None:
        status = client.status()
        working = status.llm_reachable or status.llm_backend == "none"
        state = (
            "稼働中"
            if status.llm_reachable
            else ("検索のみ" if status.llm_backend == "none" else "LLM に接続できません")
        )
        return f"RAG API {client.url}（LLM: {status.llm_backend}）", working, state
    backend = llm_backend(settings)
    ok, _, health_ja = llm_health(settings)
    return (backend.kind if backend.kind != "none" else "なし"), ok or backend.kind == "none", health_ja


def answer_engine(settings: Settings) -> AnswerEngine | RagApiClient | None:
    """What answers: an engine over the shared resources (``settings``, the session's,
    tune each answer), or the RAG API in API mode."""
    client = api_client(settings)
    if client is not None:
        return client
    retrieval = retrieval_service(settings)
    if retrieval is None:
        return None
    counter = _token_counter(resource_key(settings, LLM_FIELDS), settings)
    return AnswerEngine(retrieval, llm_backend(settings), counter, settings)
