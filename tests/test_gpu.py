from pipeline.gpu import GpuMemory, gpus, utilization_help


def test_no_gpu_here_and_the_help_says_so():
    assert gpus() == []
    assert "GPU がありません" in utilization_help(0.85, 1, [])


def test_utilization_is_explained_in_gib():
    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", 79.2, 78.0)
    text = utilization_help(0.85, 1, [card])
    assert "67.3 GiB" in text and "11.9 GiB" in text and "79.2 GiB" in text
    assert round(card.used_gib, 1) == 1.2
