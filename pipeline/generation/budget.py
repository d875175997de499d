"""Fitting a request into the model's context: the answer's room first, then the
conversation history (newest turns first, up to ``history_tokens``), then the passages,
lowest-ranked dropped first. Whatever is left out, the user is told."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llama_index.core.base.llms.types import ChatMessage

from pipeline.core.schema import Notice, Source, Turn
from pipeline.generation.prompt_formats import PromptFormat, RenderedRequest
from pipeline.generation.prompts import conversation, qa_message
from pipeline.generation.token_count import TokenCounter
from pipeline.settings.model import Settings

#: Below this many tokens left for the answer, generation is not attempted.
MIN_ANSWER_TOKENS = 64


@dataclass
class Fitted:
    """The request that fits, or ``messages`` None when not even the question does."""

    messages: list[ChatMessage] | None
    #: The request as the server receives it (what the debug view shows).
    prompt: str
    prompt_tokens: int
    #: Whether ``prompt_tokens`` is the model's own count (else an estimate on the high side).
    prompt_tokens_exact: bool
    max_tokens: int
    sources: list[Source]
    notices: list[Notice] = field(default_factory=list)


def recent_history(history: Sequence[Turn], budget: int, counter: TokenCounter) -> list[Turn]:
    """The most recent turns that fit in ``budget`` tokens, oldest first."""
    kept: list[Turn] = []
    for turn in reversed(history):
        cost = counter.count(turn.question) + counter.count(turn.answer) + 8
        if cost > budget:
            break
        budget -= cost
        kept.append(turn)
    return kept[::-1]


def fit_request(
    question: str,
    sources: Sequence[Source],
    history: Sequence[Turn],
    settings: Settings,
    prompt_format: PromptFormat,
) -> Fitted:
    """The messages for ``question`` with as many passages as ``max_model_len`` allows
    beside room for ``max_new_tokens``, counted as ``prompt_format`` sends them."""
    limit = settings.llm.max_model_len
    max_new = settings.generation.max_new_tokens
    turns = recent_history(history, settings.generation.history_tokens, prompt_format.counter)

    def build(kept: Sequence[Source], turns: Sequence[Turn]) -> tuple[list[ChatMessage], RenderedRequest]:
        user = qa_message(settings.prompts.qa, kept, question)
        messages = conversation(settings.prompts.system, turns, user)
        return messages, prompt_format.render(messages)

    kept = list(sources)
    messages, request = build(kept, turns)
    while kept and request.tokens + max_new > limit:
        kept.pop()
        messages, request = build(kept, turns)
    if request.tokens + max_new > limit and turns:
        turns = []
        messages, request = build(kept, turns)
    used = request.tokens
    fitted = Fitted(messages, request.text, used, request.exact, min(max_new, limit - used), kept)
    dropped = len(sources) - len(kept)
    if dropped:
        fitted.notices.append(
            Notice(
                code="context_trimmed",
                en=f"{dropped} lowest-ranked passages did not fit max_model_len={limit} and were left out",
                ja=f"コンテキスト長（{limit} トークン）に収まらないため、"
                f"順位の低い資料 {dropped} 件を除いて回答しました。",
            )
        )
    room = limit - used
    if room < MIN_ANSWER_TOKENS:
        fitted.messages = None
        fitted.notices.append(
            Notice(
                code="prompt_too_long",
                en=f"the question alone takes {used} of {limit} tokens; no room for an answer",
                ja="質問が長すぎて回答を生成する余地がありません。質問を短くしてください。",
            )
        )
    elif room < max_new:
        fitted.notices.append(
            Notice(
                code="answer_shortened",
                en=f"the answer is limited to {room} tokens to fit max_model_len={limit}",
                ja=f"コンテキスト長に収めるため、回答を最大 {room} トークンに制限しました。",
            )
        )
    return fitted
