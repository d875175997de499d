"""The RAG API as the UI sees a local engine: the Streamlit pages call this client when
``api.url`` (RAG_API_URL, or ``streamlit run streamlit_app.py -- --api-url URL``) is
set, and the same :class:`~pipeline.engine.Answer` objects come back, streamed, with
sources, citations and timings. Session settings that travel: retrieval mode and top-k,
sampling. The API server's own prompts and index settings apply.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
from llama_index.core.schema import NodeWithScore

from pipeline.citations import parse_citations
from pipeline.config import Settings
from pipeline.corpus import Passage
from pipeline.engine import Answer, Source, Turn
from pipeline.errors import DataUnavailableError, EmptyQueryError, Notice, RagError
from pipeline.retrieval import SearchResult

#: How long a successful ``/readyz`` answer is reused: a page asks several times per
#: rerun, and each ask also makes the API check its LLM.
STATUS_MAX_AGE_S = 2.0


@dataclass
class RemoteStatus:
    """``/readyz`` as the pages need it."""

    ok: bool
    status: str
    passages: int
    modes: list[str]
    auto_mode: str
    embedding: str | None
    llm_backend: str
    llm_reachable: bool


class RagApiClient:
    def __init__(self, url: str, token: str = "", timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self._last_status: tuple[float, RemoteStatus] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RagApiClient:
        return cls(settings.api.url, settings.api.token.get_secret_value(), settings.llm.timeout_s)

    # -- status ------------------------------------------------------------------------

    def status(self) -> RemoteStatus:
        last = self._last_status
        if last is not None and time.monotonic() - last[0] < STATUS_MAX_AGE_S:
            return last[1]
        try:
            response = self._http.get("/readyz", timeout=5)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise self._unreachable(exc) from exc
        components = body.get("components", {})
        if response.status_code == 401:
            raise DataUnavailableError(
                en=f"the RAG API at {self.url} refused the token",
                ja=f"RAG API（{self.url}）にトークンが拒否されました。api.token（RAG_API_TOKEN）を確認してください。",
            )
        retrievers = components.get("retrievers", {})
        llm = components.get("llm", {})
        status = RemoteStatus(
            ok=response.status_code == 200,
            status=body.get("status", "failed"),
            passages=components.get("corpus", {}).get("passages", 0),
            modes=retrievers.get("modes", []),
            auto_mode=retrievers.get("auto", "bm25"),
            embedding=components.get("embedding", {}).get("model"),
            llm_backend=llm.get("backend", "none"),
            llm_reachable=bool(llm.get("reachable")),
        )
        self._last_status = (time.monotonic(), status)
        return status

    # -- answers -------------------------------------------------------------------------

    def answer(self, question: str, history: Sequence[Turn] = (), settings: Settings | None = None) -> Answer:
        """An answer streamed from ``/v1/chat/completions``; sources arrive with the first
        chunk, timings with the last."""
        if not question.strip():
            raise EmptyQueryError()
        messages = [m for turn in history for m in (
            {"role": "user", "content": turn.question}, {"role": "assistant", "content": turn.answer})]  # fmt: skip
        messages.append({"role": "user", "content": question})
        body: dict = {"model": "jawiki-rag", "messages": messages, "stream": True}
        if settings is not None:
            generation = settings.generation
            body.update(
                max_tokens=generation.max_new_tokens,
                temperature=generation.temperature if generation.do_sample else 0.0,
                top_p=generation.top_p,
                top_k=generation.top_k,
                repetition_penalty=generation.repetition_penalty,
                rag_mode=settings.retrieval.mode,
                rag_top_k=settings.retrieval.top_k,
            )
        request = self._http.build_request("POST", "/v1/chat/completions", json=body)
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code != 200:
            response.read()
            raise self._refused(response)
        events = self._data_events(response)
        try:
            first = next(events)
        except (StopIteration, httpx.HTTPError, ValueError) as exc:
            response.close()
            raise self._unreachable(exc) from exc
        answer = _answer_from(first.get("rag", {}), question)
        answer._chunks = self._chunks(answer, events, response)
        return answer

    def _chunks(self, answer: Answer, events: Iterator[dict], response: httpx.Response) -> Iterator[str]:
        try:
            for event in events:
                text = event["choices"][0]["delta"].get("content") if event.get("choices") else None
                if text:
                    answer.text += text
                    yield text
                if "rag" in event and event["choices"][0].get("finish_reason"):
                    final = _answer_from(event["rag"], answer.question)
                    answer.sources, answer.notices, answer.timings = final.sources, final.notices, final.timings
                    answer.mode, answer.complete = final.mode, final.complete
                    answer.finish_reason = event["choices"][0]["finish_reason"]
        except (httpx.HTTPError, ValueError) as exc:
            answer.error = Notice(
                "api_interrupted",
                en=f"the connection to the RAG API broke off: {type(exc).__name__}",
                ja="RAG API との接続が途中で切れました。ここまでの回答は途中までのものです。",
            )
            answer.notices.append(answer.error)
        finally:
            response.close()
        answer.citations = parse_citations(answer.text, len(answer.sources))

    def _data_events(self, response: httpx.Response) -> Iterator[dict]:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])

    # -- retrieval (the calls the pages make on a RetrievalService) -----------------------

    @property
    def modes(self) -> list[str]:
        return self.status().modes

    @property
    def auto_mode(self) -> str:
        return self.status().auto_mode

    @property
    def size(self) -> int:
        return self.status().passages

    def search(
        self, query: str, mode: str | None = None, top_k: int | None = None, settings: Settings | None = None
    ) -> SearchResult:
        if not query.strip():
            raise EmptyQueryError()
        body = self._call("POST", "/v1/search", json={"query": query, "mode": mode, "top_k": top_k})
        hits = [NodeWithScore(node=_passage(hit).to_node(), score=hit["score"]) for hit in body["hits"]]
        notices = [Notice(**n) for n in body["notices"]]
        return SearchResult(body["query"], body["mode"], hits, body["timings"], notices)

    def passage(self, row: int) -> tuple[Passage, int | None, int | None]:
        """A passage and the rows of its neighbours in the article."""
        body = self._call("GET", f"/v1/passages/{row}")
        return _passage(body), body["previous_row"], body["next_row"]

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One JSON request; a refused or failed one is a :class:`RagError`."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code != 200:
            raise self._refused(response)
        return response.json()

    def _unreachable(self, exc: Exception) -> RagError:
        return DataUnavailableError(
            en=f"cannot reach the RAG API at {self.url}: {type(exc).__name__}",
            ja=f"RAG API（{self.url}）に接続できません。API サーバーが動いているか、URL を確認してください。",
        )

    def _refused(self, response: httpx.Response) -> RagError:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        if isinstance(detail, list) and detail and "ja" in detail[0]:
            return RagError(en=str(detail), ja=detail[0]["ja"])
        if response.status_code == 429:
            return RagError(en=str(detail), ja="ただいま混み合っています。少し待ってからもう一度お試しください。")
        return RagError(
            en=f"the RAG API answered HTTP {response.status_code}: {detail}",
            ja=f"RAG API がエラー（HTTP {response.status_code}）を返しました。",
        )


def _passage(data: dict) -> Passage:
    section = data.get("section") or ""
    return Passage(data["row"], data.get("id", data["row"]), data.get("pageid"), data.get("revid"),
                   data["title"], section, data["text"])  # fmt: skip


def _answer_from(rag: dict, question: str) -> Answer:
    sources = []
    for data in rag.get("sources", []):
        source = Source(**{k: v for k, v in data.items() if k not in ("n", "highlight")}, number=data["n"])
        source.highlight = tuple(data["highlight"]) if data.get("highlight") else None
        sources.append(source)
    return Answer(
        question=rag.get("question", question),
        standalone_question=rag.get("standalone_question", question),
        retriever=rag.get("retriever", ""),
        sources=sources,
        notices=[Notice(**n) for n in rag.get("notices", [])],
        timings=rag.get("timings", {}),
        mode=rag.get("mode", "search-only"),
        complete=rag.get("complete", False),
    )
