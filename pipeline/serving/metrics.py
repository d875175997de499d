"""Metrics an operator can scrape, in Prometheus's format, named in the style of vLLM's
own (``vllm:time_to_first_token_seconds`` there, ``jawiki_rag:time_to_first_token_seconds``
here) so that one dashboard shows the engine and the product side by side.

One set per process, kept in prometheus_client's default registry (which also carries
the process's CPU seconds and memory), fed by the local service whatever fronts it: the
RAG API serves it at ``/metrics``, the app on ``metrics.port`` when the operator sets one.

- ``jawiki_rag:request_step_seconds{step}``: each step of an answer's critical path in
  order: queue (the API's wait for a worker thread), condense, embed, search, fetch,
  rerank, prompt (building and counting it), handoff (from the prepared answer to the
  engine's request), ttft (the engine's first token as the product saw it), relay (that
  token's way to the response), generation;
- ``jawiki_rag:time_to_first_token_seconds``: from the question to its first token;
  ``jawiki_rag:e2e_request_latency_seconds``: to its last;
- ``jawiki_rag:num_requests_running``: answers being produced (the API refuses rather
  than queues past its limit: see the refusals, reason ``too_many_generations``);
- ``jawiki_rag:request_success_total{finished_reason}``: stop, length, search_only
  (no model text), interrupted (cut short); ``jawiki_rag:request_errors_total{kind}``:
  the notice code of a failed generation; ``jawiki_rag:request_refused_total{reason}``:
  the API's refusals by error code (busy, invalid, unauthorised, too large …);
- ``jawiki_rag:prompt_tokens_total``, ``jawiki_rag:generation_tokens_total``;
- ``jawiki_rag:search_request_seconds``: retrieval-only requests.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest, start_http_server

from pipeline.core.schema import Answer

logger = logging.getLogger(__name__)

#: Seconds, from a millisecond step to a long answer.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
#: The answer's timings (milliseconds) that are steps of its critical path, observed when
#: it ends; ``relay`` is observed as it happens (:func:`observe_step`): a short answer
#: can end before its first text has reached the response.
STEPS = ("queue", "condense", "embed", "search", "fetch", "rerank", "prompt", "handoff", "ttft", "generation")

STEP_SECONDS = Histogram(
    "jawiki_rag:request_step_seconds", "Seconds of each step of answering a question.", ["step"], buckets=BUCKETS
)
TIME_TO_FIRST_TOKEN = Histogram(
    "jawiki_rag:time_to_first_token_seconds", "Seconds from a question to its answer's first token.", buckets=BUCKETS
)
E2E_LATENCY = Histogram(
    "jawiki_rag:e2e_request_latency_seconds", "Seconds from a question to its answer's end.", buckets=BUCKETS
)
SEARCH_SECONDS = Histogram("jawiki_rag:search_request_seconds", "Seconds of a retrieval-only request.", buckets=BUCKETS)
RUNNING = Gauge("jawiki_rag:num_requests_running", "Answers being produced.")
SUCCESS = Counter("jawiki_rag:request_success", "Answers finished, by how.", ["finished_reason"])
ERRORS = Counter("jawiki_rag:request_errors", "Generations that failed, by the notice's code.", ["kind"])
REFUSED = Counter("jawiki_rag:request_refused", "Requests the API refused, by error code.", ["reason"])
PROMPT_TOKENS = Counter("jawiki_rag:prompt_tokens", "Prompt tokens sent to the LLM.")
GENERATION_TOKENS = Counter("jawiki_rag:generation_tokens", "Tokens the LLM generated.")


def observe_step(name: str, milliseconds: float) -> None:
    STEP_SECONDS.labels(name).observe(milliseconds / 1000.0)


def observe_answer(answer: Answer, seconds: float, first_token_s: float | None) -> None:
    """Count one finished answer (``seconds`` from the question to its end)."""
    timings = answer.timings
    for step in STEPS:
        if step in timings:
            observe_step(step, timings[step])
    if first_token_s is not None:
        TIME_TO_FIRST_TOKEN.observe(first_token_s)
    E2E_LATENCY.observe(seconds)
    PROMPT_TOKENS.inc(timings.get("prompt_tokens", timings.get("prompt_tokens_estimated", 0.0)))
    GENERATION_TOKENS.inc(timings.get("completion_tokens", 0.0))
    if answer.error is not None:
        ERRORS.labels(answer.error.code).inc()
    if not answer.complete:
        reason = "interrupted"
    elif answer.mode == "search-only":
        reason = "search_only"
    else:
        reason = "length" if answer.finish_reason == "length" else "stop"
    SUCCESS.labels(reason).inc()


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsEndpoint:
    """The app's own scrape endpoint (``metrics.host`` / ``metrics.port``): one at a time,
    moved when the settings move it and closed when they turn it off, so that no earlier
    address stays open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server = None
        self.address: tuple[str, int] | None = None

    def serve(self, host: str, port: int) -> None:
        """Serve on ``host:port`` (port 0: not at all), closing an earlier address."""
        with self._lock:
            if self.address == (host, port) or (self.address is None and not port):
                return
            self._close()
            if port:
                self.address = (host, port)  # tried once per address, not at every page run
                try:
                    self._server, _thread = start_http_server(port, addr=host)
                except OSError as exc:  # the port taken: the app goes on without its metrics
                    logger.error("metrics not served on %s:%s: %s", host, port, exc)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._server, self.address = None, None
