"""The GPU memory plan: vLLM's share beside the query encoder and the vector search, with
the H100 figures measured here (docs/benchmarks.md)."""

import pytest

from pipeline.core.gpu import GpuMemory, ProductGpuUse
from pipeline.generation.memory_plan import AUTO_CAP, plan_memory
from pipeline.settings.sources import load_settings

H100 = 79.19
ROWS = 5_555_583


def settings(**llm):
    return load_settings(environ={}, path="/none.toml",
                         overrides={"profile": "jawiki", "index": {"backend": "exact"}, "llm": llm})  # fmt: skip


def test_auto_sizes_the_engine_from_what_is_free_after_the_search_index_loaded():
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", H100, 66.3)  # 10.6 GiB of vectors + E5 already there
    plan = plan_memory(settings(), [card], ProductGpuUse(1.1, 10.6, measured=True), ROWS)
    # reserve: encoder activations 0.3 + one 64-query batch of fp16 scores over 5.5M rows 0.66 + margin 3.0
    assert round(plan.reserve_gib, 2) == 3.96
    assert plan.max_utilization == 0.78 and plan.utilization == 0.78 and plan.fits and plan.requested is None
    assert round(plan.engine_gib, 1) == 61.8  # the H100 host gave 0.78 too, and held 32 users


def test_tensor_parallel_keeps_room_for_communication_buffers_on_every_card():
    """Seen on the H200 host: TP 2 at the TP 1 share died out of memory at 32 users."""
    cards = [GpuMemory(0, "NVIDIA H100 80GB HBM3", H100, 66.3), GpuMemory(1, "NVIDIA H100 80GB HBM3", H100, 78.6)]
    product = ProductGpuUse(1.1, 10.6, measured=True)
    single = plan_memory(settings(), cards, product, ROWS)
    parallel = plan_memory(settings(tensor_parallel_size=2), cards, product, ROWS)
    assert round(parallel.reserve_gib - single.reserve_gib, 2) == 1.5
    assert parallel.utilization == 0.76 < single.utilization == 0.78  # (66.3 - 3.96 - 1.5) / 79.19


def test_before_loading_the_plan_counts_what_will_be_loaded():
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", H100, 78.6)
    plan = plan_memory(settings(), [card], ProductGpuUse(0.0, 0.0, measured=False), ROWS)
    assert 10.5 < plan.reserve_gib - 3.96 - 1.8 < 10.7  # + E5 and its CUDA context, + the vectors
    assert plan.utilization == plan.max_utilization == 0.78  # the same share as once loaded


def test_an_empty_card_gets_the_cap_and_a_value_set_by_hand_is_checked():
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", H100, 78.6)
    cpu_search = load_settings(environ={}, path="/none.toml", overrides={"device": "cpu"})
    assert plan_memory(cpu_search, [card], ProductGpuUse(0.0, 0.0, measured=False), 1145).utilization == AUTO_CAP
    too_much = plan_memory(settings(gpu_memory_utilization=0.9), [GpuMemory(0, "H100", H100, 66.3)],
                           ProductGpuUse(1.1, 10.6, measured=True), ROWS)  # fmt: skip
    assert not too_much.fits
    en, ja = too_much.refusal()
    assert "gpu_memory_utilization を 0.78 以下にする" in ja and "faiss-cpu" in ja and "set it to 0.78" in en
    assert plan_memory(settings(gpu_memory_utilization=0.78), [GpuMemory(0, "H100", H100, 66.3)],
                       ProductGpuUse(1.1, 10.6, measured=True), ROWS).fits  # fmt: skip


def test_a_card_another_engine_fills_is_refused_without_proposing_a_share():
    """As on the H100 host with a second engine starting: 1.9 of 79.2 GiB free."""
    crowded = plan_memory(settings(gpu_memory_utilization=0.5), [GpuMemory(0, "H100", H100, 1.9)],
                          ProductGpuUse(1.1, 10.6, measured=True), ROWS)  # fmt: skip
    assert not crowded.fits
    en, ja = crowded.refusal()
    assert "0.00" not in en + ja and "-0." not in en + ja
    # 79.2 - 1.9 GiB in use, of which E5 and the vectors of this process hold 11.7
    assert "vLLM を置く余地がありません" in ja and "65.6 GiB" in ja and "stop the other processes" in en


def test_tensor_parallel_checks_every_card_it_uses():
    busy_second = [GpuMemory(0, "H100", H100, 66.3), GpuMemory(1, "H100", H100, 40.0)]
    plan = plan_memory(settings(tensor_parallel_size=2), busy_second, ProductGpuUse(1.1, 10.6, measured=True), ROWS)
    assert plan.utilization == 0.44  # (40.0 - 3.0 margin - 1.5 communication buffers) / 79.19
    single = plan_memory(settings(), busy_second, ProductGpuUse(1.1, 10.6, measured=True), ROWS)
    assert single.utilization == 0.78  # one card: the second one does not matter


def test_the_int8_scan_takes_half_the_vectors_memory_and_twice_the_scores():
    """int8 codes: a byte a value instead of two; its int32 scores twice the fp16 ones."""
    from pipeline.retrieval.dense.footprint import search_gib, search_work_gib

    assert round(search_gib("exact-int8", ROWS), 2) == round(search_gib("exact", ROWS) / 2, 2) == 5.3
    assert search_work_gib("exact-int8", ROWS) == 2 * search_work_gib("exact", ROWS)
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", H100, 78.6)
    overrides = {"profile": "jawiki", "index": {"backend": "exact-int8"}}
    int8 = load_settings(environ={}, path="/none.toml", overrides=overrides)
    fp16 = plan_memory(settings(), [card], ProductGpuUse(0.0, 0.0, measured=False), ROWS)
    assert plan_memory(int8, [card], ProductGpuUse(0.0, 0.0, measured=False), ROWS).utilization > fp16.utilization


def test_the_int8_scans_recorded_graphs_are_planned_with_their_pool_until_it_is_taken():
    """The graphs' pool holds one batch of scores for good, beside the batch a search for
    more candidates than they keep allocates. Before loading, the plan counts both; once
    loaded, the card's free memory has the pool taken out (and the measured use, memory
    allocated, leaves it out): the plan counts the batch alone, not the pool twice."""
    from pipeline.retrieval.dense.footprint import search_work_gib

    batch = search_work_gib("exact-int8", ROWS)
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", H100, 78.6)

    def reserve(product: ProductGpuUse, recorded: bool) -> float:
        overrides = {"profile": "jawiki", "index": {"backend": "exact-int8", "scan_graphs": recorded}}
        recording = load_settings(environ={}, path="/none.toml", overrides=overrides)
        return plan_memory(recording, [card], product, ROWS).reserve_gib

    planned = ProductGpuUse(0.0, 0.0, measured=False)
    assert reserve(planned, True) == pytest.approx(reserve(planned, False) + batch)
    loaded = ProductGpuUse(1.1, 5.3, measured=True)
    assert reserve(loaded, True) == reserve(loaded, False)
