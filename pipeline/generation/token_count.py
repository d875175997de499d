"""Counting prompt tokens with the LLM's own tokenizer, or a conservative estimate.

The tokenizer files (a few MB, no weights) come from the hub cache or mirror; on the
jawiki profile they may be downloaded. Without them the count is estimated from the
characters, on the high side for the Llama-2 tokenizer, which splits many kanji into
several byte tokens.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from pipeline.assets.hub import TOKENIZER_FILE_PATTERNS, fetch_model
from pipeline.core.errors import DataUnavailableError
from pipeline.settings.model import Settings

logger = logging.getLogger(__name__)


class TokenCounter(Protocol):
    #: Whether counts are the model's own (else an estimate on the high side).
    exact: bool
    name: str

    def count(self, text: str) -> int: ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str | None:
        """The model's chat template applied to ``messages`` with the assistant's turn
        opened, as vLLM applies it; None without the tokenizer or its template."""
        ...


class EstimatedTokenCounter:
    exact = False
    name = "estimate (1.6 tokens per non-ASCII character, 0.3 per ASCII character)"

    def count(self, text: str) -> int:
        non_ascii = sum(1 for c in text if ord(c) > 127)
        return math.ceil(1.6 * non_ascii + 0.3 * (len(text) - non_ascii)) + 1

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str | None:
        return None


class TokenizerCounter:
    exact = True

    def __init__(self, tokenizer, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str | None:
        from jinja2 import TemplateError

        if not getattr(self.tokenizer, "chat_template", None):
            return None
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (TemplateError, ValueError) as exc:  # e.g. a template without a system role: vLLM refuses too
            logger.info("the chat template of %s does not take these messages: %s", self.name, exc)
            return None


def load_token_counter(settings: Settings) -> TokenCounter:
    try:
        folder = fetch_model(
            settings.llm.model,
            settings,
            allow_download=not settings.demo,
            patterns=TOKENIZER_FILE_PATTERNS,
        )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (DataUnavailableError, OSError, ValueError) as exc:
        logger.info("no tokenizer for %s (%s); estimating token counts", settings.llm.model, exc)
        return EstimatedTokenCounter()
    return TokenizerCounter(tokenizer, f"{settings.llm.model} tokenizer")
