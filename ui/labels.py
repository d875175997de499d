"""Japanese labels for the product's codes (answer modes, timings, backends)."""

from __future__ import annotations

from pipeline.core.schema import CorpusBuild

MODE_LABELS = {"full": "全データ（jawiki）", "demo": "デモ", "search-only": "検索のみ"}

#: Notices that mean something went wrong (a warning), as opposed to information.
WARNING_CODES = {
    "llm_unreachable",
    "llm_timeout",
    "llm_error",
    "llm_interrupted",
    "llm_malformed",
    "invalid_citation",
    "prompt_too_long",
    "llm_unavailable",
    "api_interrupted",
}

#: (timing key, label, format) in the order an answer's caption shows them.
TIMING_LABELS = (
    ("embed", "埋め込み", "{:.0f} ms"),
    ("search", "検索", "{:.0f} ms"),
    ("fetch", "取得", "{:.1f} ms"),
    ("ttft", "最初のトークン", "{:.0f} ms"),
    ("tokens_per_s", "生成", "{:.1f} トークン/秒"),
)

SEARCH_BACKEND_LABELS = {
    "faiss-cpu": "IVF-PQ を CPU で（シードと同じ）",
    "faiss-gpu": "IVF-PQ を GPU で",
    "exact": "全件探索を GPU で（fp16、近似なし）",
    "exact-int8": "全件探索を GPU で（int8 で絞り込み、元のベクトルで採点し直し）",
}

LLM_BACKEND_LABELS = {
    "auto": "auto（自動）",
    "local": "local（この GPU で vLLM）",
    "remote": "remote（URL を指定）",
    "none": "none（検索のみ）",
}

PROFILE_LABELS = {
    "demo": "デモ（同梱の 1,145 段落）",
    "jawiki": "全データ（jawiki 5.5M パッセージ）",
    "custom": "ビルドしたコーパス（python -m pipeline.build）",
}


def corpus_label(profile: str, build: CorpusBuild | None) -> str:
    """The corpus in a few words, with its dump's date when it was built from one."""
    if build is not None:
        return f"ビルドしたコーパス（{build.dump_date or '日付不明'} のダンプ）"
    return {"demo": "デモ（JSQuAD 1,145 段落）", "jawiki": "全データ（jawiki 2023-04-03）"}.get(profile, profile)
