"""Status: what this server has loaded, the LLM's health, GPU memory, cache and versions."""

from __future__ import annotations

import platform
from importlib import metadata

import streamlit as st

from pages.common import api_client, engine_supervisor, llm_backend, llm_health, retrieval_service, server_settings
from pages.render import show_notices
from pipeline.gpu import gpus

settings = server_settings()
st.title("状態")

client = api_client(settings)
if client is not None:
    remote = client.status()
    st.subheader("RAG API（API モード）")
    rows = {
        "URL": client.url,
        "状態": remote.status,
        "パッセージ数": f"{remote.passages:,}",
        "使える検索方式": ", ".join(remote.modes) + f"（auto = {remote.auto_mode}）",
        "埋め込みモデル": remote.embedding or "なし",
        "LLM": f"{remote.llm_backend}（{'稼働中' if remote.llm_reachable else '接続できません'}）",
    }
    st.table({"項目": list(rows), "値": list(rows.values())})
    st.caption("検索と生成はこの API が行っています。API 側の詳しい状態は API サーバーの /readyz で確認できます。")

service = retrieval_service(settings) if client is None else None
if service is not None:
    st.subheader("検索")
    store = service.vector_index.vector_store if service.vector_index is not None else None
    rows = {
        "プロファイル": settings.profile,
        "コーパス": service.passages.name,
        "パッセージ数": f"{len(service.passages):,}",
        "使える検索方式": ", ".join(service.modes) + f"（auto = {service.auto_mode}）",
        "ベクトル索引": f"{store.client.describe()} ・ {store.client.ntotal:,} 本 ・ {store.client.d} 次元"
        if store
        else "なし",
        "nprobe": str(settings.index.nprobe) if store is not None and store.is_ivf else "-（全件探索）",
        "埋め込みモデル": f"{service.embedding.name}（{service.embedding.device}）" if service.embedding else "なし",
        "読み込み時間": f"{service.load_seconds:.1f} 秒",
    }
    st.table({"項目": list(rows), "値": list(rows.values())})
    show_notices(service.notices)

backend = llm_backend(settings) if client is None else None
if backend is not None:
    st.subheader("LLM")
    ok, _, health_ja = llm_health(settings)
    st.table(
        {
            "項目": ["バックエンド", "モデル", "URL", "状態"],
            "値": [
                backend.kind,
                settings.llm.model if backend.kind != "none" else "-",
                backend.base_url or "-",
                health_ja,
            ],
        }
    )
if backend is not None and backend.kind == "local":
    engine = engine_supervisor().status()
    if engine.state == "starting":
        with st.status("vLLM を起動しています…", expanded=True):
            st.code("\n".join(engine.log_tail[-10:]), language=None)
    elif engine.log_tail:
        with st.expander("vLLM のログ（末尾）"):
            st.code("\n".join(engine.log_tail), language=None)

st.subheader("GPU")
devices = gpus()
if devices:
    for device in devices:
        st.progress(
            min(device.used_gib / device.total_gib, 1.0),
            text=f"GPU {device.index}: {device.name} ・ 使用中 {device.used_gib:.1f} / {device.total_gib:.1f} GiB",
        )
else:
    st.write("GPU はありません（CPU で動いています）。")

st.subheader("キャッシュ")
cache = settings.resolved_cache_dir


@st.cache_data(ttl=60, show_spinner=False)
def folder_sizes(root: str) -> dict[str, float]:
    from pathlib import Path

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
packages = ["streamlit", "llama-index-core", "faiss-cpu", "faiss-gpu", "torch", "transformers",
            "sentence-transformers", "datasets", "bm25s", "vllm"]  # fmt: skip
versions = {"python": platform.python_version()}
for package in packages:
    try:
        versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
        continue
st.table({"パッケージ": list(versions), "バージョン": list(versions.values())})
