"""The composition root: the one place that turns settings into a working RAG service.

The ``ask`` CLI and the API server build their service with :func:`open_service` /
:func:`open_local`; the app caches the same parts (:func:`load_retrieval`,
:func:`open_llm`) separately per process, so that a new LLM setting does not reload the
corpus, and puts them together as :class:`LocalRag` does here.
"""

from __future__ import annotations

from pipeline.core.gpu import gpus
from pipeline.core.settings import Settings
from pipeline.generation.llm import LLMBackend, open_backend, resolve_backend
from pipeline.generation.memory_plan import MemoryPlan, plan_memory
from pipeline.generation.supervisor import EngineSupervisor, Planner
from pipeline.generation.token_count import TokenCounter, load_token_counter
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.loading import load_retrieval
from pipeline.retrieval.service import RetrievalService
from pipeline.serving.interface import RagService
from pipeline.serving.local import LocalRag


def engine_supervisor(settings: Settings) -> EngineSupervisor:
    """A supervisor for the `vllm serve` child of the local backend (logs in the cache)."""
    return EngineSupervisor(settings.resolved_cache_dir / "logs")


def memory_planner(retrieval: RetrievalService) -> Planner:
    """Plans the engine's GPU share beside what ``retrieval`` keeps on the GPU, from the
    cards' free memory at the moment the engine starts."""

    def plan(settings: Settings) -> MemoryPlan | None:
        cards = gpus()
        return plan_memory(settings, cards, retrieval.gpu_use, retrieval.size) if cards else None

    return plan


def open_llm(
    settings: Settings, retrieval: RetrievalService, supervisor: EngineSupervisor | None = None
) -> tuple[LLMBackend, TokenCounter]:
    """The LLM backend and the counter of its tokens. The local backend starts its
    engine through ``supervisor`` (one is made if none is given), sized by the memory
    plan beside ``retrieval``."""
    if supervisor is None and resolve_backend(settings) == "local":
        supervisor = engine_supervisor(settings)
    if supervisor is not None:
        supervisor.planner = memory_planner(retrieval)
    return open_backend(settings, supervisor), load_token_counter(settings)


def open_local(
    settings: Settings,
    *,
    supervisor: EngineSupervisor | None = None,
    passages: PassageStore | None = None,
    dense_in_background: float | None = None,
) -> LocalRag:
    """Retrieval, the LLM backend and the token counter for these (server) settings."""
    retrieval = load_retrieval(settings, passages, dense_in_background=dense_in_background)
    return LocalRag(settings, retrieval, *open_llm(settings, retrieval, supervisor))


def open_client(settings: Settings) -> RagService:
    """The RAG API's client for ``api.url`` (the openai SDK is imported only then)."""
    from pipeline.serving.client import RagApiClient

    return RagApiClient.from_settings(settings)


def open_service(settings: Settings, **local_options) -> RagService:
    """The RAG API's client when ``api.url`` is set (the UI as a client), else the
    service in this process."""
    return open_client(settings) if settings.api.url else open_local(settings, **local_options)
