"""Status: what the service has loaded, the LLM's health, GPU memory, where history is kept,
cache and versions."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import streamlit as st

from pipeline.core.gpu import gpus
from ui.auth import current_viewer
from ui.frame import enter_page
from ui.history.chat import history_warning
from ui.history.sidebar import ANONYMOUS_NOTE
from ui.history.store import conversation_store
from ui.markdown import escape_markdown
from ui.resources import rag_service, server_settings, service_status
from ui.widgets import show_notices

enter_page()

settings = server_settings()
st.title("状態")
service = rag_service(settings)
if service is None:
    st.stop()
status = service_status(service)

if status.api_url:
    st.subheader("RAG API（API モード）")
    st.info(f"検索と生成は RAG API（{status.api_url}）が行っています。以下はその API の状態です。")
st.write(f"全体の状態: {status.state}")

retrieval = status.retrieval
if retrieval is not None:
    st.subheader("検索")
    rows = {
        "プロファイル": settings.profile,
        "コーパス": retrieval.corpus,
        "パッセージ数": f"{retrieval.passages:,}",
        "使える検索方式": ", ".join(retrieval.modes) + f"（auto = {retrieval.auto_mode}）",
        "ベクトル索引": f"{retrieval.vector_search} ・ {retrieval.vectors:,} 本 ・ {retrieval.dimension} 次元"
        if retrieval.vector_search
        else "なし",
        "nprobe": str(retrieval.nprobe) if retrieval.nprobe is not None else "-（全件探索）",
        "埋め込みモデル": f"{retrieval.embedding_model}（{retrieval.embedding_device}）"
        if retrieval.embedding_model
        else "なし",
        "読み込み時間": f"{retrieval.load_seconds:.1f} 秒",
    }
    build = retrieval.build
    if build is not None:  # python -m pipeline.build made this corpus
        rows["ダンプの日付"] = build.dump_date or "不明"
        rows["ビルド"] = (
            f"{build.passages:,} パッセージ"
            + (f"（{build.pages:,} ページから）" if build.pages else "")
            + (f" ・ 埋め込み {build.model}" if build.model else "")
            + f" ・ 完了 {build.finished or '-'}"
        )
    st.table({"項目": list(rows), "値": list(rows.values())})
show_notices(status.notices)

llm = status.llm
if llm is not None:
    st.subheader("LLM")
    st.table(
        {
            "項目": ["バックエンド", "モデル", "URL", "状態"],
            "値": [llm.backend, llm.model or "-", llm.url or "-", llm.detail_ja or "-"],
        }
    )
    if llm.engine_state == "starting":
        with st.status("vLLM を起動しています…", expanded=True):
            st.code("\n".join(llm.log_tail[-10:]), language=None)
    elif llm.log_tail:
        with st.expander("vLLM のログ（末尾）"):
            st.code("\n".join(llm.log_tail), language=None)

st.subheader("GPU（この UI サーバー）" if status.api_url else "GPU")
devices = gpus()
if devices:
    for device in devices:
        st.progress(
            min(device.used_gib / device.total_gib, 1.0),
            text=f"GPU {device.index}: {device.name} ・ 使用中 {device.used_gib:.1f} / {device.total_gib:.1f} GiB",
        )
else:
    st.write("GPU はありません（CPU で動いています）。")

st.subheader("会話履歴")
viewer = current_viewer(settings)
store = conversation_store(settings, viewer)
if not viewer.keeps_history:
    st.write(ANONYMOUS_NOTE)
elif store is not None:
    st.write(f"保存先: {store.engine.dialect.name} ・ {escape_markdown(store.location)}")
else:
    history_warning()

st.subheader("キャッシュ")
cache = settings.resolved_cache_dir


@st.cache_data(ttl=60, show_spinner=False)
def folder_sizes(root: str) -> dict[str, float]:
    sizes = {}
    for child in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        files = [child] if child.is_file() else [f for f in child.rglob("*") if f.is_file()]
        sizes[child.name] = sum(f.stat().st_size for f in files) / 2**30
    return sizes


sizes = folder_sizes(str(cache))
st.write(f"{cache}（合計 {sum(sizes.values()):.2f} GiB）")
if sizes:
    st.table({"フォルダ": list(sizes), "サイズ (GiB)": [f"{v:.3f}" for v in sizes.values()]})

st.subheader("バージョン")
packages = [
    "streamlit",
    "llama-index-core",
    "faiss-cpu",
    "faiss-gpu",
    "torch",
    "transformers",
    "sentence-transformers",
    "datasets",
    "bm25s",
    "vllm",
]
versions = {"python": platform.python_version()}
for package in packages:
    try:
        versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
        continue
st.table({"パッケージ": list(versions), "バージョン": list(versions.values())})
