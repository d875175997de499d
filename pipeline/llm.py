"""LLM backends behind LlamaIndex's ``LLM`` interface, chosen in settings.

- ``local``: a supervised `vllm serve` child process (see :mod:`pipeline.supervisor`);
- ``remote``: any OpenAI-compatible endpoint (a `vllm serve` fleet behind a load balancer);
- ``none``: no generation; answers are search results (search-only mode).

Both generating backends are ``OpenAILike`` on the completions endpoint, fed the
Llama-2 prompt built in :mod:`pipeline.prompts`. Sampling values travel with each call
(they are per-session settings); vLLM-specific ones (top_k, repetition_penalty,
add_special_tokens) go in ``extra_body``.
"""

from __future__ import annotations

import functools
import importlib.util
import shlex
import shutil
import ssl
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from llama_index.llms.openai_like import OpenAILike

from pipeline.config import Settings
from pipeline.supervisor import EngineSupervisor

BackendKind = Literal["local", "remote", "none"]


def resolve_backend(settings: Settings) -> BackendKind:
    """The backend ``auto`` stands for: remote when a URL is set, local on a GPU host
    with vLLM installed, none otherwise."""
    chosen = settings.llm.backend
    if chosen != "auto":
        return chosen
    if settings.llm.base_url:
        return "remote"
    if vllm_available(settings) and gpu_available():
        return "local"
    return "none"


def vllm_available(settings: Settings) -> bool:
    program = shlex.split(settings.llm.serve_command)[0]
    return shutil.which(program) is not None or (program == "vllm" and importlib.util.find_spec("vllm") is not None)


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def make_llm(settings: Settings, base_url: str, http_client: httpx.Client | None = None) -> OpenAILike:
    """A LlamaIndex LLM for an OpenAI-compatible completions endpoint. No retries: a
    failure must reach the user now, with the retrieval results, not after backoffs."""
    return OpenAILike(
        http_client=http_client,
        model=settings.llm.model,
        api_base=base_url,
        api_key=settings.llm.api_key.get_secret_value() or "EMPTY",
        is_chat_model=False,
        context_window=settings.llm.max_model_len,
        max_tokens=None,
        temperature=0.0,
        timeout=settings.llm.timeout_s,
        max_retries=0,
    )


def sampling_kwargs(settings: Settings, max_tokens: int) -> dict[str, Any]:
    """Per-call completion parameters; greedy unless ``do_sample``."""
    generation = settings.generation
    sampling = generation.do_sample
    return {
        "max_tokens": max_tokens,
        "temperature": generation.temperature if sampling else 0.0,
        "top_p": generation.top_p if sampling else 1.0,
        "stream_options": {"include_usage": True},
        "extra_body": {
            "top_k": generation.top_k if sampling and generation.top_k > 0 else -1,
            "repetition_penalty": generation.repetition_penalty,
            "add_special_tokens": False,
        },
    }


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every connection (loading the CA bundle takes ~50 ms)."""
    return ssl.create_default_context()


@dataclass
class LLMBackend:
    """The LLM as configured: which kind, where, and the LlamaIndex LLM to call."""

    kind: BackendKind
    base_url: str = ""
    llm: OpenAILike | None = None
    supervisor: EngineSupervisor | None = None

    def generation_llm(self, settings: Settings) -> tuple[OpenAILike, httpx.Client]:
        """An LLM on its own HTTP connection, for one streamed answer: closing that
        connection when the reader goes away makes vLLM abort the request."""
        connection = httpx.Client(timeout=settings.llm.timeout_s, verify=_tls_context())
        return make_llm(settings, self.base_url, http_client=connection), connection

    def health(self, settings: Settings, timeout_s: float = 3.0) -> tuple[bool, str, str]:
        """(reachable, English, Japanese) from ``GET /v1/models``, the part of the
        OpenAI API every compatible server has."""
        if self.kind == "none":
            return False, "no LLM configured", "LLM は設定されていません（検索のみ）。"
        if self.supervisor is not None:
            status = self.supervisor.status()
            if status.state != "ready":
                return False, f"local engine {status.state}: {status.en}", status.ja or status.state
        headers = {}
        key = settings.llm.api_key.get_secret_value()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = httpx.get(f"{self.base_url}/models", headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return (
                False,
                f"{self.base_url} unreachable: {type(exc).__name__}",
                f"LLM サーバー {self.base_url} に接続できません。",
            )
        if response.status_code != 200:
            return (
                False,
                f"{self.base_url}/models answered HTTP {response.status_code}",
                f"LLM サーバーが HTTP {response.status_code} を返しました（API キーや URL を確認してください）。",
            )
        return True, "ready", "稼働中"


def open_backend(settings: Settings, supervisor: EngineSupervisor | None = None) -> LLMBackend:
    """The backend the settings ask for. ``local`` needs the process-wide supervisor;
    its engine is started here if it is not running (readiness is awaited elsewhere)."""
    kind = resolve_backend(settings)
    if kind == "none":
        return LLMBackend("none")
    if kind == "remote":
        base_url = settings.llm.base_url.rstrip("/")
        return LLMBackend("remote", base_url, make_llm(settings, base_url))
    if supervisor is None:
        raise ValueError("the local backend needs an EngineSupervisor")
    if supervisor.status().state == "stopped":
        supervisor.start(settings)
    return LLMBackend("local", supervisor.base_url, make_llm(settings, supervisor.base_url), supervisor)
