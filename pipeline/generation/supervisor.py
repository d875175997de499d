"""Supervising a local `vllm serve` child process for the ``local`` LLM backend.

Why a child process and not vLLM in-process: Streamlit reruns scripts and serves many
sessions from one process; an engine crash or a GPU OOM must not take the UI down; a
new ``gpu_memory_utilization`` or ``tensor_parallel_size`` must take effect by
restarting the engine, not the app; and the app then talks to the engine over the same
OpenAI-compatible HTTP API as to a remote `vllm serve` fleet (one code path).

The engine is owned for its whole life: it runs in a process group of its own (vLLM's
API server starts its EngineCore and workers, which hold the GPU memory, in it), every
stop ends the whole group, SIGKILL after a grace period, and an engine whose API server
died is stopped with what it left. Should the app itself die, even by SIGKILL, the kernel
sends the engine SIGTERM (``PR_SET_PDEATHSIG``, set by a short launcher that then execs
the command; it belongs to the thread that started the child, so one long-lived thread
starts every engine), and vLLM's API server stops its EngineCore as on any SIGTERM.

The child binds 127.0.0.1 on a free port, writes its log to ``<cache>/logs/vllm.log``
and downloads weights into the same hub cache as the rest of the app (or reads them from
``hub_mirror``, like every other repository). Its share of the GPU comes from a memory
plan (:mod:`pipeline.generation.memory_plan`) made just before it starts, when the
previous engine's memory is free again; a plan that cannot fit is refused before
anything starts. Readiness is vLLM's ``GET /health``; once ready, what the engine
reported of its memory (weights, KV cache) is read from its log. When start-up fails,
the log is read for the usual causes and the message says which value to change
(:mod:`pipeline.generation.diagnosis`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx

from pipeline.assets.hub import hub_cache_dir, local_repo_dir
from pipeline.core.errors import DataUnavailableError
from pipeline.core.schema import EngineState, EngineStatus
from pipeline.core.secrets import masked
from pipeline.generation.diagnosis import diagnose, diagnose_exit
from pipeline.generation.memory_plan import MemoryPlan
from pipeline.settings.model import Settings

logger = logging.getLogger(__name__)

#: Seconds an engine whose API server died gets for its EngineCore to end on SIGTERM.
LEFTOVER_GRACE_S = 5.0
#: Seconds to wait for the kernel to end a group after SIGKILL.
KILLED_WAIT_S = 10.0

#: vLLM flags whose value is a secret: never shown nor in this app's log (the engine's own
#: log keeps them, readable by this user only).
SECRET_FLAGS = ("--api-key", "--hf-token")

#: Plans the engine's GPU share for settings (None: no GPU facts to plan with).
Planner = Callable[[Settings], MemoryPlan | None]

#: What vLLM logs of its memory once loaded: (key, pattern of a GiB or token count).
ENGINE_MEMORY_LINES = (
    ("weights_gib", r"Model loading took ([\d.]+) GiB"),
    ("kv_cache_gib", r"Available KV cache memory: ([\d.]+) GiB"),
    ("kv_cache_tokens", r"GPU KV cache size: ([\d,]+) tokens"),
)


def model_location(settings: Settings) -> str:
    """What `vllm serve` loads: the model's folder when it is local or in the hub mirror
    (air-gapped hosts), else its hub id (vLLM downloads it into our hub cache)."""
    try:
        folder = local_repo_dir(settings.llm.model, settings)
    except DataUnavailableError:
        folder = None
    return str(folder) if folder is not None else settings.llm.model


def engine_program(settings: Settings) -> list[str]:
    """``llm.serve_command`` as a program and its arguments. ``vllm`` itself, when vLLM is
    importable but its script is not on PATH (seen on the GPU host, where vLLM was
    installed with ``pip install --target``), runs as the module behind that script."""
    program = shlex.split(settings.llm.serve_command)
    if program[0] == "vllm" and shutil.which("vllm") is None and importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", *program[1:]]
    return program


def serve_command(settings: Settings, port: int, utilization: float) -> list[str]:
    """The `vllm serve` command line for these settings."""
    llm = settings.llm
    command = [
        *engine_program(settings),
        model_location(settings),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        llm.model,
        "--dtype",
        llm.dtype,
        "--tensor-parallel-size",
        str(llm.tensor_parallel_size),
        "--gpu-memory-utilization",
        str(utilization),
        "--max-model-len",
        str(llm.max_model_len),
    ]
    if llm.quantization != "none":
        command += ["--quantization", llm.quantization]
    if llm.kv_cache_dtype != "auto":
        command += ["--kv-cache-dtype", llm.kv_cache_dtype]
    return command + shlex.split(llm.extra_args)


#: Runs in the engine's process before its command: asks the kernel for SIGTERM when the
#: thread that started it (the app's engine-owner thread) is gone, then becomes the command.
_LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("the app that started the engine is gone")
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.exit(f"cannot run the engine command {sys.argv[2]!r}: {exc}")
"""
#: Starts every engine, and lives as long as the process: the parent-death signal follows
#: the thread that forked, and a Streamlit script's thread ends with its run.
_ENGINE_OWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-owner")


