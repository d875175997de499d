"""The supervisor drives the stand-in `vllm serve` exactly as it drives the real one."""

import os
import signal
import time

import pytest

from pipeline.core.settings_files import load_settings
from pipeline.generation.diagnosis import diagnose
from pipeline.generation.supervisor import EngineSupervisor, serve_command
from tests.conftest import STANDIN_COMMAND


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
    assert serve_command(settings, 8123) == [
        "vllm", "serve", "elyza/ELYZA-japanese-Llama-2-13b-instruct",
        "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "elyza/ELYZA-japanese-Llama-2-13b-instruct",
        "--dtype", "bfloat16", "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.7", "--max-model-len", "4096",
    ]  # fmt: skip


def test_start_wait_restart_and_stop(tmp_path):
    supervisor = EngineSupervisor(tmp_path / "logs")
    lines = []
    try:
        supervisor.start(settings_for(tmp_path, command=f"{STANDIN_COMMAND} --startup-delay 1"))
        assert supervisor.status().state == "starting"
        status = supervisor.wait_ready(60, progress=lines.append)
        assert status.state == "ready" and status.base_url.startswith("http://127.0.0.1:")
        assert any("standin" in line for line in lines)  # progress shows the engine's log
        first_pid = status.pid

        supervisor.start(settings_for(tmp_path, gpu_memory_utilization=0.6))  # a restart applies new values
        status = supervisor.wait_ready(60)
        assert status.state == "ready" and status.pid != first_pid
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


def test_start_failure_for_lack_of_gpu_memory_proposes_a_value(tmp_path):
    supervisor = EngineSupervisor(tmp_path / "logs")
    settings = settings_for(
        tmp_path, command=f"{STANDIN_COMMAND} --free-memory-fraction 0.5", gpu_memory_utilization=0.85
    )
    supervisor.start(settings)
    status = supervisor.wait_ready(60)
    assert status.state == "failed"
    assert "gpu_memory_utilization を 0.48 以下に下げる" in status.ja
    assert "set it to 0.48" in status.en
    assert any("Free memory on device" in line for line in status.log_tail)


def test_a_command_that_times_out_is_reported(tmp_path):
    supervisor = EngineSupervisor(tmp_path / "logs")
    try:
        supervisor.start(settings_for(tmp_path, command=f"{STANDIN_COMMAND} --startup-delay 30"))
        status = supervisor.wait_ready(1.5)
        assert status.state == "failed" and "準備ができませんでした" in status.ja
    finally:
        supervisor.stop()


def test_diagnoses_of_other_start_failures(tmp_path):
    settings = settings_for(tmp_path, gpu_memory_utilization=0.8, max_model_len=4096)
    en, ja = diagnose("ValueError: No available memory for the cache blocks.", settings)
    assert "0.85" in en and "gpu_memory_utilization を 0.85 に上げる" in ja and "max_model_len" in ja
    en, ja = diagnose("huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files", settings)
    assert "python -m pipeline.download --llm" in ja and "elyza/ELYZA-japanese-Llama-2-13b-instruct" in ja
    en, ja = diagnose("something unexpected\nRuntimeError: boom", settings)
    assert "RuntimeError: boom" in ja
