"""What every page shares: the settings (server-wide and per session), the RAG service
and the administration of the server.

The process caches one thing heavy: its :class:`~pipeline.serving.runtime.RagRuntime`,
the owner of retrieval, the LLM backend and the `vllm serve` child (or, in API mode,
the RAG API's client instead). The runtime is closed when its cache entry is released
and when the process exits (Streamlit closes no cached resource at shutdown: Ctrl-C and
SIGTERM end ``streamlit run`` through a normal exit, so ``atexit`` runs), which stops
the engine's whole process group. Server-wide settings that change (an admin's save,
the settings file edited by hand) are applied by the runtime's reload at the next page
run; per-session settings (retrieval mode, top-k, nprobe, sampling, prompts) live in
``st.session_state`` and travel with each call. Failures become Japanese messages on
the page, never tracebacks.
"""

from __future__ import annotations

import atexit
import hashlib
import time
import weakref

import streamlit as st

from pipeline.core.errors import RagError, SettingsError
from pipeline.core.schema import ServiceStatus
from pipeline.serving.admin import LocalAdmin, ServerAdmin
from pipeline.serving.interface import RagService
from pipeline.serving.local import LocalRag
from pipeline.serving.metrics import MetricsEndpoint
from pipeline.serving.runtime import RagRuntime
from pipeline.settings.model import Settings
from pipeline.settings.sources import load_settings, settings_file_path, with_session_values

SESSION_OVERRIDES = "session_overrides"
NOT_APPLIED = "サーバーの設定を適用できなかったため、前の設定で動いています。\n\n"


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


@st.cache_resource(show_spinner=False, on_release=RagRuntime.close)
def _runtime(_settings: Settings) -> RagRuntime:
    # Dense retrieval (heavy imports, the model, perhaps an index to build) loads behind
    # BM25, which answers at once.
    runtime = RagRuntime(_settings, dense_in_background=True)
    atexit.register(runtime.close)
    return runtime


@st.cache_resource(show_spinner=False, on_release=MetricsEndpoint.close)
def _metrics_endpoint() -> MetricsEndpoint:
    """Prometheus's scrape of this process on ``metrics.port`` (pipeline/serving/metrics.py)."""
    return MetricsEndpoint()


def runtime(server: Settings) -> RagRuntime:
    """This process's runtime, brought up to date with the server settings (and, when
    the operator sets ``metrics.port``, the metrics it feeds served there)."""
    _metrics_endpoint().serve(server.metrics.host, server.metrics.port)
    current = _runtime(server)
    if current.settings != server:
        failed = current.failed
        if failed is not None and failed[0] == server:  # tried, and went back: not again at every run
            st.error(NOT_APPLIED + getattr(failed[1], "ja", str(failed[1])))
            return current
        try:
            with st.spinner("サーバーの設定が変わったため、必要な部分を読み込み直しています…"):
                current.reload(server)
        except RagError as exc:
            st.error(NOT_APPLIED + exc.ja)
    return current


# One client at a time: one made with earlier API settings is closed (max_entries=1).
@st.cache_resource(show_spinner=False, max_entries=1, on_release=lambda client: client.close())
def _client(key: str, _settings: Settings) -> RagService:
    from pipeline.serving.client import RagApiClient  # the openai SDK: only in API mode

    return RagApiClient.from_settings(_settings)


def _api_key(settings: Settings) -> str:
    """A cache key of the API settings a client is made with (the tokens hashed)."""
    return hashlib.sha256(settings.api.model_dump_json().encode()).hexdigest()


def rag_service(server: Settings) -> RagService | None:
    """The RAG API's client in API mode (``api.url`` set), else this process's service
    for these server settings; None after showing why it is not available."""
    if server.api.url:
        client = _client(_api_key(server), server)
        try:
            client.status()
        except RagError as exc:
            st.error(exc.ja)
            return None
        return client
    try:
        with st.spinner("コーパスと索引を読み込んでいます…（初回は索引の作成に数分かかることがあります）"):
            return runtime(server).service
    except RagError as exc:
        st.error(exc.ja)
        if server.profile == "jawiki":
            st.info(
                "全データ（jawiki）はまだ取得されていないようです。"
                "`RAG_PROFILE=jawiki python -m pipeline.download` で取得するか、"
                "設定ページでデモに切り替えるとすぐに試せます。"
            )
        return None


@st.cache_resource(show_spinner=False, max_entries=1, on_release=lambda admins: [admin.close() for admin in admins])
def _replica_admins(key: str, _settings: Settings) -> list[ServerAdmin]:
    from pipeline.serving.admin_client import AdminApiClient

    token = _settings.api.admin_token.get_secret_value()
    return [AdminApiClient(url, token, _settings) for url in _settings.api.admin_urls or [_settings.api.url]]


def server_admins(server: Settings) -> list[ServerAdmin]:
    """Who the settings page administers: this process, or each RAG API replica in API
    mode (``api.admin_urls``, else ``api.url``) with the admin token."""
    if server.api.url:
        return _replica_admins(_api_key(server), server)
    return [LocalAdmin(runtime(server))]


#: The last status of each local service (it checks the LLM over HTTP): a page asks
#: several times per run, and every session's runs ask again.
_statuses: weakref.WeakKeyDictionary[LocalRag, tuple[float, ServiceStatus]] = weakref.WeakKeyDictionary()
STATUS_MAX_AGE_S = 10.0


def service_status(service: RagService) -> ServiceStatus:
    """The service's status, asked at most every 10 seconds (it checks the LLM)."""
    if not isinstance(service, LocalRag):
        return service.status()  # the API client keeps its own for a short while
    last = _statuses.get(service)
    if last is None or time.monotonic() - last[0] > STATUS_MAX_AGE_S:
        last = _statuses[service] = (time.monotonic(), service.status())
    return last[1]