def launch_engine(command: list[str], log, env: dict[str, str]) -> subprocess.Popen:
    """``command`` as the leader of a new process group, stopped by the kernel if this
    process dies (Linux; elsewhere only by :func:`stop_process_group`)."""
    if sys.platform.startswith("linux"):
        command = [sys.executable, "-I", "-c", _LAUNCHER, str(os.getpid()), *command]  # -I: no module of the cwd
    spawn = partial(subprocess.Popen, command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return _ENGINE_OWNER.submit(spawn).result()


def _secret_positions(arguments: list[str]) -> dict[int, str]:
    """Where :data:`SECRET_FLAGS`' values are among command-line ``arguments``, in every
    form vLLM's parser takes: ``--api-key K``, ``--api-key=K``, ``--api_key K``, an
    abbreviation (``--api-ke K``), several values (``--api-key K1 K2``): position ->
    value. Masking too much is harmless."""
    found = {}
    for position, argument in enumerate(arguments):
        name, equals, value = argument.partition("=")
        name = name.replace("_", "-")
        if not (name.startswith("--") and len(name) > 2 and any(flag.startswith(name) for flag in SECRET_FLAGS)):
            continue
        if equals:
            found[position] = value
            continue
        for following, candidate in enumerate(arguments[position + 1 :], start=position + 1):
            if candidate.startswith("-"):
                break
            found[following] = candidate
    return {position: value for position, value in found.items() if value}


def secret_values(arguments: list[str]) -> list[str]:
    """The secrets among ``arguments``, each also as it is written when quoted for a shell
    or shown in a Python repr (vLLM logs its arguments so), the longest first."""
    values = _secret_positions(arguments).values()
    forms = {form for value in values for form in (value, shlex.quote(value), repr(value)[1:-1])}
    return sorted(forms, key=len, reverse=True)  # a quoted form before the value inside it


def masked_command(arguments: list[str]) -> str:
    """``arguments`` as a shell command line, each secret value replaced by ``***``."""
    positions = _secret_positions(arguments)
    shown = []
    for position, argument in enumerate(arguments):
        if position in positions:
            name, equals, _ = argument.partition("=")
            argument = f"{name}=***" if equals and argument.startswith("-") else "***"
        shown.append(argument)
    return " ".join(part if part == "***" or part.endswith("=***") else shlex.quote(part) for part in shown)


def engine_memory(log: str) -> dict[str, float]:
    """The engine's memory as it logged it (the last start's lines win)."""
    found = {}
    for key, pattern in ENGINE_MEMORY_LINES:
        values = re.findall(pattern, log)
        if values:
            found[key] = float(values[-1].replace(",", ""))
    return found


class EngineSupervisor:
    """Starts, health-checks, restarts and stops one `vllm serve` child process."""

    def __init__(self, log_dir: Path, planner: Planner | None = None, env: dict[str, str] | None = None) -> None:
        self._log_path = log_dir / "vllm.log"
        #: Extra environment for the engine (e.g. CUDA_VISIBLE_DEVICES to pin it to cards).
        self._env = env or {}
        self._lock = threading.RLock()
        self._process: subprocess.Popen | None = None
        self._port = 0
        self._settings: Settings | None = None
        self._utilization: float | None = None
        self._status = EngineStatus(state="stopped")
        self._exit_reported = False
        #: What the engine's command line holds that is never shown (:data:`SECRET_FLAGS`).
        self._secrets: list[str] = []
        #: Sizes the engine's GPU share at each start; set once the process knows what
        #: it keeps on the GPU (see :class:`pipeline.serving.runtime.RagRuntime`).
        self.planner = planner

    @property
    def started_with(self) -> Settings | None:
        """The settings the engine was last started with (None before the first start)."""
        return self._settings

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self, settings: Settings) -> EngineStatus:
        """Start the engine for these settings (restarting it if one runs). A memory plan
        that cannot fit fails here, before anything starts."""
        with self._lock:
            self.stop()
            self._settings = settings
            plan = self.planner(settings) if self.planner is not None else None
            if plan is not None and not plan.fits:
                en, ja = plan.refusal()
                self._status = self._new_status("failed", en, ja)
                return self._status
            requested = settings.llm.gpu_memory_utilization
            self._utilization = plan.utilization if plan is not None else (0.9 if requested == "auto" else requested)
            self._port = settings.llm.port or _free_port()
            self._exit_reported = False
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            command = serve_command(settings, self._port, self._utilization)
            self._secrets = secret_values(command)
            logger.info("starting engine: %s", masked_command(command))
            env = {**os.environ, "HF_HUB_CACHE": str(hub_cache_dir(settings)), **self._env}
            # the engine logs its arguments, secrets among them: for this user's eyes only
            descriptor = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.chmod(self._log_path, 0o600)  # a log written before with another mode
            with open(descriptor, "w", encoding="utf-8") as log:
                self._process = launch_engine(command, log, env)
            self._status = self._new_status("starting", "starting", "起動中です…")
            return self._status

    def wait_ready(self, timeout_s: float, progress: Callable[[str], None] | None = None) -> EngineStatus:
        """Poll until the engine answers /health, exits, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        last_line = ""
        while time.monotonic() < deadline:
            status = self.status()
            if status.state != "starting":
                return status
            line = next((x for x in reversed(status.log_tail) if x.strip()), "")
            if progress and line != last_line:
                progress(line)
                last_line = line
            time.sleep(0.25)
        with self._lock:
            self._status = self._new_status(
                "failed",
                f"the engine was not ready after {timeout_s:.0f}s",
                f"{timeout_s:.0f} 秒待っても vLLM の準備ができませんでした。ログを確認してください。",
            )
            return self._status

    def status(self) -> EngineStatus:
        """The engine's state now (checks the process and /health)."""
        with self._lock:
            if self._process is None:
                return self._status
            code = self._process.poll()
            if code is not None:
                if not self._exit_reported:
                    self._exit_reported = True
                    # vLLM's EngineCore outlives a crashed API server, holding the GPU memory;
                    # stopped beside, not under the lock that every status check takes
                    threading.Thread(
                        target=stop_process_group, args=(self._process, LEFTOVER_GRACE_S), name="engine-leftovers"
                    ).start()
                    self._status = self._exited(code)
                return self._status
            if _healthy(self.base_url.removesuffix("/v1") + "/health"):
                if self._status.state != "ready":
                    self._status = self._new_status("ready", "ready", "稼働中")
                    self._status.memory = engine_memory(self._read_log())
            elif self._status.state == "ready":
                self._status = self._new_status(
                    "failed",
                    "the engine stopped answering /health",
                    "vLLM が応答しません。再起動してください。",
                )
            else:
                self._status.log_tail = self._log_tail()
            return self._status

    def _exited(self, code: int) -> EngineStatus:
        if self._status.state == "starting":
            en, ja = diagnose(self._read_log(), self._settings, self._utilization)
        else:
            en, ja = diagnose_exit(self._read_log(), code, self._utilization)
        return self._new_status("failed", en, ja)

    def _new_status(self, state: EngineState, en: str, ja: str) -> EngineStatus:
        return EngineStatus(
            state=state,
            en=masked(en, self._secrets),
            ja=masked(ja, self._secrets),
            log_tail=self._log_tail(),
            base_url=self.base_url,
            pid=self._process.pid if self._process else None,
            utilization=self._utilization,
        )

    def stop(self, grace_s: float = 20.0) -> None:
        with self._lock:
            process, self._process = self._process, None
            self._status = EngineStatus(state="stopped")
            if process is not None:  # its API server may be gone and its EngineCore not
                stop_process_group(process, grace_s)

    def _read_log(self) -> str:
        try:
            return self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 20) -> list[str]:
        """The log's last lines as shown to users (vLLM logs its arguments, secrets too)."""
        return [masked(line, self._secrets) for line in self._read_log().splitlines()[-lines:]]


def stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """End every process of ``process``'s group (it leads it), its leader gone or not:
    SIGTERM, then SIGKILL to what is left after ``grace_s``; returns once none is left.
    A group already empty is not signalled: its number may be another group's by now
    (Linux reuses it only once no process of the old group is left)."""
    group = process.pid
    for signal_number, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILLED_WAIT_S)):
        if process.poll() is not None and not group_alive(group):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal_number)
        deadline = time.monotonic() + wait_s
        while True:
            process.poll()  # reaps the leader: a zombie still counts as one of the group
            if not group_alive(group):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    logger.error("engine process group %s still has processes after SIGKILL", group)


def group_alive(group: int) -> bool:
    """Whether a process of ``group`` runs (zombies waiting for their parent do not)."""
    if Path("/proc").is_dir():
        return bool(group_members(group))
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def group_members(group: int) -> list[int]:
    """The running processes of a process group, from /proc (Linux)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == group and state != "Z":
            members.append(int(stat.parent.name))
    return members


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
