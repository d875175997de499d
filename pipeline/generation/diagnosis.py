"""Why `vllm serve` failed to start, read from its log, as a message that names the value
to change (English for logs, Japanese for the user)."""

from __future__ import annotations

import math
import re

from pipeline.core.settings import Settings


def diagnose(log: str, settings: Settings) -> tuple[str, str]:
    """(English, Japanese) explanation of a failed start, with the value to change."""
    llm = settings.llm
    free = re.search(r"Free memory on device \S* \(([\d.]+)/([\d.]+) GiB\)", log)
    if free:
        free_gib, total_gib = float(free.group(1)), float(free.group(2))
        # Two points below the free fraction, rounded down to a hundredth.
        proposal = max(0.05, math.floor(round((free_gib / total_gib - 0.02) * 100, 6)) / 100)
        return (
            f"the GPU has {free_gib:.1f} of {total_gib:.1f} GiB free, less than gpu_memory_utilization="
            f"{llm.gpu_memory_utilization} asks for: set it to {proposal} or free GPU memory",
            f"GPU の空きメモリ（{free_gib:.1f} / {total_gib:.1f} GiB）が、gpu_memory_utilization="
            f"{llm.gpu_memory_utilization} で必要な量より少ないため起動できませんでした。"
            f"gpu_memory_utilization を {proposal} 以下に下げるか、GPU を使う他のプロセスを止めてください。",
        )
    if re.search(r"KV cache|cache blocks|max seq len|CUDA out of memory|OutOfMemoryError", log):
        higher = min(0.99, round(llm.gpu_memory_utilization + 0.05, 2))
        return (
            f"not enough GPU memory for the weights and KV cache at gpu_memory_utilization="
            f"{llm.gpu_memory_utilization}: raise it to {higher}, lower max_model_len "
            f"({llm.max_model_len}), or raise tensor_parallel_size ({llm.tensor_parallel_size})",
            f"gpu_memory_utilization={llm.gpu_memory_utilization} では重みと KV キャッシュが GPU メモリに"
            f"収まりませんでした。gpu_memory_utilization を {higher} に上げるか、max_model_len"
            f"（{llm.max_model_len}）を下げるか、tensor_parallel_size（{llm.tensor_parallel_size}）を"
            "増やしてください。",
        )
    if re.search(r"(LocalEntryNotFound|OfflineModeIsEnabled|RepositoryNotFound|Cannot find|couldn't connect)", log):
        return (
            f"vLLM cannot get the model {llm.model}: download it with "
            f"`python -m pipeline.download --llm` where the hub is reachable, or use a local path",
            f"vLLM がモデル {llm.model} を取得できませんでした。ハブに接続できる環境で "
            "`python -m pipeline.download --llm` を実行するか、ローカルのパスを指定してください。",
        )
    last = log.strip().splitlines()[-1] if log.strip() else "no output"
    return (
        f"vLLM exited during start-up: {last}",
        f"vLLM が起動中に終了しました（{last}）。ログを確認してください。",
    )
