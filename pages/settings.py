"""Settings: this session's retrieval and generation values, and the server-wide data
profile and LLM engine (saved to the settings file; the engine restarts to apply)."""

from __future__ import annotations

import subprocess
import sys

import annotated_types
import streamlit as st

from pages.common import (
    SESSION_OVERRIDES,
    engine_supervisor,
    forget_retrieval,
    llm_backend,
    server_settings,
    session_settings,
)
from pipeline.config import (
    Settings,
    env_overridden,
    field_info,
    save_settings,
    settings_file_path,
    settings_from_values,
    with_values,
)
from pipeline.download import data_status
from pipeline.errors import SettingsError
from pipeline.gpu import gpus, search_gib, utilization_help

ERRORS = "settings_errors"
JAWIKI_PASSAGES, DEMO_PASSAGES = 5_555_583, 1_145
BACKEND_LABELS = {"faiss-cpu": "IVF-PQ を CPU で（シードと同じ）", "faiss-gpu": "IVF-PQ を GPU で",
                  "exact": "全件探索を GPU で（fp16、近似なし）"}  # fmt: skip
WIDGET_PREFIX = "setting:"
SESSION_PATHS = [
    "retrieval.mode", "retrieval.top_k", "index.nprobe", "retrieval.hybrid_candidates", "generation.do_sample",
    "generation.temperature", "generation.top_p", "generation.top_k", "generation.max_new_tokens",
    "generation.repetition_penalty", "generation.history_tokens", "prompts.system", "prompts.qa", "prompts.condense",
]  # fmt: skip
SERVER_PATHS = [
    "profile", "index.backend", "llm.backend", "llm.base_url", "llm.model", "llm.gpu_memory_utilization",
    "llm.tensor_parallel_size", "llm.max_model_len", "llm.timeout_s",
]  # fmt: skip

server = server_settings()
settings = session_settings(server)
errors: dict[str, str] = st.session_state.pop(ERRORS, {})
overridden = env_overridden()

st.title("設定")
st.caption(
    "「このセッション」の値はこのブラウザのタブだけに効き、保存されません。"
    f"「サーバー全体」の値は設定ファイル（{settings_file_path()}）に保存され、このサーバーのすべての利用者に効きます。"
)


def value_of(current: Settings, path: str):
    section, _, name = path.rpartition(".")
    return getattr(getattr(current, section) if section else current, name)


def field(path: str, current: Settings, widget, **options):
    """One setting's widget, labelled and bounded from the settings schema, with its
    error (from the last submission) right beside it."""
    info = field_info(path)
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            options.setdefault("min_value", meta.ge)
        elif isinstance(meta, annotated_types.Le):
            options.setdefault("max_value", meta.le)
    if widget not in (st.number_input, st.slider):
        options.pop("min_value", None)
        options.pop("max_value", None)
    help_text = info.description or None
    if path in overridden:
        help_text = f"{help_text or ''} 環境変数が設定されているため、保存してもそちらが優先されます。".strip()
    key = WIDGET_PREFIX + path
    if key not in st.session_state:
        st.session_state[key] = value_of(current, path)
    result = widget(info.title or path, key=key, help=help_text, **options)
    if path in errors:
        st.error(errors[path])
    return result


def apply(base: Settings, values: dict) -> Settings | None:
    """Validated new settings, or None after keeping the errors for the next run."""
    try:
        return with_values(base, values)
    except SettingsError as exc:
        st.session_state[ERRORS] = {problem.field: problem.ja for problem in exc.problems}
        return None


def forget_widgets(paths) -> None:
    for path in paths:
        st.session_state.pop(WIDGET_PREFIX + path, None)


session_tab, server_tab = st.tabs(["このセッション", "サーバー全体"])

with session_tab:
    with st.form("session"):
        st.subheader("検索")
        left, right = st.columns(2)
        with left:
            field("retrieval.mode", settings, st.selectbox, options=["auto", "bm25", "dense", "hybrid"])
            field("retrieval.top_k", settings, st.number_input, step=1)
        with right:
            field("index.nprobe", settings, st.number_input, step=1)
            field("retrieval.hybrid_candidates", settings, st.number_input, step=1)
        st.subheader("生成")
        left, right = st.columns(2)
        with left:
            field("generation.do_sample", settings, st.checkbox)
            field("generation.temperature", settings, st.slider, step=0.05)
            field("generation.top_p", settings, st.slider, min_value=0.05, step=0.05)
            field("generation.top_k", settings, st.number_input, step=1)
        with right:
            field("generation.max_new_tokens", settings, st.number_input, step=64)
            field("generation.repetition_penalty", settings, st.slider, step=0.05)
            field("generation.history_tokens", settings, st.number_input, step=128)
        st.subheader("プロンプト")
        field("prompts.system", settings, st.text_area, height=140)
        field("prompts.qa", settings, st.text_area, height=140)
        field("prompts.condense", settings, st.text_area, height=120)
        left, right = st.columns(2)
        applied = left.form_submit_button("このセッションに適用", type="primary")
        saved_as_default = right.form_submit_button("サーバーの既定値として保存")

    if applied or saved_as_default:
        values = {p: st.session_state[WIDGET_PREFIX + p] for p in SESSION_PATHS}
        new = apply(server, values)
        if new is not None:
            st.session_state[SESSION_OVERRIDES] = {p: v for p, v in values.items() if value_of(server, p) != v}
            if saved_as_default:
                backup = save_settings(new)
                st.session_state[SESSION_OVERRIDES] = {}
                st.toast(
                    "サーバーの既定値として保存しました。"
                    + (f"（壊れていた設定ファイルは {backup} に残しました）" if backup else "")
                )
            else:
                st.toast("このセッションに適用しました。")
        st.rerun()
    if st.button("このセッションの設定を既定値に戻す"):
        st.session_state[SESSION_OVERRIDES] = {}
        forget_widgets(SESSION_PATHS)
        st.rerun()

