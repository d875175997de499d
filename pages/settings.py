"""Settings: this session's retrieval and generation values, and the server-wide data
profile and LLM engine, saved and applied through the server's administration
(``ServerAdmin``: this process, or each RAG API replica in API mode).

Server-wide changes are for admins only. A non-admin sees the fields read-only (and
Streamlit discards values sent for a disabled widget), while the action buttons stay
live: a click asks the administration, whose guard refuses it, says why and audits the
attempt (the check is on the server, not in the button). What only the operator may set
(the LLM's URL, vLLM's extra options, ...) is shown read-only to everyone.
"""

from __future__ import annotations

import shlex
from typing import Any

import streamlit as st

from pipeline.core.errors import RagError, SettingsError
from pipeline.core.schema import AdminState, SaveOutcome
from pipeline.core.secrets import shown_url
from pipeline.generation.supervisor import masked_command
from pipeline.retrieval.dense.footprint import search_gib
from pipeline.serving.admin import Actor, ServerAdmin
from pipeline.serving.runtime import DEMO_PASSAGES, JAWIKI_PASSAGES
from pipeline.settings.model import RETRIEVER_NAMES, SESSION_FIELDS, Settings
from pipeline.settings.sources import session_changes
from ui.auth import admin_password_form, current_viewer, user_menu
from ui.frame import enter_page
from ui.gpu_memory import memory_summary
from ui.labels import LLM_BACKEND_LABELS, PROFILE_LABELS, SEARCH_BACKEND_LABELS
from ui.resources import SESSION_OVERRIDES, server_admins, server_settings, session_settings
from ui.settings_form import ERRORS, apply, field, forget_widgets, labelled_choice, submitted

enter_page()

SERVER_PATHS = [
    "profile",
    "index.backend",
    "llm.backend",
    "llm.model",
    "llm.prompt_format",
    "llm.gpu_memory_utilization",
    "llm.tensor_parallel_size",
    "llm.max_model_len",
    "llm.timeout_s",
    "llm.quantization",
    "llm.kv_cache_dtype",
]
WIDGET_PATHS = {*SERVER_PATHS, *SESSION_FIELDS}
#: Shown, never saved from here: the operator's (docs/security.md).
OPERATOR_PATHS = ["llm.base_url", "llm.extra_args"]
OPERATOR_NOTE = "運用者だけが環境変数か設定ファイルで設定できます（ここでは表示のみ）。"
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
    "本物の重みでの回答品質はここでは測っていません（`python -m pipeline.evaluation --answers` で測れます）。"
)
UTILIZATION_CHOICES = ["auto", *(round(0.05 + 0.01 * step, 2) for step in range(95))]
ENGINE_CHANGES = {"restarting": "vLLM を新しい設定で再起動しています…", "starting": "vLLM を起動しています…"}


def on_each_server(admins: list[ServerAdmin], action) -> list[Any]:
    """Run an administrative action on each server; what each answered (None where it
    refused or failed, said on the page, and per replica in API mode)."""
    results = []
    for admin in admins:
        where = "" if len(admins) == 1 else f"{admin.label}: "
        try:
            results.append(action(admin))
        except SettingsError as exc:
            st.session_state[ERRORS] = {problem.field: problem.ja for problem in exc.problems}
            for problem in exc.problems:  # one that no widget shows (the settings file, corpus.build ...)
                if problem.field not in WIDGET_PATHS:
                    st.session_state.setdefault("settings_failures", []).append(where + problem.ja)
            results.append(None)
        except RagError as exc:  # AdminRefusedError included: the guard said no
            st.session_state.setdefault("settings_failures", []).append(where + exc.ja)
            results.append(None)
    return results


def engine_changes(admins: list[ServerAdmin], outcomes: list[SaveOutcome | None]) -> list[tuple[ServerAdmin, str]]:
    """The servers whose engine a save restarted or started, with what to say."""
    return [
        (admin, ENGINE_CHANGES[outcome.reload.engine])
        for admin, outcome in zip(admins, outcomes, strict=True)
        if outcome is not None and outcome.reload.engine in ENGINE_CHANGES
    ]


