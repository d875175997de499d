"""Settings: this session's retrieval and generation values, and the server-wide data
profile and LLM engine (saved to the settings file; the engine restarts to apply).

Server-wide changes are for admins only (``ui.auth``); others see them read-only with
the reason. Every server-wide change is recorded with who and when (``audit``)."""

from __future__ import annotations

import subprocess
import sys

import streamlit as st

from pipeline.core import audit
from pipeline.core.data_status import data_status
from pipeline.core.gpu import search_gib
from pipeline.core.settings import RETRIEVER_NAMES, SESSION_FIELDS
from pipeline.core.settings_files import (
    env_overridden,
    save_settings,
    session_changes,
    settings_file_path,
    settings_from_values,
)
from pipeline.generation.llm import resolve_backend
from ui.auth import admin_password_form, current_viewer, user_menu
from ui.labels import LLM_BACKEND_LABELS, PROFILE_LABELS, SEARCH_BACKEND_LABELS
from ui.memory import memory_summary
from ui.resources import (
    DEMO_PASSAGES,
    JAWIKI_PASSAGES,
    SESSION_OVERRIDES,
    engine_supervisor,
    forget_service,
    memory_plan,
    rag_service,
    server_settings,
    session_settings,
)
from ui.settings_form import ERRORS, apply, field, forget_widgets, submitted

SERVER_PATHS = [
    "profile", "index.backend", "llm.backend", "llm.base_url", "llm.model", "llm.prompt_format",
    "llm.gpu_memory_utilization",
    "llm.tensor_parallel_size", "llm.max_model_len", "llm.timeout_s", "llm.quantization", "llm.kv_cache_dtype",
    "llm.extra_args",
]  # fmt: skip
#: Measured through the product on one H100 80GB, beside E5 and the exact search (docs/benchmarks.md).
FP8_NOTE = (
    "FP8（重み・KV キャッシュとも）: H100 1 枚で E5・全件探索と同居させた実測では、重み 24.3 → 12.9 GiB、"
    "KV キャッシュ 47,632 → 127,280 トークン、1 人の生成 91 → 149 トークン/秒、最初の文字まで 88 → 65 ms、"
    "32 人同時で合計 1,039 → 1,452 トークン/秒。Hopper 以降の GPU が必要です。"
    "ELYZA-13B の FP8 での回答品質はここでは測っていません。"
)
PROMPT_FORMAT_LABELS = {
    "auto": "auto（Llama-2 系は llama2、ほかはチャットテンプレート）",
    "llama2": "llama2（ELYZA のプロンプト、/v1/completions）",
    "chat-template": "chat-template（モデルのテンプレート、/v1/chat/completions）",
}
#: What was actually run (docs/models.md): never a quality claim that was not measured.
MODELS_RUN_NOTE = (
    "実際に動かしたモデル: ELYZA-japanese-Llama-2-13b-instruct と同じ形のモデル（重みはランダムなダミー）を "
    "vLLM 0.26.0 で llama2 形式で（H100 で bf16・FP8、H200 2 枚でテンソル並列 2）。chat-template 形式は、"
    "チャットテンプレート付きの小さなダミーモデルを H100 上の実際の vLLM で確認しました。"
    "本物の重みでの回答品質はここでは測っていません（`python -m pipeline.eval --answers` で測れます）。"
)
UTILIZATION_CHOICES = ["auto", *(round(0.05 + 0.01 * step, 2) for step in range(95))]

server = server_settings()
settings = session_settings(server)
overridden = env_overridden()
viewer = current_viewer(server)
user_menu(viewer)
read_only = not viewer.admin

st.title("設定")
st.caption(
    "「このセッション」の値はこのブラウザのタブだけに効き、保存されません。"
    f"「サーバー全体」の値は設定ファイル（{settings_file_path()}）に保存され、このサーバーのすべての利用者に効きます。"
)

session_tab, server_tab = st.tabs(["このセッション", "サーバー全体"])

with session_tab:
    with st.form("session"):
        st.subheader("検索")
        left, right = st.columns(2)
        with left:
            field("retrieval.mode", settings, st.selectbox, options=["auto", *RETRIEVER_NAMES])
            field("retrieval.top_k", settings, st.number_input, step=1)
            field("retrieval.rrf_k", settings, st.number_input, step=1)
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
        saved_as_default = right.form_submit_button("サーバーの既定値として保存", disabled=read_only)

    if applied or saved_as_default:
        new = apply(server, submitted(SESSION_FIELDS))
        if new is not None:
            st.session_state[SESSION_OVERRIDES] = session_changes(new, server)
            if saved_as_default and viewer.admin:
                audit.record(
                    server, viewer.owner, "save session values as server defaults", audit.changed_paths(server, new)
                )
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
        forget_widgets(SESSION_FIELDS)
        st.rerun()

