"""How the chat messages reach the model: ELYZA's Llama-2 prompt on the completions
endpoint, or the model's own chat template on the chat endpoint.

The chat engine builds the same messages for every model (system, earlier turns, the
question with its numbered ``<資料>`` block). A format says which endpoint takes them,
what the exact request looks like (the debug view) and how many tokens it costs:

- ``llama2``: :func:`~pipeline.generation.prompts.llama2_prompt` renders the text,
  sent to ``/v1/completions`` with ``add_special_tokens=False`` (ELYZA's format, exact);
- ``chat-template``: the messages go to ``/v1/chat/completions`` and vLLM applies the
  template in the model's tokenizer config. Tokens are counted on the same template
  applied here when the tokenizer files are at hand, else estimated.

``auto`` picks ``llama2`` for Llama-2 models (ELYZA's seed model) and the chat template
for any other model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llama_index.core.base.llms.types import ChatMessage

from pipeline.core.schema import PromptFormatName
from pipeline.generation.prompts import llama2_prompt
from pipeline.generation.token_count import TokenCounter
from pipeline.settings.model import Settings

_LLAMA2_MODEL = re.compile(r"llama-?2", re.IGNORECASE)

#: Tokens a chat template adds around each message, when the template is not at hand.
_ESTIMATED_TOKENS_PER_MESSAGE = 8


def resolve_prompt_format(settings: Settings) -> PromptFormatName:
    """The format ``auto`` stands for: Llama-2 models take their own prompt text."""
    chosen = settings.llm.prompt_format
    if chosen != "auto":
        return chosen
    return "llama2" if _LLAMA2_MODEL.search(settings.llm.model) else "chat-template"


@dataclass(frozen=True)
class RenderedRequest:
    #: The request as the server receives it: the prompt text, or the messages as JSON.
    text: str
    tokens: int
    #: Counted with the model's tokenizer (and template), not estimated.
    exact: bool


@dataclass(frozen=True)
class PromptFormat:
    name: PromptFormatName
    counter: TokenCounter

    @property
    def chat_endpoint(self) -> bool:
        return self.name == "chat-template"

    def render(self, messages: Sequence[ChatMessage]) -> RenderedRequest:
        if not self.chat_endpoint:
            text = llama2_prompt(messages)
            return RenderedRequest(text, self.counter.count(text), self.counter.exact)
        wire = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        text = json.dumps(wire, ensure_ascii=False, indent=1)
        templated = self.counter.apply_chat_template(wire)
        if templated is not None:
            return RenderedRequest(text, self.counter.count(templated), self.counter.exact)
        content = sum(self.counter.count(m["content"]) for m in wire)
        return RenderedRequest(text, content + _ESTIMATED_TOKENS_PER_MESSAGE * (len(wire) + 1), exact=False)


def prompt_format(settings: Settings, counter: TokenCounter) -> PromptFormat:
    return PromptFormat(resolve_prompt_format(settings), counter)
