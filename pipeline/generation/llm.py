"""LLM backends behind LlamaIndex's ``LLM`` interface, chosen in settings.

- ``local``: a supervised `vllm serve` child process (:mod:`pipeline.generation.supervisor`);
- ``remote``: any OpenAI-compatible endpoint (a `vllm serve` fleet behind a load balancer);
- ``none``: no generation; answers are search results (search-only mode).

Both generating backends are :class:`~pipeline.generation.engine_llm.EngineLLM`, a
LlamaIndex ``LLM`` for OpenAI-compatible servers, so the chat engine speaks messages to
every model. In the ``llama2`` prompt format (ELYZA) it is a completions
model whose ``messages_to_prompt`` renders them in the Llama-2 format
(:func:`pipeline.generation.prompts.llama2_prompt`); in the ``chat-template`` format it is
a chat model and vLLM applies the model's template
(:mod:`pipeline.generation.prompt_formats`). Sampling values travel with each call (they
are per-session settings); vLLM-specific ones (top_k, repetition_penalty,
add_special_tokens) go in ``extra_body``.
"""

from __future__ import annotations

import functools
import http.cookiejar
import shutil
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx

from pipeline.core.schema import LLMStatus
from pipeline.core.secrets import shown_url
from pipeline.generation.prompt_formats import resolve_prompt_format
from pipeline.generation.prompts import llama2_prompt
from pipeline.generation.supervisor import EngineSupervisor, engine_program
from pipeline.settings.model import Settings

if TYPE_CHECKING:  # imported with the first LLM, not by the app's first page
    from pipeline.generation.engine_llm import EngineLLM

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
    return shutil.which(engine_program(settings)[0]) is not None


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def make_llm(settings: Settings, base_url: str, http_client: httpx.Client) -> EngineLLM:
    """A LlamaIndex LLM for an OpenAI-compatible server on ``http_client``. No retries: a
    failure must reach the user now, with the retrieval results, not after backoffs."""
    from pipeline.generation.engine_llm import EngineLLM

    chat = resolve_prompt_format(settings) == "chat-template"
    return EngineLLM(
        http_client,
        timeout_s=settings.llm.timeout_s,
        model=settings.llm.model,
        api_base=base_url.rstrip("/"),
        api_key=settings.llm.api_key.get_secret_value() or "EMPTY",
        is_chat_model=chat,
        messages_to_prompt=None if chat else llama2_prompt,
        context_window=settings.llm.max_model_len,
    )


def request_kwargs(settings: Settings, max_tokens: int) -> dict[str, Any]:
    """Per-call completion parameters: the session's sampling (greedy unless
    ``do_sample``); a Llama-2 prompt is sent as is (``add_special_tokens`` false: it
    carries its own ``<s>``), a chat request as vLLM's template renders it."""
    sampling = settings.generation.sampling()
    extra_body: dict[str, Any] = {
        "top_k": sampling["top_k"],
        "repetition_penalty": settings.generation.repetition_penalty,
    }
    if resolve_prompt_format(settings) == "llama2":
        extra_body["add_special_tokens"] = False
    return {
        "max_tokens": max_tokens,
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "extra_body": extra_body,
    }


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every connection (loading the CA bundle takes ~50 ms)."""
    return ssl.create_default_context()


@functools.cache
def engine_connections() -> httpx.Client:
    """The process's keep-alive connections to LLM servers, shared by every answer.

    Each answer used to open a connection of its own and close it after: on the dev
    machine that was ~20 % of the API's CPU time per request (py-spy, 2026-12-06), CPU
    that a burst's requests pay one after another under the GIL, and a connection for the
    engine's front end to accept every time (the load generator's clients keep theirs).
    A stream left early still aborts its request: a response closed before its end closes
    its connection instead of returning it to the pool (:meth:`EngineLLM.close`). The
    timeout is each request's (``llm.timeout_s``, a per-request setting).

    An idle connection is dropped after :data:`KEEP_ALIVE_S`, well before the server
    drops it (uvicorn's default, which ``vllm serve`` keeps, is 5 s): httpcore does not
    retry a request sent on a connection the server closed as it was reused. No cap on
    idle connections: httpcore counts busy ones against it too and then closes idle ones
    that it may just have handed out. Cookies are refused: one jar for every answer would
    let a load balancer's sticky-session cookie pin them all to one replica."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=KEEP_ALIVE_S)
    refusing = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(verify=_tls_context(), limits=limits, cookies=refusing)


#: Seconds an idle connection to an LLM server is kept for the next answer.
KEEP_ALIVE_S = 2.0


@dataclass
class LLMBackend:
    """The LLM as configured: which kind, where, and how to reach it."""

    kind: BackendKind
    url: str = ""
    supervisor: EngineSupervisor | None = None

    @property
    def base_url(self) -> str:
        """Where to send requests; for the local engine, wherever it runs now (a restart
        to apply new engine settings gives it a new port)."""
        return self.supervisor.base_url if self.supervisor is not None else self.url

    @property
    def generates(self) -> bool:
        return self.kind != "none"

    def connect(self, settings: Settings) -> EngineLLM:
        """An LLM for one answer, on the process's pooled connections; closing it when the
        reader goes away makes vLLM abort the request."""
        return make_llm(settings, self.base_url, http_client=engine_connections())

    def status(self, settings: Settings, timeout_s: float = 3.0) -> LLMStatus:
        """Reachability from ``GET /v1/models``, the part of the OpenAI API every
        compatible server has (the local engine's own state first)."""
        status = LLMStatus(
            backend=self.kind, model=settings.llm.model if self.generates else None, url=shown_url(self.base_url)
        )
        if not self.generates:
            status.detail_en, status.detail_ja = "no LLM configured", "LLM は設定されていません（検索のみ）。"
            return status
        if self.supervisor is not None:
            engine = self.supervisor.status()
            status.engine_state, status.log_tail = engine.state, engine.log_tail
            if engine.state != "ready":
                status.detail_en = f"local engine {engine.state}: {engine.en}"
                status.detail_ja = engine.ja or engine.state
                return status
        key = settings.llm.api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = httpx.get(f"{self.base_url}/models", headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            status.detail_en = f"{self.base_url} unreachable: {type(exc).__name__}"
            status.detail_ja = f"LLM サーバー {self.base_url} に接続できません。"
            return status
        if response.status_code != 200:
            status.detail_en = f"{self.base_url}/models answered HTTP {response.status_code}"
            status.detail_ja = (
                f"LLM サーバーが HTTP {response.status_code} を返しました（API キーや URL を確認してください）。"
            )
            return status
        status.reachable, status.detail_en, status.detail_ja = True, "ready", "稼働中"
        return status


def open_backend(settings: Settings, supervisor: EngineSupervisor | None = None) -> LLMBackend:
    """The backend the settings ask for. ``local`` needs the process-wide supervisor;
    its engine is started here if it is not running (readiness is awaited elsewhere)."""
    kind = resolve_backend(settings)
    if kind == "none":
        return LLMBackend("none")
    if kind == "remote":
        return LLMBackend("remote", settings.llm.base_url.rstrip("/"))
    if supervisor is None:
        raise ValueError("the local backend needs an EngineSupervisor")
    if supervisor.status().state == "stopped":
        supervisor.start(settings)
    return LLMBackend("local", supervisor=supervisor)
