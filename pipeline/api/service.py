"""The serving logic behind the API routes: one runtime per process (the owner of
retrieval, the LLM backend and the engine, closed with the app), settings per request,
and a bounded number of concurrent generations. No per-user state: any replica serves
any request."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from starlette.concurrency import run_in_threadpool

from pipeline.api.errors import Problem, RequestError, field_error
from pipeline.api.protocol import REQUEST_FIELDS
from pipeline.api.streams import Relay
from pipeline.core.errors import EmptyQueryError, SettingsError
from pipeline.core.schema import ServiceStatus, Turn
from pipeline.serving.admin import LocalAdmin
from pipeline.serving.local import LocalRag
from pipeline.serving.runtime import RagRuntime
from pipeline.settings.model import Settings
from pipeline.settings.sources import with_session_values

logger = logging.getLogger(__name__)

#: Request settings kept validated (:meth:`ApiService.request_settings`); past that, the
#: least recently asked for goes.
VALIDATED_SETTINGS_KEPT = 256


class ApiService:
    def __init__(self, settings: Settings) -> None:
        self.runtime = RagRuntime(settings)
        self.admin = LocalAdmin(self.runtime)
        self.state = "loading"
        self.error = ""
        self._slots = threading.BoundedSemaphore(settings.api.max_concurrent_generations)
        #: The server settings and, by their JSON, the requests' settings made from them,
        #: the most recently asked for last: validating a request's few values costs two
        #: validations of the whole settings object (0.22 ms on the dev machine,
        #: bench.request_cpu: CPU time under the GIL that a burst's other requests wait
        #: for), and clients send the same few combinations again and again. Requests with
        #: the same values share one object, as requests without any always shared the
        #: server's: settings are values, never changed in place.
        self._validated: tuple[Settings, OrderedDict[str, Settings]] = (settings, OrderedDict())

    @property
    def settings(self) -> Settings:
        """The server settings now (an admin's save replaces them)."""
        return self.runtime.settings

    @property
    def rag(self) -> LocalRag | None:
        return self.runtime.service if self.state == "ready" else None

    def load(self) -> None:
        """Load retrieval and connect the LLM (called once, at start-up)."""
        try:
            self.runtime.service  # noqa: B018 - loads it
            self.state = "ready"
        except Exception as exc:  # the process stays up and /readyz says why
            logger.exception("loading failed")
            self.state, self.error = "failed", getattr(exc, "en", str(exc))

    def close(self) -> None:
        self.runtime.close()

    # -- requests ----------------------------------------------------------------------

    def request_settings(
        self, fields: dict[str, Any], rag_settings: dict[str, Any] | None = None, names: dict[str, str] = REQUEST_FIELDS
    ) -> Settings:
        """The settings for one request: its fields (``names`` maps them to settings; by
        default the seed's and OpenAI's sampling fields) and its ``rag_settings``; an
        invalid value is refused naming the request field. Prompts may be replaced only
        where the operator allows it (``api.allow_prompt_override``): otherwise the RAG
        API would be a general relay to the LLM."""
        updates = {names[k]: v for k, v in fields.items() if k in names and v is not None}
        temperature = updates.get("generation.temperature")
        if isinstance(temperature, int | float) and temperature > 0 and fields.get("do_sample") is None:
            updates["generation.do_sample"] = True  # an explicit temperature asks for sampling
        rag_settings = rag_settings or {}
        prompts = [path for path in rag_settings if path.startswith("prompts.")]
        if prompts and not self.settings.api.allow_prompt_override:
            raise RequestError(
                403,
                [
                    Problem(
                        f"rag_settings.{path}",
                        f"{path} cannot be set per request: the operator has not enabled api.allow_prompt_override "
                        "(RAG_API_ALLOW_PROMPT_OVERRIDE)",
                        f"この API ではプロンプト（{path}）をリクエストごとに変えることは許可されていません。"
                        "運用者が api.allow_prompt_override（RAG_API_ALLOW_PROMPT_OVERRIDE）を true にすると使えます。",
                    )
                    for path in prompts
                ],
                code="prompt_override_disabled",
            )
        updates.update(rag_settings)
        base, validated = self._validated
        if base is not self.settings:  # an admin's save: the old requests' settings go with it
            base, validated = self._validated = (self.settings, OrderedDict())
        key = json.dumps(updates, sort_keys=True)
        if key in validated:
            validated.move_to_end(key)
            return validated[key]
        try:
            settings = with_session_values(base, updates)
        except SettingsError as exc:
            named = {path: name for name, path in names.items() if fields.get(name) is not None}
            problems = [Problem(named.get(p.field, f"rag_settings.{p.field}"), p.en, p.ja) for p in exc.problems]
            raise RequestError(422, problems, code="invalid_value") from None
        validated[key] = settings
        if len(validated) > VALIDATED_SETTINGS_KEPT:
            validated.popitem(last=False)  # the least recently asked for
        return settings

    def check_question(self, question: str, field: str = "question") -> None:
        if not question.strip():
            error = EmptyQueryError()
            raise field_error(field, error.en, error.ja, code="empty_question")
        limit = self.settings.retrieval.max_query_chars
        if len(question) > limit:
            raise field_error(
                field,
                f"the question has {len(question):,} characters; the limit is {limit:,}",
                f"質問が長すぎます（{len(question):,} 文字）。{limit:,} 文字以内にしてください。",
                code="question_too_long",
            )

    async def answer(self, question: str, history: list[Turn], settings: Settings) -> Relay:
        """Retrieve and start generating, holding a generation slot (429 at once when none
        is free: no unbounded queue). The slot is released here on failure, else when the
        answer's stream ends (:class:`pipeline.api.streams.Relay`)."""
        if not self._slots.acquire(blocking=False):
            limit, wait = self.settings.api.max_concurrent_generations, self.settings.api.retry_after_s
            problem = Problem(
                None,
                f"more than {limit} generations are running; retry later",
                f"ただいま混み合っています（同時に {limit} 件まで）。{wait} 秒ほど待ってからもう一度お試しください。",
            )
            raise RequestError(429, problem, code="too_many_generations", headers={"Retry-After": str(wait)})
        arrived, loop = time.perf_counter(), asyncio.get_running_loop()
        # Who frees the slot: this coroutine until the relay starts, the relay after. A
        # task cancelled while its worker thread prepares (asyncio's cancel does not wait
        # for the thread) frees the slot here, and the thread, finding the answer
        # abandoned, closes it instead of starting a generation nobody reads.
        handover = threading.Lock()
        relays: list[Relay] = []
        abandoned = threading.Event()

        def started() -> Relay | None:
            waited_ms = (time.perf_counter() - arrived) * 1000.0  # for a worker thread of the pool
            stream = self.rag.answer(question, history, settings)
            stream.answer.timings["queue"] = waited_ms
            with handover:
                if abandoned.is_set():
                    stream.close()
                    return None
                relays.append(Relay(stream, loop, self._slots.release))  # the engine's request goes out now
                return relays[0]

        try:
            relay = await run_in_threadpool(started)
        except BaseException:
            with handover:  # from here on the thread starts no relay
                abandoned.set()
            if relays:  # it frees the slot when it stops, at its next chunk
                relays[0].left.set()
            else:
                self._slots.release()
            raise
        assert relay is not None  # None only once abandoned, which raised above
        return relay

    def ready(self) -> tuple[int, ServiceStatus]:
        if self.rag is None:
            state = "loading" if self.state == "loading" else "failed"
            return 503, ServiceStatus(state=state, error=self.error)
        return 200, self.rag.status()