def follow_engine(changes: list[tuple[ServerAdmin, str]], timeout_s: float) -> None:
    """Show each (re)starting engine's progress until it is ready (or says why not)."""
    for admin, label in changes:
        with st.status(label, expanded=True) as box:
            engine = admin.wait_engine(timeout_s, box.write)
            ready = engine.state == "ready"
            box.update(
                label="vLLM の準備ができました" if ready else "vLLM を起動できませんでした",
                state="complete" if ready else "error",
            )
            if not ready:
                st.error(engine.ja)


def toast_saved(outcomes: list[SaveOutcome | None]) -> None:
    for outcome in outcomes:
        if outcome is not None:
            backup = f"（壊れていた設定ファイルは {outcome.backup} に残しました）" if outcome.backup else ""
            st.toast(f"保存しました（{outcome.settings_file}）。{backup}")


server = server_settings()
settings = session_settings(server)
viewer = current_viewer(server)
actor = Actor(viewer.owner, viewer.admin)
user_menu(viewer)
read_only = not viewer.admin
admins = server_admins(server)

st.title("設定")
st.caption(
    "「このセッション」の値はこのブラウザのタブだけに効き、保存されません。"
    "「サーバー全体」の値は設定ファイルに保存され、このサーバーのすべての利用者に効きます。"
)
for failure in st.session_state.pop("settings_failures", []):
    st.error(failure)

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
        saved_as_default = right.form_submit_button("サーバーの既定値として保存")

    if applied or saved_as_default:
        new = apply(server, submitted(SESSION_FIELDS))
        if new is not None and saved_as_default:
            outcomes = on_each_server(admins, lambda admin: admin.save(actor, session_changes(new, server)))
            if all(outcomes):
                st.session_state[SESSION_OVERRIDES] = {}
                forget_widgets(SESSION_FIELDS)
                toast_saved(outcomes)
        elif new is not None:
            st.session_state[SESSION_OVERRIDES] = session_changes(new, server)
            st.toast("このセッションに適用しました。")
        st.rerun()
    if st.button("このセッションの設定を既定値に戻す"):
        st.session_state[SESSION_OVERRIDES] = {}
        forget_widgets(SESSION_FIELDS)
        st.rerun()


def server_form(state: AdminState, shown: Settings, plan_summary: str) -> bool:
    """The server-wide fields; True when 保存 was pressed."""
    with st.form("server"):
        st.subheader("データ")
        profiles = ["demo", "jawiki", *(["custom"] if shown.corpus.build else [])]  # custom: a build is named
        field(
            "profile",
            shown,
            st.radio,
            disabled=read_only,
            options=profiles,
            horizontal=True,
            format_func=PROFILE_LABELS.__getitem__,
        )
        rows = state.passages or (DEMO_PASSAGES if shown.demo else JAWIKI_PASSAGES)
        field(
            "index.backend",
            shown,
            st.selectbox,
            disabled=read_only,
            options=list(SEARCH_BACKEND_LABELS),
            format_func=lambda b: f"{SEARCH_BACKEND_LABELS[b]}（GPU {search_gib(b, rows):.1f} GiB）",
        )
        st.subheader("LLM")
        st.caption(MODELS_RUN_NOTE)
        left, right = st.columns(2)
        with left:
            labelled_choice("llm.backend", shown, LLM_BACKEND_LABELS, disabled=read_only)
            url = shown_url(shown.llm.base_url) or ""  # its password hidden
            st.text_input("OpenAI 互換 API の URL（/v1 で終わる）", url, disabled=True, help=OPERATOR_NOTE)
            field("llm.model", shown, st.selectbox, disabled=read_only, options=state.allowed_models)
            labelled_choice("llm.prompt_format", shown, PROMPT_FORMAT_LABELS, disabled=read_only)
        with right:
            field("llm.timeout_s", shown, st.number_input, disabled=read_only, step=10.0)
            field("llm.max_model_len", shown, st.number_input, disabled=read_only, step=256)
        st.subheader("vLLM エンジン（local バックエンド）")
        left, right = st.columns(2)
        with left:
            field(
                "llm.gpu_memory_utilization", shown, st.select_slider, disabled=read_only, options=UTILIZATION_CHOICES
            )
            field("llm.tensor_parallel_size", shown, st.number_input, disabled=read_only, step=1)
            extra = shown.llm.extra_args  # validated to split as a command line
            st.text_input("vLLM の追加オプション", masked_command(shlex.split(extra)), disabled=True,
                          help=OPERATOR_NOTE)  # fmt: skip
        with right:
            field("llm.quantization", shown, st.selectbox, disabled=read_only, options=["none", "fp8"])
            field("llm.kv_cache_dtype", shown, st.selectbox, disabled=read_only, options=["auto", "fp8"])
            st.caption(FP8_NOTE)
        st.markdown(plan_summary)
        return st.form_submit_button("保存", type="primary")