with server_tab:
    if overridden:
        st.info("環境変数で設定されている項目: " + ", ".join(sorted(overridden)))
    devices = gpus()
    with st.form("server"):
        st.subheader("データ")
        field(
            "profile",
            server,
            st.radio,
            options=["demo", "jawiki"],
            horizontal=True,
            format_func=lambda p: {"demo": "デモ（同梱の 1,145 段落）", "jawiki": "全データ（jawiki 5.5M パッセージ）"}[
                p
            ],
        )
        rows = JAWIKI_PASSAGES if server.profile == "jawiki" else DEMO_PASSAGES
        field("index.backend", server, st.selectbox, options=["faiss-cpu", "faiss-gpu", "exact"],
              format_func=lambda b: f"{BACKEND_LABELS[b]}（GPU メモリ {search_gib(b, rows):.1f} GiB）")  # fmt: skip
        st.subheader("LLM")
        left, right = st.columns(2)
        with left:
            field(
                "llm.backend",
                server,
                st.selectbox,
                options=["auto", "local", "remote", "none"],
                format_func=lambda b: {
                    "auto": "auto（自動）",
                    "local": "local（この GPU で vLLM）",
                    "remote": "remote（URL を指定）",
                    "none": "none（検索のみ）",
                }[b],
            )
            field("llm.base_url", server, st.text_input, placeholder="http://127.0.0.1:8000/v1")
            field("llm.model", server, st.text_input)
        with right:
            utilization = field("llm.gpu_memory_utilization", server, st.slider, min_value=0.05, step=0.01)
            field("llm.tensor_parallel_size", server, st.number_input, step=1)
            field("llm.max_model_len", server, st.number_input, step=256)
            field("llm.timeout_s", server, st.number_input, step=10.0)
        backend = st.session_state[WIDGET_PREFIX + "index.backend"]
        st.caption(utilization_help(utilization, server.llm.tensor_parallel_size, devices, backend, rows))
        saved = st.form_submit_button("保存", type="primary")

    if saved:
        new = apply(server, {p: st.session_state[WIDGET_PREFIX + p] for p in SERVER_PATHS})
        if new is not None:
            backup = save_settings(new)
            if (new.profile, new.index.backend) != (server.profile, server.index.backend):
                forget_retrieval()
            st.toast("保存しました。" + (f"（壊れていた設定ファイルは {backup} に残しました）" if backup else ""))
        st.rerun()

    st.subheader("データの状態")
    status_rows = [
        {"項目": item.label_ja, "場所": item.location, "状態": "取得済み" if item.present else "未取得",
         "ディスク上のサイズ": f"{item.size_bytes / 2**30:.2f} GiB" if item.present else "-"}
        for item in data_status(server)
    ]  # fmt: skip
    st.dataframe(status_rows, hide_index=True)
    if server.profile == "jawiki" and not all(r["状態"] == "取得済み" for r in status_rows):
        st.caption("全データはコーパス約 2.2 GB、索引と E5-large を合わせて数 GB です。")
        log = server.resolved_cache_dir / "logs" / "download.log"
        if st.button("全データをダウンロード", icon="⬇️"):
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w", encoding="utf-8") as out:
                subprocess.Popen(
                    [sys.executable, "-m", "pipeline.download", "--profile", "jawiki"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

        @st.fragment(run_every=3)
        def download_log() -> None:
            if log.exists():
                st.code(
                    "\n".join(log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()[-8:]),
                    language=None,
                )

        download_log()

    backend = llm_backend(server)
    if backend.kind == "local":
        st.subheader("vLLM エンジン")
        status = engine_supervisor().status()
        st.write(f"状態: {status.ja or status.state}")
        if st.button("エンジンを再起動して設定を適用", icon="🔁"):
            supervisor = engine_supervisor()
            with st.status("vLLM を起動しています…", expanded=True) as box:
                supervisor.start(server)
                result = supervisor.wait_ready(server.llm.startup_timeout_s, progress=box.write)
                if result.state == "ready":
                    box.update(label="vLLM の準備ができました", state="complete")
                else:
                    box.update(label="vLLM を起動できませんでした", state="error")
                    st.error(result.ja)
    if st.button("サーバー全体の設定を既定値に戻す"):
        save_settings(settings_from_values({}))
        forget_retrieval()
        forget_widgets(SERVER_PATHS)
        st.rerun()
