"""The supervisor drives the stand-in `vllm serve` exactly as it drives the real one."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.secrets import masked
from pipeline.generation.diagnosis import diagnose, diagnose_exit
from pipeline.generation.supervisor import (
    EngineSupervisor,
    engine_program,
    masked_command,
    secret_values,
    serve_command,
)
from pipeline.settings.sources import load_settings, with_values
from tests.conftest import STANDIN_COMMAND
from tests.standin_llm import out_of_memory_report


def settings_for(tmp_path, command=STANDIN_COMMAND, **llm):
    return load_settings(
        environ={},
        path="/none.toml",
        overrides={"cache_dir": str(tmp_path), "llm": {"backend": "local", "serve_command": command, **llm}},
    )


def test_serve_command_carries_the_engine_settings(tmp_path):
    settings = load_settings(
        environ={},
        path="/none.toml",
        overrides={"llm": {"gpu_memory_utilization": 0.7, "tensor_parallel_size": 2, "max_model_len": 4096}},
    )
    assert serve_command(settings, 8123, 0.7) == [
        *engine_program(settings), "elyza/ELYZA-japanese-Llama-2-13b-instruct",
        "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "elyza/ELYZA-japanese-Llama-2-13b-instruct",
        "--dtype", "bfloat16", "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.7", "--max-model-len", "4096",
    ]  # fmt: skip


def test_vllm_runs_as_a_module_when_its_script_is_not_on_path(monkeypatch):
    import importlib.util
    import shutil
    import sys

    settings = load_settings(environ={}, path="/none.toml")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    assert serve_command(settings, 8123, 0.8)[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve",
                                                      "elyza/ELYZA-japanese-Llama-2-13b-instruct"]  # fmt: skip


def test_fp8_extra_arguments_and_a_model_from_the_hub_mirror(tmp_path):
    model = tmp_path / "mirror" / "elyza" / "ELYZA-japanese-Llama-2-13b-instruct"
    model.mkdir(parents=True)
    llm = {"quantization": "fp8", "kv_cache_dtype": "fp8", "extra_args": "--load-format dummy --enforce-eager"}
    settings = load_settings(
        environ={}, path="/none.toml", overrides={"hub_mirror": str(tmp_path / "mirror"), "llm": llm}
    )
    command = serve_command(settings, 8123, 0.81)
    # vLLM reads the mirrored folder; clients still use the model's name
    assert command[len(engine_program(settings))] == str(model)
    assert command[command.index("--served-model-name") + 1] == "elyza/ELYZA-japanese-Llama-2-13b-instruct"
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.81"
    assert command[-7:] == ["--quantization", "fp8", "--kv-cache-dtype", "fp8", "--load-format", "dummy",
                            "--enforce-eager"]  # fmt: skip


def test_start_wait_restart_and_stop(tmp_path):
    supervisor = EngineSupervisor(tmp_path / "logs")
    lines = []
    try:
        supervisor.start(settings_for(tmp_path, command=f"{STANDIN_COMMAND} --startup-delay 1"))
        assert supervisor.status().state == "starting"
        status = supervisor.wait_ready(60, progress=lines.append)
        assert status.state == "ready" and status.base_url.startswith("http://127.0.0.1:")
        assert any("GPU KV cache size" in line for line in lines)  # progress shows the engine's log
        assert status.memory == {"weights_gib": 24.29, "kv_cache_gib": 41.92, "kv_cache_tokens": 54896}
        assert status.utilization == 0.9  # auto without GPU facts to plan with: vLLM's default share
        first_pid = status.pid

        supervisor.start(settings_for(tmp_path, gpu_memory_utilization=0.6))  # a restart applies new values
        status = supervisor.wait_ready(60)
        assert status.state == "ready" and status.pid != first_pid and status.utilization == 0.6
        assert any("gpu_memory_utilization=0.6" in line for line in status.log_tail)
        with pytest.raises(ProcessLookupError):
            os.kill(first_pid, 0)
    finally:
        supervisor.stop()
    assert supervisor.status().state == "stopped"


def test_a_crash_after_start_is_reported(tmp_path):
    supervisor = EngineSupervisor(tmp_path / "logs")
    try:
        supervisor.start(settings_for(tmp_path))
        pid = supervisor.wait_ready(60).pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "終了" not in supervisor.status().ja and time.monotonic() < deadline:
            time.sleep(0.05)  # first "not answering", then the exit code once the process is reaped
        status = supervisor.status()
        assert status.state == "failed"
        assert "終了コード -9" in status.ja and "再起動" in status.ja
    finally:
        supervisor.stop()


def test_an_api_key_among_the_engine_arguments_is_never_logged_nor_shown(tmp_path, caplog):
    supervisor = EngineSupervisor(tmp_path / "logs")
    try:
        with caplog.at_level("INFO", logger="pipeline.generation.supervisor"):
            supervisor.start(settings_for(tmp_path, extra_args="--api-key s3cret-key-1234"))
        status = supervisor.wait_ready(60)
        assert "s3cret-key-1234" in (tmp_path / "logs" / "vllm.log").read_text()  # vLLM logs its arguments
        assert "s3cret-key-1234" not in "\n".join(status.log_tail) and "***" in "\n".join(status.log_tail)
        assert "starting engine" in caplog.text and "s3cret-key-1234" not in caplog.text
    finally:
        supervisor.stop()


@pytest.mark.parametrize(
    "arguments",
    [["--api-key", "k3y"], ["--api-key=k3y"], ["--api_key", "k3y"], ["--api-ke", "k3y"], ["--hf-token", "k3y"]],
)
def test_secret_engine_arguments_are_found_in_every_form_vllm_takes(arguments):
    assert secret_values(["--port", "8000", *arguments, "--enforce-eager"]) == ["k3y"]
    assert masked("non-default args: {'api_key': ['k3y']} k3yboard", ["k3y"]) == (
        "non-default args: {'api_key': ['***']} k3yboard"
    )


def test_a_quoted_secret_is_masked_as_written():
    """Shell quoting and Python's repr write a key with a space, a quote or a backslash
    otherwise than it is: each is masked where it stands."""
    arguments = ["--enforce-eager", "--api-key", "it's a\\key"]
    assert masked_command(arguments) == "--enforce-eager --api-key ***"
    logged = f"non-default args: {{'api_key': [{arguments[2]!r}]}} {shlex.join(arguments)}"
    assert (
        masked(logged, secret_values(arguments))
        == "non-default args: {'api_key': [\"***\"]} --enforce-eager --api-key ***"
    )


def engine_core_pid(supervisor: EngineSupervisor) -> int:
    """The EngineCore's pid from the engine's log, as vLLM prints it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"\(EngineCore_DP0 pid=(\d+)\)", "\n".join(supervisor.status().log_tail))
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError("no EngineCore line in the engine's log")


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_stop_ends_an_engine_core_that_ignores_sigterm(tmp_path):
    """vLLM's EngineCore holds the GPU memory: a stop ends it too, by SIGKILL after the grace."""
    supervisor = EngineSupervisor(tmp_path / "logs")
    command = f"{STANDIN_COMMAND} --engine-core --engine-core-ignores-sigterm"
    try:
        supervisor.start(settings_for(tmp_path, command=command))
        leader = supervisor.wait_ready(60).pid
        core = engine_core_pid(supervisor)
        assert running(core)
    finally:
        supervisor.stop(grace_s=1.0)
    assert not running(leader) and not running(core)