with server_tab:
    if read_only:
        st.info(viewer.read_only_ja, icon="🔒")
        admin_password_form(server, viewer)
    try:
        state = admins[0].state()
    except RagError as exc:
        st.error(exc.ja)
        st.stop()
    shown = Settings.model_validate(state.settings)
    if len(admins) > 1:
        st.info(
            "API モード: 保存や再起動は次の各レプリカに行います。表示している値は最初のレプリカのものです。\n\n"
            + "\n".join(f"- {admin.label}" for admin in admins)
        )
    st.caption(f"設定ファイル: {state.settings_file}")
    if state.env_overridden:
        st.info("環境変数で設定されている項目（保存してもそちらが優先されます）: " + ", ".join(state.env_overridden))
    if server.api.url and not server.api.admin_token.get_secret_value():
        st.warning(
            "この UI には RAG API の管理トークン（api.admin_token / RAG_API_ADMIN_TOKEN）が設定されていないため、"
            "API サーバーの設定はここから変更できません。"
        )
    try:
        plan = admins[0].memory_plan()
    except RagError as exc:
        plan = None
        st.warning(exc.ja)
    if server_form(state, shown, memory_summary(plan, state.engine.memory)):
        outcomes = on_each_server(admins, lambda admin: admin.save(actor, submitted(SERVER_PATHS)))
        if all(outcomes):
            st.session_state.pop(ERRORS, None)
            follow_engine(engine_changes(admins, outcomes), shown.llm.startup_timeout_s)
            forget_widgets(SERVER_PATHS)
            toast_saved(outcomes)
        st.rerun()

    st.subheader("データの状態")
    status_rows = [
        {
            "項目": item.label_ja,
            "場所": item.location,
            "状態": "取得済み" if item.present else "未取得",
            "ディスク上のサイズ": f"{item.size_bytes / 2**30:.2f} GiB" if item.present else "-",
        }
        for item in state.data
    ]
    st.dataframe(status_rows, hide_index=True)
    if shown.profile == "jawiki" and not all(item.present for item in state.data):
        st.caption("全データはコーパス約 2.2 GB、索引と E5-large を合わせて数 GB です。")
        if st.button("全データをダウンロード", icon="⬇️"):
            on_each_server(admins, lambda admin: admin.start_download(actor))

        @st.fragment(run_every=3)
        def download_log() -> None:
            try:
                lines = admins[0].state().download_log
            except RagError as exc:  # the replica is down, or new API settings replaced its client
                st.caption(exc.ja)
                return
            if lines:
                st.code("\n".join(lines), language=None)

        download_log()

    if state.backend == "local":
        st.subheader("vLLM エンジン")
        st.write(f"状態: {state.engine.ja or state.engine.state}")
        if st.button("エンジンを再起動して設定を適用", icon="🔁"):
            restarted = on_each_server(admins, lambda admin: admin.restart_engine(actor))
            changes = [(admin, ENGINE_CHANGES["restarting"]) for admin, r in zip(admins, restarted, strict=True) if r]
            follow_engine(changes, shown.llm.startup_timeout_s)
    if st.button("サーバー全体の設定を既定値に戻す"):
        outcomes = on_each_server(admins, lambda admin: admin.reset(actor))
        if all(outcomes):
            forget_widgets(SERVER_PATHS)
            toast_saved(outcomes)
        st.rerun()
