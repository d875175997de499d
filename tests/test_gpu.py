from pipeline.core.gpu import GpuMemory, gpus, search_gib
from ui.memory import utilization_help


def test_the_help_says_when_there_is_no_gpu():
    assert "GPU がありません" in utilization_help(0.85, 1, [])
    for card in gpus():  # on a GPU host: each card with its memory
        assert card.total_gib > card.free_gib > 0 and card.name


def test_utilization_is_explained_in_gib():
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", 79.2, 78.0)
    text = utilization_help(0.85, 1, [card])
    assert "67.3 GiB" in text and "11.9 GiB" in text and "79.2 GiB" in text
    assert round(card.used_gib, 1) == 1.2


def test_the_help_accounts_for_the_search_backend():
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", 79.2, 78.0)
    exact = utilization_help(0.85, 1, [card], "exact", 5_555_583)
    assert "10.6 GiB" in exact and "足りません" in exact  # 11.9 GiB left < 1.2 + 10.6
    assert "足ります" in utilization_help(0.80, 1, [card], "exact", 5_555_583)
    assert "足ります" in utilization_help(0.85, 1, [card], "faiss-gpu", 5_555_583)
    assert search_gib("faiss-cpu", 5_555_583) == 0.0
