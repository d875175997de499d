"""The answer engine: question (+ history) -> retrieval -> Llama-2 prompt -> streamed,
cited answer, with search-only answers when no LLM can answer.

One :class:`AnswerEngine` serves the app, the ``ask`` CLI and the API. It holds no
per-user state: the conversation history comes with each call. An :class:`Answer` has
its sources, prompt, notices and timings before the first token, so retrieval results
survive whatever happens to generation; :meth:`Answer.stream` yields the text and
records TTFT, tokens/s and completeness, and whether the stream ended early.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import openai
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore
from pydantic import ConfigDict

from pipeline import timing
from pipeline.citations import CitationReport, parse_citations
from pipeline.config import Settings
from pipeline.errors import Notice
from pipeline.llm import LLMBackend, sampling_kwargs
from pipeline.prompts import ContextPassage, condense_prompt, llama2_prompt, qa_message
from pipeline.retrieval import RetrievalService
from pipeline.sentences import best_sentence
from pipeline.tokens import EstimatedTokenCounter, TokenizerCounter

logger = logging.getLogger(__name__)

#: Below this many tokens left for the answer, generation is not attempted.
MIN_ANSWER_TOKENS = 64


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


@dataclass
class Source:
    """A retrieved passage as numbered in the prompt and cited as [n]."""

    number: int
    row: int
    title: str
    section: str
    url: str
    score: float
    text: str
    pageid: int | None = None
    revid: int | None = None
    #: (start, end) in ``text`` of the sentence that answers / supports the answer.
    highlight: tuple[int, int] | None = None

    @classmethod
    def from_hit(cls, number: int, hit: NodeWithScore) -> Source:
        meta = hit.node.metadata
        return cls(
            number=number, row=int(meta["row"]), title=meta["title"], section=meta["section"], url=meta["url"],
            score=float(hit.score or 0.0), text=hit.node.get_content(), pageid=meta.get("pageid"),
            revid=meta.get("revid"),
        )  # fmt: skip

    def as_dict(self) -> dict:
        return {
            "n": self.number, "row": self.row, "title": self.title, "section": self.section, "url": self.url,
            "score": round(self.score, 6), "text": self.text, "pageid": self.pageid, "revid": self.revid,
            "highlight": list(self.highlight) if self.highlight else None,
        }  # fmt: skip


@dataclass
class Answer:
    question: str
    standalone_question: str
    retriever: str
    sources: list[Source]
    notices: list[Notice]
    timings: dict[str, float]
    mode: str = "search-only"
    prompt: str | None = None
    text: str = ""
    complete: bool = False
    #: The LLM's reason for stopping ("stop", "length"), when it said.
    finish_reason: str | None = None
    error: Notice | None = None
    citations: CitationReport = field(default_factory=CitationReport)
    _chunks: Iterator[str] | None = None

    @property
    def rewritten(self) -> bool:
        return self.standalone_question != self.question

    def stream(self) -> Iterator[str]:
        """The answer text as it is generated (single use)."""
        chunks, self._chunks = self._chunks, None
        if chunks is not None:
            yield from chunks

    def consume(self) -> Answer:
        for _ in self.stream():
            pass
        return self

    def as_dict(self) -> dict:
        return {
            "question": self.question,
            "standalone_question": self.standalone_question,
            "answer": self.text,
            "complete": self.complete,
            "finish_reason": self.finish_reason,
            "mode": self.mode,
            "retriever": self.retriever,
            "sources": [s.as_dict() for s in self.sources],
            "citations": {"used": self.citations.used, "invalid": self.citations.invalid},
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "notices": [n.as_dict() for n in self.notices],
        }


class AnswerEngine:
    """Stateless question answering over a retrieval service and an LLM backend."""

    def __init__(
        self,
        retrieval: RetrievalService,
        backend: LLMBackend,
        token_counter: EstimatedTokenCounter | TokenizerCounter,
        settings: Settings | None = None,
    ) -> None:
        self.retrieval = retrieval
        self.backend = backend
        self.tokens = token_counter
        self.settings = settings or retrieval.settings

    def answer(self, question: str, history: Sequence[Turn] = (), settings: Settings | None = None) -> Answer:
        """Retrieve and prepare; the text comes from :meth:`Answer.stream`. Raises
        EmptyQueryError for an empty question."""
        settings = settings or self.settings
        with timing.collect() as timings:
            started = time.perf_counter()
            question, notices = self.retrieval.prepare_query(question)
            standalone = self._standalone(question, history, settings, notices) if history else question
            result = self.retrieval.search(standalone, settings=settings)
            timings.update(result.timings)
            notices.extend(n for n in result.notices if n.code != "query_truncated")
            sources = [Source.from_hit(i, hit) for i, hit in enumerate(result.hits, start=1)]
            answer = Answer(question, standalone, result.mode, sources, notices, timings)
            if self.backend.llm is None:
                notices.append(_no_llm_notice(self.backend))
                self._search_only(answer)
            else:
                with timing.step("prompt"):
                    prompt, max_tokens = self._budget(answer, history, settings)
                if prompt is None:
                    self._search_only(answer)
                else:
                    answer.prompt = prompt
                    answer.mode = "full" if settings.profile == "jawiki" else "demo"
                    answer._chunks = self._generate(answer, prompt, max_tokens, settings)
            timings["prepare"] = (time.perf_counter() - started) * 1000.0
        return answer

    # -- steps -------------------------------------------------------------------------

    def _standalone(self, question: str, history: Sequence[Turn], settings: Settings, notices: list[Notice]) -> str:
        """The follow-up rewritten into a standalone question (by the LLM, or by joining
        it to the previous question when no LLM can)."""
        pairs = self._history_pairs(history, settings)
        if self.backend.llm is not None:
            prompt = condense_prompt(settings.prompts.condense, pairs, question)
            try:
                with timing.step("condense"):
                    kwargs = sampling_kwargs(settings, max_tokens=96)
                    kwargs.pop("stream_options")
                    kwargs.update(temperature=0.0, top_p=1.0)
                    text = self.backend.llm.complete(prompt, formatted=True, **kwargs).text
                rewritten = text.strip().splitlines()[0].strip(" 「」\"'") if text.strip() else ""
                if rewritten:
                    return rewritten
            except (openai.OpenAIError, httpx.HTTPError) as exc:
                logger.warning("condensing failed: %s", exc)
                notices.append(Notice(
                    "condense_failed",
                    en=f"could not rewrite the follow-up ({type(exc).__name__}); joined it to the previous question",
                    ja="LLM で質問を書き換えられなかったため、前の質問とつなげて検索しました。",
                ))  # fmt: skip
        return f"{history[-1].question} {question}"

    def _history_pairs(self, history: Sequence[Turn], settings: Settings) -> list[tuple[str, str]]:
        """The most recent turns that fit in ``history_tokens``, oldest first."""
        kept: list[tuple[str, str]] = []
        budget = settings.generation.history_tokens
        for turn in reversed(history):
            cost = self.tokens.count(turn.question) + self.tokens.count(turn.answer) + 8
            if cost > budget:
                break
            budget -= cost
            kept.append((turn.question, turn.answer))
        return kept[::-1]

    def _budget(self, answer: Answer, history: Sequence[Turn], settings: Settings) -> tuple[str | None, int]:
        """The prompt that fits ``max_model_len`` with room for the answer: history is
        bounded first, then the lowest-ranked passages are dropped (and the user told)."""
        limit = settings.llm.max_model_len
        max_new = settings.generation.max_new_tokens
        pairs = self._history_pairs(history, settings)

        def build(sources: list[Source], turns: list[tuple[str, str]]) -> tuple[str, int]:
            passages = [ContextPassage(s.number, s.title, s.section, s.text) for s in sources]
            user = qa_message(settings.prompts.qa, passages, answer.question)
            prompt = llama2_prompt(settings.prompts.system, turns, user)
            return prompt, self.tokens.count(prompt)

        kept = list(answer.sources)
        prompt, used = build(kept, pairs)
        while kept and used + max_new > limit:
            kept.pop()
            prompt, used = build(kept, pairs)
        if used + max_new > limit and pairs:
            pairs = []
            prompt, used = build(kept, pairs)
        dropped = answer.sources[len(kept) :]
        if dropped:
            answer.notices.append(Notice(
                "context_trimmed",
                en=f"{len(dropped)} lowest-ranked passages did not fit max_model_len={limit} and were left out",
                ja=f"コンテキスト長（{limit} トークン）に収まらないため、"
                f"順位の低い資料 {len(dropped)} 件を除いて回答しました。",
            ))  # fmt: skip
            answer.sources = kept
        room = limit - used
        if room < MIN_ANSWER_TOKENS:
            answer.notices.append(Notice(
                "prompt_too_long",
                en=f"the question alone takes {used} of {limit} tokens; no room for an answer",
                ja="質問が長すぎて回答を生成する余地がありません。質問を短くしてください。",
            ))  # fmt: skip
            return None, 0
        if room < max_new:
            answer.notices.append(Notice(
                "answer_shortened",
                en=f"the answer is limited to {room} tokens to fit max_model_len={limit}",
                ja=f"コンテキスト長に収めるため、回答を最大 {room} トークンに制限しました。",
            ))  # fmt: skip
        if not self.tokens.exact:
            answer.timings["prompt_tokens_estimated"] = float(used)
        else:
            answer.timings["prompt_tokens"] = float(used)
        return prompt, min(max_new, room)

    def _generate(self, answer: Answer, prompt: str, max_tokens: int, settings: Settings) -> Iterator[str]:
        started = time.perf_counter()
        first_token_at = None
        completion_tokens = 0
        llm, connection = self.backend.generation_llm(settings)
        try:
            for response in llm.stream_complete(prompt, formatted=True, **sampling_kwargs(settings, max_tokens)):
                completion_tokens = response.additional_kwargs.get("completion_tokens") or completion_tokens
                choices = getattr(response.raw, "choices", None)
                if choices and choices[0].finish_reason:
                    answer.finish_reason = choices[0].finish_reason
                if not response.delta:
                    continue
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    answer.timings["ttft"] = (first_token_at - started) * 1000.0
                answer.text += response.delta
                yield response.delta
            answer.complete = True
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            answer.error = _generation_failure(exc, self.backend, settings, started_answer=bool(answer.text))
            answer.notices.append(answer.error)
            logger.warning("generation failed: %s", answer.error.en)
            if not answer.text:
                answer.mode = "search-only"
                yield from self._search_only_text(answer)
        finally:
            connection.close()  # also when the reader went away: vLLM then aborts the request
            finished = time.perf_counter()
            if first_token_at is not None:
                answer.timings["generation"] = (finished - first_token_at) * 1000.0
                tokens = completion_tokens or self.tokens.count(answer.text)
                answer.timings["completion_tokens"] = float(tokens)
                if finished > first_token_at and tokens > 1:
                    answer.timings["tokens_per_s"] = (tokens - 1) / (finished - first_token_at)
        self._finish(answer)

    def _finish(self, answer: Answer) -> None:
        """Check the citations and highlight, in each cited passage, the sentence that
        best matches what the answer says with it."""
        if answer.mode == "search-only":
            return
        answer.citations = parse_citations(answer.text, len(answer.sources))
        if answer.citations.invalid:
            numbers = ", ".join(f"[{n}]" for n in answer.citations.invalid)
            answer.notices.append(Notice(
                "invalid_citation",
                en=f"the answer cites {numbers}, which match no source",
                ja=f"回答が存在しない資料番号 {numbers} を引用しています。その部分の根拠は確認できません。",
            ))  # fmt: skip
        tokenizer = self.retrieval.tokenizer
        for source in answer.sources:
            claims = " ".join(s.text for s in answer.citations.sentences if source.number in s.numbers)
            if claims:
                source.highlight = best_sentence(claims, source.text, tokenizer)

    def _search_only(self, answer: Answer) -> None:
        answer.mode = "search-only"
        answer._chunks = self._search_only_text(answer)

    def _search_only_text(self, answer: Answer) -> Iterator[str]:
        """The best-matching sentence of the top passage, quoted and cited."""
        answer.complete = True
        if not answer.sources:
            answer.text = "該当する資料が見つかりませんでした。"
        else:
            top = answer.sources[0]
            span = best_sentence(answer.standalone_question, top.text, self.retrieval.tokenizer)
            top.highlight = span
            quote = top.text[span[0] : span[1]] if span else top.text[:200]
            answer.text = f"（検索のみ）最も関連する資料の該当箇所です。\n\n「{quote.strip()}」[1]"
        answer.citations = parse_citations(answer.text, len(answer.sources))
        yield answer.text


def _no_llm_notice(backend: LLMBackend) -> Notice:
    if backend.kind == "none":
        return Notice(
            "no_llm",
            en="no LLM is configured: showing search results only",
            ja="LLM が設定されていないため、回答文は生成していません（検索のみ）。",
        )
    return Notice("llm_unavailable", en="the LLM is unavailable", ja="LLM が使えないため、検索結果のみを表示します。")


def _generation_failure(exc: Exception, backend: LLMBackend, settings: Settings, started_answer: bool) -> Notice:
    """A Japanese explanation of why generation failed, keeping what was said."""
    url = backend.base_url
    kept = "ここまでの回答は途中までのものです。" if started_answer else "検索結果のみを表示します。"
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return Notice(
            "llm_timeout",
            en=f"the LLM at {url} sent nothing for {settings.llm.timeout_s:.0f}s",
            ja=f"LLM サーバーが {settings.llm.timeout_s:.0f} 秒以上応答しませんでした。{kept}",
        )
    if isinstance(exc, openai.APIStatusError):
        return Notice(
            "llm_error",
            en=f"the LLM at {url} answered HTTP {exc.status_code}: {exc.message}",
            ja=f"LLM サーバーがエラー（HTTP {exc.status_code}）を返しました。{kept}",
        )
    if isinstance(exc, openai.APIConnectionError | httpx.ConnectError) and not started_answer:
        return Notice(
            "llm_unreachable",
            en=f"cannot connect to the LLM at {url}",
            ja=f"LLM サーバー（{url}）に接続できません。{kept}",
        )
    if isinstance(exc, ValueError):
        return Notice(
            "llm_malformed",
            en=f"the LLM at {url} sent a malformed response: {exc}",
            ja=f"LLM サーバーの応答が不正な形式でした。{kept}",
        )
    return Notice(
        "llm_interrupted",
        en=f"the connection to the LLM at {url} broke off: {type(exc).__name__}",
        ja=f"LLM サーバーとの接続が途中で切れました。{kept}",
    )


class RagQueryEngine(CustomQueryEngine):
    """The answer engine as a LlamaIndex query engine (streaming, with source nodes):

    engine = RagQueryEngine(answer_engine=AnswerEngine(...))
    response = engine.query("梅雨とは")   # StreamingResponse
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    answer_engine: AnswerEngine

    def custom_query(self, query_str: str) -> StreamingResponse:
        answer = self.answer_engine.answer(query_str)
        nodes = self.answer_engine.retrieval.passages.get_many([s.row for s in answer.sources])
        return StreamingResponse(
            response_gen=answer.stream(),
            source_nodes=[
                NodeWithScore(node=p.to_node(), score=s.score) for p, s in zip(nodes, answer.sources, strict=True)
            ],
            metadata={"answer": answer},
        )
