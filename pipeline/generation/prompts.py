"""Prompts as LlamaIndex chat messages and prompt templates, and the Llama-2 format that
ELYZA-japanese-Llama-2 was trained on (other models take the same messages through
their chat template: :mod:`pipeline.generation.prompt_formats`).

The chat engine builds one list of :class:`ChatMessage` (system, earlier turns, the
question with its numbered passages) whatever the model. For ELYZA the LLM adapter
renders it with :func:`llama2_prompt` (its ``messages_to_prompt``) and sends the text to
the completions endpoint with ``add_special_tokens=False``, so ``<s>`` and ``</s>`` in
the text are the model's BOS and EOS tokens and nothing is added:

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user 1} [/INST] {answer 1} </s><s>[INST] {user 2} [/INST]

Passages go into a delimited block of the last user message. Text from passages,
questions and earlier answers is cleaned of the format's control strings first, so that
nothing in a passage can close the block, end a turn or open a new system prompt. The
instructions (system prompt, QA and condense templates) may be a session's or an API
caller's own: they are cleaned of the format's control strings too, keeping the
block's tags, which the QA template is meant to hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llama_index.core import PromptTemplate
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from pipeline.core.schema import Source, Turn
from pipeline.settings.default_prompts import CONDENSE_SYSTEM_PROMPT, CONTEXT_CLOSE, CONTEXT_OPEN

BOS, EOS = "<s>", "</s>"
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
NO_PASSAGES = "（該当する資料はありません）"

#: Llama-2's control strings, the context block's tags, and the special tokens of other
#: chat templates (``<|im_start|>``, ``<|eot_id|>``, Gemma's ``<start_of_turn>``): vLLM
#: reads them in message text as the tokens themselves.
_FORMAT_CONTROL = "|".join(re.escape(s) for s in (BOS, EOS, B_INST, E_INST, "<<SYS>>", "<</SYS>>")) + (
    r"|<\|[^<>|\s]{1,40}\|>|<(?:start|end)_of_turn>"
)
_CONTROL = re.compile(f"{_FORMAT_CONTROL}|{re.escape(CONTEXT_OPEN)}|{re.escape(CONTEXT_CLOSE)}", re.IGNORECASE)
_INSTRUCTION_CONTROL = re.compile(_FORMAT_CONTROL, re.IGNORECASE)


def clean(text: str) -> str:
    """Remove the prompt format's control strings and the context block's tags from
    untrusted text (passages, questions, earlier turns)."""
    return _CONTROL.sub(" ", text)


def clean_instructions(text: str) -> str:
    """Remove the prompt format's control strings from instructions (a system prompt or
    a template that a session or an API caller may have written), keeping the block's
    tags."""
    return _INSTRUCTION_CONTROL.sub(" ", text)


def format_context(sources: Sequence[Source]) -> str:
    """Numbered passages: a '[n] title（section）' line, then the text."""
    blocks = []
    for source in sources:
        heading = clean(source.title) + (f"（{clean(source.section)}）" if source.section else "")
        blocks.append(f"[{source.number}] {heading}\n{clean(source.text)}")
    return "\n\n".join(blocks)


def qa_message(template: str, sources: Sequence[Source], question: str) -> str:
    """The last user message: the settings' QA template with the passages and question."""
    context = format_context(sources) if sources else NO_PASSAGES
    return PromptTemplate(clean_instructions(template)).format(context=context, question=clean(question))


def conversation(system: str, history: Sequence[Turn], user: str) -> list[ChatMessage]:
    """System prompt, the earlier turns (cleaned), then ``user``, which is trusted: build
    it with :func:`qa_message`, which cleans its parts."""
    messages = [ChatMessage(role=MessageRole.SYSTEM, content=clean_instructions(system))]
    for turn in history:
        messages.append(ChatMessage(role=MessageRole.USER, content=clean(turn.question)))
        messages.append(ChatMessage(role=MessageRole.ASSISTANT, content=clean(turn.answer)))
    messages.append(ChatMessage(role=MessageRole.USER, content=user))
    return messages


def condense_messages(template: str, history: Sequence[Turn], question: str) -> list[ChatMessage]:
    """The request that rewrites a follow-up into a standalone question."""
    transcript = "\n".join(f"ユーザー: {clean(t.question)}\nアシスタント: {clean(t.answer)}" for t in history)
    message = PromptTemplate(clean_instructions(template)).format(history=transcript, question=clean(question))
    return conversation(CONDENSE_SYSTEM_PROMPT, [], message)


def llama2_prompt(messages: Sequence[ChatMessage]) -> str:
    """Messages in the Llama-2 chat format: the system prompt inside the first turn,
    earlier turns closed with EOS, the last user message left open for the model."""
    system = next((m.content for m in messages if m.role == MessageRole.SYSTEM), None)
    parts: list[str] = []
    first = True
    for message in messages:
        content = (message.content or "").strip()
        if message.role == MessageRole.USER:
            if first and system is not None:
                content = f"{B_SYS}{system}{E_SYS}{content}".strip()
            parts.append(f"{BOS}{B_INST} {content} {E_INST}")
            first = False
        elif message.role == MessageRole.ASSISTANT:
            parts.append(f" {content} {EOS}")
    return "".join(parts)
