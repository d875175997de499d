"""The RAG API as the UI sees a local service: when ``api.url`` (RAG_API_URL, or
``streamlit run streamlit_app.py -- --api-url URL``) is set, the pages call this client,
which implements :class:`~pipeline.serving.interface.RagService` over HTTP.

Answers stream through the official ``openai`` SDK from ``/v1/chat/completions``; the
RAG's record rides in each response's ``rag`` field and is validated with the same
:class:`~pipeline.core.schema.Answer` model the engine fills. Whatever this session set
for itself (retrieval, sampling, prompts: the session fields of the settings) travels in
``rag_settings``; the API server's own settings apply to the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import openai
from openai import Stream
from openai.types.chat import ChatCompletionChunk

from pipeline.core.errors import DataUnavailableError, EmptyQueryError, RagError
from pipeline.core.schema import RAG_MODEL_NAME, Answer, Notice, PassageContext, SearchResult, ServiceStatus, Turn
from pipeline.serving.in_flight import InFlight
from pipeline.serving.interface import AnswerStream
from pipeline.settings.model import Settings
from pipeline.settings.sources import session_changes
from pipeline.text.citations import parse_citations

#: How long a ``/readyz`` answer is reused: a page asks several times per rerun, and
#: each ask also makes the API check its LLM.
STATUS_MAX_AGE_S = 2.0


class RagApiClient:
    def __init__(self, url: str, token: str = "", timeout_s: float = 60.0, settings: Settings | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self._openai = openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=token or "none", timeout=timeout_s, max_retries=0
        )
        #: The settings this client was made with: what a session changed is the difference.
        self._defaults = settings
        self._last_status: tuple[float, ServiceStatus] | None = None
        self._in_flight = InFlight(self._release)

    @classmethod
    def from_settings(cls, settings: Settings) -> RagApiClient:
        return cls(settings.api.url, settings.api.token.get_secret_value(), settings.llm.timeout_s, settings)

    def close(self) -> None:
        """Let go of the pooled connections (a client replaced by new API settings) once
        nothing goes through them: another session may be reading an answer right now."""
        self._in_flight.close()

    def _release(self) -> None:
        self._http.close()
        self._openai.close()

    # -- the RagService interface ----------------------------------------------------

    def status(self) -> ServiceStatus:
        last = self._last_status
        if last is not None and time.monotonic() - last[0] < STATUS_MAX_AGE_S:
            return last[1]
        try:
            with self._in_flight.request():
                response = self._http.get("/readyz", timeout=5)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code == 401:
            raise self._refused(401, None)
        try:
            status = ServiceStatus.model_validate_json(response.content)
        except ValueError as exc:
            raise self._unreachable(exc) from exc
        status.api_url = self.url
        self._last_status = (time.monotonic(), status)
        return status

    def search(self, query: str, settings: Settings | None = None) -> SearchResult:
        if not query.strip():
            raise EmptyQueryError()
        body = {"query": query, "rag_settings": self.session_values(settings)}
        return SearchResult.model_validate(self._call("POST", "/v1/search", json=body))

    def passage(self, row: int) -> PassageContext:
        return PassageContext.model_validate(self._call("GET", f"/v1/passages/{row}"))

    def answer(self, question: str, history: Sequence[Turn] = (), settings: Settings | None = None) -> AnswerStream:
        """An answer streamed from ``/v1/chat/completions``: the record (sources) comes
        with the first chunk, the completed one (timings, citations) with the last."""
        if not question.strip():
            raise EmptyQueryError()
        messages = [
            {"role": role, "content": text}
            for turn in history
            for role, text in (("user", turn.question), ("assistant", turn.answer))
        ]
        messages.append({"role": "user", "content": question})
        self._in_flight.begin()  # until the stream ends
        stream: Stream[ChatCompletionChunk] | None = None
        try:
            stream = self._openai.chat.completions.create(
                model=RAG_MODEL_NAME,
                messages=messages,
                stream=True,
                extra_body={"rag_settings": self.session_values(settings)},
            )
            first = next(iter(stream))
            answer = Answer.model_validate(first.model_extra["rag"])
        except BaseException as exc:
            if stream is not None:
                stream.close()
            self._in_flight.end()
            if isinstance(exc, openai.APIStatusError):
                raise self._refused(exc.status_code, exc.body) from exc
            if isinstance(exc, (openai.APIError, StopIteration)):
                raise self._unreachable(exc) from exc
            if isinstance(exc, (KeyError, TypeError, ValueError)):  # no RAG record (ValidationError is a ValueError)
                raise self._not_rag_api("an answer without the RAG record") from exc
            raise

        def end() -> None:
            try:
                stream.close()
            finally:
                self._in_flight.end()

        return AnswerStream(answer, self._text(answer, stream), end)

    # -- helpers -----------------------------------------------------------------------

    def session_values(self, settings: Settings | None) -> dict[str, Any]:
        """The session fields where ``settings`` differ from this client's own."""
        if settings is None or self._defaults is None:
            return {}
        return session_changes(settings, self._defaults)

    def _text(self, answer: Answer, stream: Stream[ChatCompletionChunk]) -> Iterator[str]:
        try:
            for chunk in stream:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    answer.text += delta
                    yield delta
                record = (chunk.model_extra or {}).get("rag")
                if record is not None and chunk.choices and not chunk.choices[0].delta.role:
                    final = Answer.model_validate(record)
                    for name in Answer.model_fields:
                        if name != "text":
                            setattr(answer, name, getattr(final, name))
        except (openai.APIError, httpx.HTTPError, ValueError) as exc:
            # The API ends an answer the LLM cut short with an error event, after the
            # record that says why; without that record, the connection itself broke.
            if answer.error is None:
                answer.error = Notice(
                    code="api_interrupted",
                    en=f"the connection to the RAG API broke off: {type(exc).__name__}",
                    ja="RAG API との接続が途中で切れました。ここまでの回答は途中までのものです。",
                )
                answer.notices.append(answer.error)
            answer.complete = False
            report = parse_citations(answer.text, len(answer.sources))
            answer.citations.used, answer.citations.invalid = report.used, report.invalid

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One JSON request; a refused or failed one is a :class:`RagError`."""
        try:
            with self._in_flight.request():
                response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code != 200:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:200]}
            raise self._refused(response.status_code, body)
        return response.json()

    def _not_rag_api(self, what: str) -> RagError:
        return DataUnavailableError(
            en=f"{self.url} is not the RAG API (api.url set to an LLM server?): {what}",
            ja=f"{self.url} は RAG API として応答しませんでした。api.url が RAG API"
            "（python -m pipeline.api）を指しているか確認してください。",
        )

    def _unreachable(self, exc: Exception) -> RagError:
        return DataUnavailableError(
            en=f"cannot reach the RAG API at {self.url}: {type(exc).__name__}",
            ja=f"RAG API（{self.url}）に接続できません。API サーバーが動いているか、URL を確認してください。",
        )

    def _refused(self, status: int, body: object) -> RagError:
        """The API's refusal as a RagError with its Japanese message: OpenAI's error
        object on ``/v1/`` routes, FastAPI's ``detail`` on the others."""
        if status == 401:
            return DataUnavailableError(
                en=f"the RAG API at {self.url} refused the token",
                ja=f"RAG API（{self.url}）にトークンが拒否されました。api.token（RAG_API_TOKEN）を確認してください。",
            )
        error = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            if "message_en" not in error:  # OpenAI's error object, but not the RAG API's (vLLM's, say)
                return self._not_rag_api(f"HTTP {status}: {error['message']}")
            return RagError(en=str(error["message_en"]), ja=error["message"])
        detail = body.get("detail") if isinstance(body, dict) else body
        if isinstance(detail, list) and detail and isinstance(detail[0], dict) and "ja" in detail[0]:
            return RagError(en=str(detail), ja=detail[0]["ja"])
        return RagError(
            en=f"the RAG API answered HTTP {status}: {detail}",
            ja=f"RAG API がエラー（HTTP {status}）を返しました。",
        )