def test_an_engine_core_left_by_a_crashed_api_server_is_stopped(tmp_path, monkeypatch):
    """The API server dies (SIGKILL here, as by the OOM killer) and its EngineCore lives on,
    holding the card: once the supervisor sees the exit, the EngineCore is stopped too."""
    supervisor = EngineSupervisor(tmp_path / "logs")
    try:
        supervisor.start(settings_for(tmp_path, command=f"{STANDIN_COMMAND} --engine-core"))
        leader = supervisor.wait_ready(60).pid
        core = engine_core_pid(supervisor)
        os.kill(leader, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "終了" not in supervisor.status().ja and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.status().state == "failed"
        deadline = time.monotonic() + 10
        while running(core) and time.monotonic() < deadline:  # stopped beside the status check
            time.sleep(0.05)
        assert not running(core)
        signalled = []
        monkeypatch.setattr(os, "killpg", lambda group, number: signalled.append((group, number)))
        supervisor.stop()  # the group is empty: its number may be another's by now
        assert signalled == []
    finally:
        supervisor.stop()


APP = """
import sys, time
from pathlib import Path
from pipeline.generation.supervisor import EngineSupervisor
from tests.test_supervisor import engine_core_pid, settings_for
folder = Path(sys.argv[1])
supervisor = EngineSupervisor(folder / "logs")
supervisor.start(settings_for(folder, command=sys.argv[2]))
print(supervisor.wait_ready(60).pid, engine_core_pid(supervisor), flush=True)
time.sleep(600)
"""


def test_an_app_killed_outright_takes_its_engine_with_it(tmp_path):
    """The app dies of SIGKILL (no clean-up of its own runs): the kernel's parent-death
    signal stops the engine, and the engine its EngineCore, as vLLM does on SIGTERM."""
    command = f"{STANDIN_COMMAND} --engine-core"
    app = subprocess.Popen([sys.executable, "-c", APP, str(tmp_path), command], stdout=subprocess.PIPE, text=True)
    try:
        leader, core = (int(pid) for pid in app.stdout.readline().split())
        assert running(leader) and running(core)
    finally:
        app.kill()
        app.wait()
    deadline = time.monotonic() + 20
    while (running(leader) or running(core)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(leader) and not running(core)


#: vLLM 0.26's line on the H100 host (bf16, 32 users, started at 0.81 beside E5 and the
#: exact search): the engine died out of memory while serving.
SERVING_OUT_OF_MEMORY = (
    "(EngineCore pid=9894) ERROR 11-26 02:41:56 [core.py:1332] torch.OutOfMemoryError: CUDA out of memory. Tried to "
    "allocate 396.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 398.62 MiB is free. Process 9267 has "
    "13.06 GiB memory in use. Including non-PyTorch memory, this process has 65.72 GiB memory in use. Of the "
    "allocated memory 64.35 GiB is allocated by PyTorch, with 786.00 MiB allocated in private pools (e.g., CUDA "
    "Graphs), and 286.49 MiB is reserved by PyTorch but unallocated."
)


def test_an_engine_out_of_memory_while_serving_is_told_to_take_less():
    """Raising the share, the start-up advice, would be wrong here: at 0.78 the same load ran."""
    en, ja = diagnose_exit(SERVING_OUT_OF_MEMORY, 1, 0.81)
    assert "gpu_memory_utilization を 0.78 以下に下げて再起動" in ja and "64.1 GiB より 2.0 GiB 多く" in ja
    assert "set it to 0.78 or less" in en
    assert "終了コード 1" in diagnose_exit("RuntimeError: something else", 1, 0.81)[1]
    assert out_of_memory_report(0.81).count("this process has 65.72 GiB") == 1  # the stand-in logs the same


def test_an_engine_that_dies_out_of_memory_mid_answer_is_explained(tmp_path):
    import httpx

    supervisor = EngineSupervisor(tmp_path / "logs")
    try:
        supervisor.start(settings_for(tmp_path, gpu_memory_utilization=0.81))
        base_url = supervisor.wait_ready(60).base_url
        httpx.post(base_url.removesuffix("/v1") + "/control", json={"fault": "oom", "after": 2}).raise_for_status()
        body = {"model": "elyza/ELYZA-japanese-Llama-2-13b-instruct", "prompt": "[1] 梅雨\n梅雨とは", "stream": True}
        with pytest.raises(httpx.HTTPError), httpx.stream("POST", f"{base_url}/completions", json=body) as response:
            for _ in response.iter_lines():
                pass
        deadline = time.monotonic() + 10
        while (
            "終了" not in supervisor.status().ja
            and "停止" not in supervisor.status().ja
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        status = supervisor.status()
        assert status.state == "failed" and "gpu_memory_utilization を 0.78 以下に下げて" in status.ja
    finally:
        supervisor.stop()


def test_start_failure_for_lack_of_gpu_memory_proposes_a_value(tmp_path):
    supervisor = EngineSupervisor(tmp_path / "logs")
    settings = settings_for(
        tmp_path, command=f"{STANDIN_COMMAND} --free-memory-fraction 0.5", gpu_memory_utilization=0.85
    )
    supervisor.start(settings)
    status = supervisor.wait_ready(60)
    assert status.state == "failed"
    assert "gpu_memory_utilization を 0.47 以下に下げる" in status.ja
    assert "set it to 0.47" in status.en
    assert any("Free memory on device" in line for line in status.log_tail)


def test_a_command_that_times_out_is_reported(tmp_path):
    supervisor = EngineSupervisor(tmp_path / "logs")
    try:
        supervisor.start(settings_for(tmp_path, command=f"{STANDIN_COMMAND} --startup-delay 30"))
        status = supervisor.wait_ready(1.5)
        assert status.state == "failed" and "準備ができませんでした" in status.ja
    finally:
        supervisor.stop()


#: vLLM 0.26's own lines (vllm/v1/worker/utils.py, vllm/v1/core/kv_cache_utils.py): the
#: start-up report it logs on every start, then each failure as the engine core prints it.
STARTUP_REPORT = (
    "(EngineCore_DP0 pid=812) INFO 11-25 12:00:01 [gpu_worker.py:479] Free memory on device (66.31/79.19 GiB) on "
    "startup. Desired GPU memory utilization is (0.85, 67.31 GiB). Actual usage is 24.29 GiB for weight, 1.31 GiB "
    "for peak activation, 0.52 GiB for non-torch memory, and 0.76 GiB for CUDAGraph memory."
)
TOO_LITTLE_FREE = (
    "(EngineCore_DP0 pid=812) ValueError: Free memory on device cuda:0 (66.31/79.19 GiB) on startup is less than "
    "desired GPU memory utilization (0.9, 71.27 GiB). Decrease GPU memory utilization or reduce GPU memory used by "
    "other processes.\nRuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
)
KV_TOO_SMALL = (
    f"{STARTUP_REPORT}\n(EngineCore_DP0 pid=812) ValueError: To serve at least one request with the model's max seq "
    "len (4096), (3.12 GiB KV cache is needed, which is larger than the available KV cache memory (1.0 GiB). Based "
    "on the available memory, the estimated maximum model length is 1296. Try increasing `gpu_memory_utilization` "
    "(which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the "
    "engine.\nRuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
)


def test_diagnoses_read_vllms_own_messages(tmp_path):
    settings = settings_for(tmp_path, max_model_len=4096)
    en, ja = diagnose(TOO_LITTLE_FREE, settings, 0.9)
    assert "gpu_memory_utilization を 0.81 以下に下げる" in ja and "66.3 / 79.2 GiB" in ja and "set it to 0.81" in en
    en, ja = diagnose(KV_TOO_SMALL, settings, 0.34)
    assert "max_model_len を 1296 以下にする" in ja and "gpu_memory_utilization を 0.39 に上げて" in ja
    assert "3.12 GiB" in ja and "1.0 GiB" in ja and "set max_model_len to 1296" in en
    healthy_then_crash = f"{STARTUP_REPORT}\nRuntimeError: CUDA error: an illegal memory access was encountered"
    assert "illegal memory access" in diagnose(healthy_then_crash, settings, 0.85)[1]  # the report is no diagnosis
    en, ja = diagnose(
        "ValueError: User-specified max_model_len (8192) is greater than the derived max_model_len "
        "(max_position_embeddings=4096 or model_max_length=None in model's config.json).",
        settings,
        0.85,
    )
    assert "max_model_len を 4096 以下にして" in ja


def test_diagnoses_of_other_start_failures(tmp_path):
    settings = settings_for(tmp_path, gpu_memory_utilization=0.8, max_model_len=4096)
    en, ja = diagnose("ValueError: No available memory for the cache blocks. Try increasing", settings)
    assert "0.85" in en and "gpu_memory_utilization を 0.85 に上げる" in ja and "FP8" in ja
    en, ja = diagnose("huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files", settings)
    assert "python -m pipeline.download --llm" in ja and "elyza/ELYZA-japanese-Llama-2-13b-instruct" in ja
    en, ja = diagnose("something unexpected\nRuntimeError: boom", settings)
    assert "RuntimeError: boom" in ja


def test_a_plan_that_cannot_fit_is_refused_before_anything_starts(tmp_path):
    from pipeline.core.gpu import GpuMemory, ProductGpuUse
    from pipeline.generation.memory_plan import plan_memory

    card = GpuMemory(0, "NVIDIA H100 80GB HBM3", 79.19, 66.3)
    measured = ProductGpuUse(1.1, 10.6, measured=True)
    supervisor = EngineSupervisor(tmp_path / "logs", planner=lambda s: plan_memory(s, [card], measured, 5_555_583))
    settings = with_values(settings_for(tmp_path, gpu_memory_utilization=0.85), {"index.backend": "exact"})
    status = supervisor.start(settings)
    assert status.state == "failed" and status.pid is None and supervisor.status().state == "failed"
    assert "gpu_memory_utilization を 0.78 以下" in status.ja
    assert not (tmp_path / "logs" / "vllm.log").exists()
