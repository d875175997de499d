"""The one owner, per process, of what the product starts: retrieval (the corpus, BM25,
the query encoder and the vectors it may keep on the GPU), the LLM backend, the
`vllm serve` child and a data download.

Every entry point holds one :class:`RagRuntime` and closes it on every way out: the app
(a cached resource released at shutdown and at exit), the RAG API (its lifespan), the
command-line tools (``with``, SIGTERM included). :meth:`RagRuntime.close` stops the
engine with its whole process group and lets go of the GPU memory; nothing the product
starts outlives the process that started it.

:meth:`RagRuntime.reload` applies new server settings by rebuilding only what they
touch: a new ``llm.timeout_s`` rebuilds nothing, a new ``index.backend`` only the
vectors (the old ones are let go first, so two copies never share the card), a new
``llm.model`` restarts the engine. Like vLLM's engine client, it is also a context
manager.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from pipeline.core.gpu import GpuMemory, ProductGpuUse, gpus
from pipeline.core.schema import EngineStatus, ReloadReport
from pipeline.generation.llm import LLMBackend, open_backend, resolve_backend
from pipeline.generation.memory_plan import MemoryPlan, plan_memory
from pipeline.generation.supervisor import EngineSupervisor, stop_process_group
from pipeline.generation.token_count import TokenCounter, load_token_counter
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.loading import PARTS, load_retrieval, reusable_parts, touches_retrieval
from pipeline.retrieval.service import RetrievalService
from pipeline.serving.local import LocalRag
from pipeline.settings.model import Settings

logger = logging.getLogger(__name__)

#: Settings that shape the LLM backend and its token counter (a new one is made).
LLM_PATHS = (
    "profile",
    "cache_dir",
    "hub_mirror",
    "llm.backend",
    "llm.base_url",
    "llm.api_key",
    "llm.model",
    "llm.prompt_format",
    "llm.max_model_len",
)
#: Settings the running `vllm serve` was started with (a restart applies them).
ENGINE_PATHS = (
    "cache_dir",
    "hub_mirror",
    "llm.model",
    "llm.dtype",
    "llm.gpu_memory_utilization",
    "llm.quantization",
    "llm.kv_cache_dtype",
    "llm.extra_args",
    "llm.tensor_parallel_size",
    "llm.max_model_len",
    "llm.serve_command",
    "llm.port",
)
#: The demo corpus's size, for a memory plan made before anything is loaded.
JAWIKI_PASSAGES, DEMO_PASSAGES = 5_555_583, 1_145


def changed_paths(before: Settings, after: Settings) -> list[str]:
    """Dotted paths of the fields that differ (secrets compared by value)."""
    old, new = before.model_dump(), after.model_dump()
    changed = []
    for key, value in new.items():
        if isinstance(value, dict):
            changed += [f"{key}.{name}" for name, sub in value.items() if old[key].get(name) != sub]
        elif old[key] != value:
            changed.append(key)
    return changed


def _touches(changed: list[str], paths: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(f"{p}.") for path in changed for p in paths)


class RagRuntime:
    """Owns retrieval, the LLM backend and the engine supervisor of one process.

    >>> with RagRuntime(load_settings()) as runtime:
    ...     print(runtime.service.answer("梅雨とは？").consume().text)
    """

    def __init__(
        self,
        settings: Settings,
        *,
        passages: PassageStore | None = None,
        dense_in_background: bool = False,
        supervisor: EngineSupervisor | None = None,
    ) -> None:
        self.settings = settings
        self._passages = passages
        self._dense_in_background = dense_in_background
        self.supervisor = supervisor or EngineSupervisor(settings.resolved_cache_dir / "logs")
        self.supervisor.planner = self._plan_engine
        self._retrieval: RetrievalService | None = None
        self._backend: LLMBackend | None = None
        self._tokens: TokenCounter | None = None
        self._service: LocalRag | None = None
        self._download: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._closed = False
        #: The last settings that could not be loaded, and why (see :meth:`reload`).
        self.failed: tuple[Settings, Exception] | None = None
        #: How often each part was loaded: the retrieval parts, ``llm`` and ``engine``.
        self.loads: Counter[str] = Counter()

    # -- the service -------------------------------------------------------------------

    @property
    def service(self) -> LocalRag:
        """The RAG service over the current parts (loaded on first use). Requests read it
        without waiting for a reload in progress: they get the service it replaces."""
        service = self._service
        if service is not None:
            return service
        with self._lock:
            if self._service is None:
                self._load(self.settings, reuse=None, new_llm=True)
            return self._service

    @property
    def retrieval(self) -> RetrievalService | None:
        """The loaded retrieval service, if any (not loading it)."""
        return self._retrieval

    def _load(self, settings: Settings, reuse: RetrievalService | None, new_llm: bool) -> None:
        if self._closed:
            raise RuntimeError("the runtime is closed")
        retrieval = self._retrieval
        if retrieval is None or reuse is not None:
            retrieval = load_retrieval(
                settings, self._passages, dense_in_background=self._dense_in_background, reuse=reuse
            )
            self.loads.update(retrieval.loaded)
        if new_llm or self._backend is None:
            try:
                self._backend = open_backend(settings, self.supervisor)
                self._tokens = load_token_counter(settings)
            except BaseException:
                if retrieval is not self._retrieval:  # loaded for nothing: let go of what is its own
                    retrieval.close(successor=self._retrieval)
                raise
            self.loads["llm"] += 1
        self.settings, self._retrieval = settings, retrieval
        retrieval.settings = settings
        self._service = LocalRag(settings, retrieval, self._backend, self._tokens)

    # -- changes -----------------------------------------------------------------------

    def reload(self, settings: Settings) -> ReloadReport:
        """Apply new server settings, rebuilding only what they touch and letting go of
        what that replaces before loading its successor. A running local engine whose
        settings changed is restarted (not waited for: see ``supervisor.wait_ready``).

        Settings that cannot be loaded (a corpus that is not there, say) raise, after the
        runtime went back to the settings it ran with; they are remembered in
        :attr:`failed`, so that a caller need not try them again and again."""
        with self._lock:
            before, old = self.settings, self._retrieval
            try:
                report = self._reload(settings)
            except Exception as exc:
                logger.warning("reload failed, going back to the settings before: %s", getattr(exc, "en", exc))
                self.failed = (settings, exc)
                self._recover(before, old)
                raise
            self.failed = None
            return report

    def _recover(self, before: Settings, old: RetrievalService | None) -> None:
        """Back to ``before`` after a reload that failed midway: the parts it let go of
        loaded again, the engine started again as it ran."""
        try:
            if old is not None and self._retrieval is old:
                self._load(before, reuse=old, new_llm=True)
                if old is not self._retrieval:
                    old.close(successor=self._retrieval)
            started = self.supervisor.started_with
            ran_before = started is not None and not _touches(changed_paths(started, before), ENGINE_PATHS)
            if resolve_backend(before) == "local" and not (ran_before and self.supervisor.status().state != "stopped"):
                self.supervisor.start(before)
        except Exception:  # the original failure is what the caller hears of
            logger.exception("could not go back to the settings before the failed reload")

    def _reload(self, settings: Settings) -> ReloadReport:
        changed = changed_paths(self.settings, settings)
        report = ReloadReport(changed=changed)
        if not changed:
            return report
        if self._service is None:  # nothing loaded yet: the next use loads these settings
            self.settings = settings
            return report
        old = self._retrieval
        reloads = touches_retrieval(old.settings, settings)
        kept = reusable_parts(old, settings) if reloads else set(PARTS)
        old.release(part for part in PARTS if part not in kept)
        was_local = self._backend.kind == "local"
        now_local = resolve_backend(settings) == "local"
        new_llm = _touches(changed, LLM_PATHS) or was_local != now_local
        if was_local and now_local and _touches(changed, ENGINE_PATHS):
            self.supervisor.start(settings)
            report.engine = "restarting"
        elif was_local and not now_local:
            self.supervisor.stop()
            report.engine = "stopped"
        elif now_local and not was_local:
            report.engine = "starting"  # open_backend starts it
        loads = self.loads.copy()
        self._load(settings, reuse=old if reloads else None, new_llm=new_llm)
        if old is not self._retrieval:
            old.close(successor=self._retrieval)
        report.retrieval = [part for part in PARTS if self.loads[part] > loads[part]]
        report.llm = self.loads["llm"] > loads["llm"]
        if report.engine in ("restarting", "starting"):
            self.loads["engine"] += 1
        logger.info("reloaded after %s: %s", ", ".join(changed), report.model_dump())
        return report

    def restart_engine(self) -> EngineStatus:
        """Start the local engine again with the current settings (not waiting for it)."""
        with self._lock:
            self.loads["engine"] += 1
            return self.supervisor.start(self.settings)

    def memory_plan(self, settings: Settings | None = None) -> MemoryPlan | None:
        """The engine's GPU share for these (server) settings on this host, with what this
        process measured when the loaded search matches them; the running engine's share
        counts as free (a restart gives it back first). None without a GPU."""
        settings = settings or self.settings
        cards = gpus()
        if not cards:
            return None
        engine = self.supervisor.status()
        running = engine.utilization or 0.0 if engine.state in ("starting", "ready") else 0.0
        return self._plan(settings, cards, running)

    def _plan_engine(self, settings: Settings) -> MemoryPlan | None:
        """The plan the supervisor sizes each start with (the old engine already stopped)."""
        cards = gpus()
        return self._plan(settings, cards, 0.0) if cards else None

    def _plan(self, settings: Settings, cards: list[GpuMemory], running: float) -> MemoryPlan:
        loaded = self._retrieval
        if loaded is not None and loaded.settings.index.backend == settings.index.backend:
            return plan_memory(settings, cards, loaded.gpu_use, loaded.size, running)
        rows = loaded.size if loaded is not None else (DEMO_PASSAGES if settings.demo else JAWIKI_PASSAGES)
        return plan_memory(settings, cards, ProductGpuUse(0.0, 0.0, measured=False), rows, running)

    # -- a download -------------------------------------------------------------------

    def start_download(self, log: Path) -> bool:
        """Start ``python -m pipeline.download`` for the jawiki profile, its output in
        ``log``; False when one is already running. The runtime owns it: closing stops it
        (it resumes where it stopped next time)."""
        with self._lock:
            if self._download is not None and self._download.poll() is None:
                return False
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w", encoding="utf-8") as out:
                self._download = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.download", "--profile", "jawiki"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            return True

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine (its process group) and a download, let go of the GPU memory.
        Idempotent; safe from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.supervisor.stop()
            download, self._download = self._download, None
            if download is not None and download.poll() is None:
                stop_process_group(download, grace_s=10.0)
            if self._retrieval is not None:
                self._retrieval.close()
            self._service = None
            logger.info("runtime closed")

    def __enter__(self) -> RagRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def closed_on_signals(runtime: RagRuntime) -> Iterator[RagRuntime]:
    """For command-line tools: SIGTERM (and SIGHUP) end the program as Ctrl-C does, by an
    exception, so that the runtime is closed on the way out instead of the process
    vanishing with its engine still running."""

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous: dict[int, Callable | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, leave)
    try:
        with runtime:
            yield runtime
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
