"""What every page shares: settings and the process-wide retrieval service.

Heavy objects are created once per process with ``st.cache_resource`` and shared by all
sessions; a failure becomes a Japanese message instead of a traceback.
"""

from __future__ import annotations

import streamlit as st

from pipeline.config import Settings, load_settings
from pipeline.errors import RagError
from pipeline.retrieval import RetrievalService


@st.cache_resource(show_spinner=False)
def _retrieval_service(settings_json: str) -> RetrievalService:
    return RetrievalService.load(Settings.model_validate_json(settings_json))


def settings() -> Settings | None:
    try:
        return load_settings()
    except RagError as exc:
        st.error(f"設定に誤りがあります。\n\n{exc.ja}")
        return None


def retrieval_service(current: Settings) -> RetrievalService | None:
    """The shared retrieval service for these settings, or None after showing why not."""
    try:
        with st.spinner("コーパスと索引を読み込んでいます…（初回は索引の作成に数分かかることがあります）"):
            return _retrieval_service(current.model_dump_json())
    except RagError as exc:
        st.error(exc.ja)
        return None
