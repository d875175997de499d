from pipeline.core.gpu import GpuMemory, ProductGpuUse, gpus
from pipeline.generation.memory_plan import plan_memory
from pipeline.retrieval.dense.footprint import search_gib
from pipeline.settings.sources import load_settings
from ui.gpu_memory import memory_summary

H100 = GpuMemory(0, "NVIDIA H100 80GB HBM3", 79.19, 66.3)
SETTINGS = load_settings(environ={}, path="/none.toml", overrides={"profile": "jawiki", "index": {"backend": "exact"}})


def test_the_summary_says_when_there_is_no_gpu():
    assert "GPU がありません" in memory_summary(None)
    for card in gpus():  # on a GPU host: each card with its memory
        assert card.total_gib > card.free_gib > 0 and card.name


def test_the_split_is_shown_in_gib_as_measured():
    """The figures of the H100 run (docs/benchmarks.md): E5 1.04 GiB and the exact
    search's 10.6 GiB measured in the process, the engine's weights and KV from its log."""
    plan = plan_memory(SETTINGS, [H100], ProductGpuUse(1.04, 10.6, measured=True), 5_555_583)
    text = memory_summary(plan, {"weights_gib": 24.29, "kv_cache_gib": 36.35, "kv_cache_tokens": 47632})
    assert "全体 79.2 GiB" in text and "埋め込みモデル 1.0 GiB" in text and "ベクトル検索 10.6 GiB（測定値）" in text
    assert "gpu_memory_utilization 0.78（auto で決めた値）= 61.8 GiB" in text
    assert "重み 24.3 GiB" in text and "KV キャッシュ 36.4 GiB（47,632 トークン）" in text and "⚠️" not in text


def test_a_value_that_cannot_fit_is_explained_and_a_running_engine_counts_as_free():
    too_much = load_settings(environ={}, path="/none.toml", overrides={
        "profile": "jawiki", "index": {"backend": "exact"}, "llm": {"gpu_memory_utilization": 0.9}})  # fmt: skip
    text = memory_summary(plan_memory(too_much, [H100], ProductGpuUse(1.04, 10.6, measured=True), 5_555_583))
    assert "⚠️" in text and "0.78 以下" in text
    busy = GpuMemory(0, "NVIDIA H100 80GB HBM3", 79.19, 4.5)  # the engine (0.78) is running
    assert plan_memory(SETTINGS, [busy], ProductGpuUse(1.04, 10.6, True), 5_555_583, running=0.78).utilization == 0.78
    assert search_gib("faiss-cpu", 5_555_583) == 0.0 and round(search_gib("exact", 5_555_583), 1) == 10.6
