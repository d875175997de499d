"""Why `vllm serve` failed to start, read from its log, as a message that names the value
to change (English for logs, Japanese for the user).

The patterns are vLLM 0.26's own messages (``vllm/v1/worker/utils.py``,
``vllm/v1/core/kv_cache_utils.py``, ``vllm/config/model.py``), checked against a real
engine on an H100 (docs/llm.md). vLLM logs ``Free memory on device (…) on startup.
Desired GPU memory utilization is …`` on every start, so only the failure's wording
counts, and the engine's wrapper error (``Engine core initialization failed``) is not
taken for the cause.
"""

from __future__ import annotations

import math
import re

from pipeline.settings.model import Settings

TOO_LITTLE_FREE = re.compile(
    r"Free memory on device (?:\S+ )?\(([\d.]+)/([\d.]+) GiB\) on startup is less than desired GPU memory utilization"
)
KV_TOO_SMALL = re.compile(
    r"\(([\d.]+) GiB KV cache is needed, which is larger than the available KV cache memory \(([\d.]+) GiB\)"
)
ESTIMATED_MAX_LEN = re.compile(r"the estimated maximum model length is (\d+)")
NO_KV_MEMORY = "No available memory for the cache blocks"
DERIVED_MAX_LEN = re.compile(
    r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len \(\S+=(\d+)"
)
OUT_OF_MEMORY = re.compile(r"CUDA out of memory|OutOfMemoryError")
#: PyTorch's out-of-memory error as a serving engine logs it: the allocation refused, the
#: card's total and what the engine's process held.
RUNTIME_OUT_OF_MEMORY = re.compile(
    r"Tried to allocate ([\d.]+) (MiB|GiB)\. GPU \d+ has a total capacity of ([\d.]+) GiB.*?"
    r"this process has ([\d.]+) GiB memory in use"
)
MODEL_MISSING = re.compile(r"LocalEntryNotFound|OfflineModeIsEnabled|RepositoryNotFound|Cannot find|couldn't connect")
WRAPPER_ERRORS = ("Engine core initialization failed",)


def diagnose(log: str, settings: Settings, utilization: float | None = None) -> tuple[str, str]:
    """(English, Japanese) explanation of a failed start, with the value to change.
    ``utilization`` is the gpu_memory_utilization the engine was started with."""
    llm = settings.llm
    used = utilization if utilization is not None else llm.gpu_memory_utilization
    higher = min(0.99, round(float(used) + 0.05, 2)) if used != "auto" else 0.9
    if free := TOO_LITTLE_FREE.search(log):
        free_gib, total_gib = float(free.group(1)), float(free.group(2))
        proposal = _share_at_most(free_gib / total_gib - 0.02)  # two points below the free fraction
        return (
            f"the GPU has {free_gib:.1f} of {total_gib:.1f} GiB free, less than gpu_memory_utilization="
            f"{used} asks for: set it to {proposal} or free GPU memory",
            f"GPU の空きメモリ（{free_gib:.1f} / {total_gib:.1f} GiB）が、gpu_memory_utilization="
            f"{used} で必要な量より少ないため起動できませんでした。"
            f"gpu_memory_utilization を {proposal} 以下に下げるか、GPU を使う他のプロセスを止めてください。",
        )
    if kv := KV_TOO_SMALL.search(log):
        needed, available = kv.group(1), kv.group(2)
        estimate = ESTIMATED_MAX_LEN.search(log)
        shorter = f"{estimate.group(1)} 以下" if estimate else "短く"
        return (
            f"one request of max_model_len={llm.max_model_len} needs {needed} GiB of KV cache but "
            f"{available} GiB is left at gpu_memory_utilization={used}: set max_model_len to "
            f"{estimate.group(1) if estimate else 'a lower value'} or raise gpu_memory_utilization to {higher}",
            f"max_model_len={llm.max_model_len} のリクエスト 1 件分の KV キャッシュ（{needed} GiB）が、"
            f"gpu_memory_utilization={used} で残る KV キャッシュ（{available} GiB）に入りません。"
            f"max_model_len を {shorter}にするか、gpu_memory_utilization を {higher} に上げてください。",
        )
    if NO_KV_MEMORY in log or OUT_OF_MEMORY.search(log):
        return (
            f"the weights leave no GPU memory for the KV cache at gpu_memory_utilization={used}: raise it to "
            f"{higher}, use llm.quantization=fp8, or raise tensor_parallel_size ({llm.tensor_parallel_size})",
            f"gpu_memory_utilization={used} では重みを載せると KV キャッシュの場所が残りませんでした。"
            f"gpu_memory_utilization を {higher} に上げるか、重みを FP8 にするか（llm.quantization=fp8）、"
            f"tensor_parallel_size（{llm.tensor_parallel_size}）を増やしてください。",
        )
    if derived := DERIVED_MAX_LEN.search(log):
        return (
            f"max_model_len={derived.group(1)} is longer than the model supports ({derived.group(2)}): "
            f"set max_model_len to {derived.group(2)} or less",
            f"max_model_len={derived.group(1)} はモデルの上限（{derived.group(2)}）を超えています。"
            f"max_model_len を {derived.group(2)} 以下にしてください。",
        )
    if MODEL_MISSING.search(log):
        return (
            f"vLLM cannot get the model {llm.model}: download it with "
            f"`python -m pipeline.download --llm` where the hub is reachable, or use a local path",
            f"vLLM がモデル {llm.model} を取得できませんでした。ハブに接続できる環境で "
            "`python -m pipeline.download --llm` を実行するか、ローカルのパスを指定してください。",
        )
    last = _last_error(log)
    return (
        f"vLLM exited during start-up: {last}",
        f"vLLM が起動中に終了しました（{last}）。ログを確認してください。",
    )


def _share_at_most(fraction: float) -> float:
    """A gpu_memory_utilization to propose: ``fraction`` rounded down to a hundredth
    (after float noise is rounded away), at least 0.05."""
    return max(0.05, math.floor(round(fraction * 100, 6)) / 100)


def _last_error(log: str) -> str:
    """The last error line that is not vLLM's wrapper, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\w+(Error|Exception): ", line)]
    causes = [line for line in errors if not any(w in line for w in WRAPPER_ERRORS)]
    return (causes or errors or lines or ["no output"])[-1]


def diagnose_exit(log: str, code: int, utilization: float | None) -> tuple[str, str]:
    """(English, Japanese) explanation of an engine that exited after it was ready. Out of
    memory while serving (seen on the H100 host: bf16, 32 users, beside E5 and the vector
    search), the engine took more than its ``gpu_memory_utilization`` share; the proposal
    is the share less what it took beyond it."""
    oom = RUNTIME_OUT_OF_MEMORY.search(log)
    if oom is None or utilization is None:
        return (
            f"the engine exited with code {code}",
            f"vLLM が終了しました（終了コード {code}）。再起動してください。",
        )
    asked_gib = float(oom.group(1)) / (1024 if oom.group(2) == "MiB" else 1)
    total_gib, held_gib = float(oom.group(3)), float(oom.group(4))
    share_gib = utilization * total_gib
    beyond_gib = max(0.0, held_gib + asked_gib - share_gib)
    proposal = _share_at_most((share_gib - beyond_gib) / total_gib)
    return (
        f"the engine ran out of GPU memory while answering: it needed {beyond_gib:.1f} GiB beyond its "
        f"gpu_memory_utilization={utilization} share ({share_gib:.1f} GiB); set it to {proposal} or less and restart",
        f"回答の生成中に vLLM の GPU メモリが足りなくなり、停止しました（gpu_memory_utilization={utilization} の"
        f"割り当て {share_gib:.1f} GiB より {beyond_gib:.1f} GiB 多く必要になりました）。"
        f"gpu_memory_utilization を {proposal} 以下に下げて再起動してください。",
    )
