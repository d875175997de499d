"""Follow-up questions made standalone before retrieval: with an LLM, the LLM rewrites
them (LlamaIndex's condense step, with our prompt); without one, a question that leans
on the previous one (:mod:`pipeline.text.followup`) is joined to it, and a question that
stands alone is searched alone."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.core import timing
from pipeline.core.schema import Notice, Turn
from pipeline.generation.budget import recent_history
from pipeline.generation.failures import GENERATION_ERRORS
from pipeline.generation.llm import LLMBackend, request_kwargs
from pipeline.generation.prompts import condense_messages
from pipeline.generation.token_count import TokenCounter
from pipeline.settings.model import Settings
from pipeline.text.followup import is_follow_up

logger = logging.getLogger(__name__)

#: A rewritten question is one line; more is the model talking.
CONDENSE_MAX_TOKENS = 96


def standalone_question(
    question: str,
    history: Sequence[Turn],
    settings: Settings,
    backend: LLMBackend,
    counter: TokenCounter,
    notices: list[Notice],
) -> str:
    """The question to search for: the follow-up rewritten by the LLM, or (no LLM, or it
    failed) joined to the previous question when it depends on it."""
    if not history:
        return question
    if backend.generates:
        turns = recent_history(history, settings.generation.history_tokens, counter)
        llm = backend.connect(settings)
        kwargs = request_kwargs(settings, CONDENSE_MAX_TOKENS)
        kwargs.update(temperature=0.0, top_p=1.0)
        try:
            with timing.step("condense"):
                text = llm.chat(condense_messages(settings.prompts.condense, turns, question), **kwargs).message.content
            rewritten = (text or "").strip().splitlines()[0].strip(" 「」\"'") if (text or "").strip() else ""
            if rewritten:
                return rewritten
        except GENERATION_ERRORS as exc:
            logger.warning("condensing failed: %s", exc)
            notices.append(
                Notice(
                    code="condense_failed",
                    en=f"could not rewrite the follow-up ({type(exc).__name__}); joined it to the previous question",
                    ja="LLM で質問を書き換えられなかったため、前の質問とつなげて検索しました。",
                )
            )
        finally:
            llm.close()
    return f"{history[-1].question} {question}" if is_follow_up(question) else question