with server_tab:
    if read_only:
        st.info(viewer.read_only_ja, icon="🔒")
        admin_password_form(server)
    if overridden:
        st.info("環境変数で設定されている項目: " + ", ".join(sorted(overridden)))
    service = rag_service(server) if not server.api.url else None
    with st.form("server"):
        st.subheader("データ")
        field(
            "profile",
            server,
            st.radio,
            disabled=read_only,
            options=["demo", "jawiki"],
            horizontal=True,
            format_func=PROFILE_LABELS.__getitem__,
        )
        rows = JAWIKI_PASSAGES if server.profile == "jawiki" else DEMO_PASSAGES
        field("index.backend", server, st.selectbox, disabled=read_only, options=list(SEARCH_BACKEND_LABELS),
              format_func=lambda b: f"{SEARCH_BACKEND_LABELS[b]}（GPU {search_gib(b, rows):.1f} GiB）")  # fmt: skip
        st.subheader("LLM")
        st.caption(MODELS_RUN_NOTE)
        left, right = st.columns(2)
        with left:
            field(
                "llm.backend",
                server,
                st.selectbox,
                disabled=read_only,
                options=["auto", "local", "remote", "none"],
                format_func=LLM_BACKEND_LABELS.__getitem__,
            )
            field("llm.base_url", server, st.text_input, disabled=read_only, placeholder="http://127.0.0.1:8000/v1")
            field("llm.model", server, st.text_input, disabled=read_only)
            field("llm.prompt_format", server, st.selectbox, disabled=read_only, options=list(PROMPT_FORMAT_LABELS),
                  format_func=PROMPT_FORMAT_LABELS.__getitem__)  # fmt: skip
        with right:
            field("llm.timeout_s", server, st.number_input, disabled=read_only, step=10.0)
            field("llm.max_model_len", server, st.number_input, disabled=read_only, step=256)
        st.subheader("vLLM エンジン（local バックエンド）")
        left, right = st.columns(2)
        with left:
            field(
                "llm.gpu_memory_utilization", server, st.select_slider, disabled=read_only, options=UTILIZATION_CHOICES
            )
            field("llm.tensor_parallel_size", server, st.number_input, disabled=read_only, step=1)
            field("llm.extra_args", server, st.text_input, disabled=read_only, placeholder="--enforce-eager")
        with right:
            field("llm.quantization", server, st.selectbox, disabled=read_only, options=["none", "fp8"])
            field("llm.kv_cache_dtype", server, st.selectbox, disabled=read_only, options=["auto", "fp8"])
            st.caption(FP8_NOTE)
        st.markdown(memory_summary(memory_plan(server, service), engine_supervisor().status().memory))
        saved = st.form_submit_button("保存", type="primary", disabled=read_only)

    if saved and viewer.admin:
        new = apply(server, submitted(SERVER_PATHS))
        plan = memory_plan(new, service) if new is not None and resolve_backend(new) == "local" else None
        if plan is not None and not plan.fits:  # refused before anything is saved or restarted
            st.session_state[ERRORS] = {"llm.gpu_memory_utilization": plan.refusal()[1]}
        elif new is not None:
            audit.record(server, viewer.owner, "save server settings", audit.changed_paths(server, new))
            backup = save_settings(new)
            forget_service()
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
        if st.button("全データをダウンロード", icon="⬇️", disabled=read_only) and viewer.admin:
            audit.record(server, viewer.owner, "start jawiki download")
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

    if resolve_backend(server) == "local":
        st.subheader("vLLM エンジン")
        status = engine_supervisor().status()
        st.write(f"状態: {status.ja or status.state}")
        if st.button("エンジンを再起動して設定を適用", icon="🔁", disabled=read_only) and viewer.admin:
            audit.record(server, viewer.owner, "restart vLLM engine")
            supervisor = engine_supervisor()
            with st.status("vLLM を起動しています…", expanded=True) as box:
                supervisor.start(server)
                result = supervisor.wait_ready(server.llm.startup_timeout_s, progress=box.write)
                if result.state == "ready":
                    box.update(label="vLLM の準備ができました", state="complete")
                else:
                    box.update(label="vLLM を起動できませんでした", state="error")
                    st.error(result.ja)
    if st.button("サーバー全体の設定を既定値に戻す", disabled=read_only) and viewer.admin:
        defaults = settings_from_values({})
        audit.record(server, viewer.owner, "reset server settings", audit.changed_paths(server, defaults))
        save_settings(defaults)
        forget_service()
        forget_widgets(SERVER_PATHS)
        st.rerun()
