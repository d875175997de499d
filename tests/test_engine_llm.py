"""EngineLLM: LlamaIndex's LLM interface over the engine's own stream, against the
stand-in engine on loopback, and the stream parsing on byte splits a socket can give."""

from __future__ import annotations

import json

import httpx
import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from pipeline.generation.engine_llm import EngineLLM, EngineStatusError, read_events
from pipeline.generation.prompts import llama2_prompt

MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="資料に基づいて答えてください。"),
    ChatMessage(role=MessageRole.USER, content="<資料>\n[1] 梅雨\n梅雨は初夏の雨季である。\n</資料>\n\n梅雨とは？"),
]


def event(text: str, **extra) -> bytes:
    return b"data: " + json.dumps({"choices": [{"text": text, "finish_reason": None}], **extra}).encode() + b"\n\n"


def response_of(*reads: bytes) -> httpx.Response:
    return httpx.Response(200, content=iter(reads))


def test_one_group_per_read_events_split_across_reads_and_nothing_after_done():
    second = event("の")
    groups = list(
        read_events(response_of(event("梅") + event("雨") + second[:9], second[9:], b"data: [DONE]\n\n" + event("x")))
    )
    assert [[e["choices"][0]["text"] for e in group] for group in groups] == [["梅", "雨"], ["の"]]


def test_crlf_line_breaks_and_comments_are_read_as_the_protocol_says():
    reads = [b": keep-alive\r\n\r\n", event("梅").replace(b"\n", b"\r\n"), b"data: [DONE]\r\n\r\n"]
    assert [e["choices"][0]["text"] for group in read_events(response_of(*reads)) for e in group] == ["梅"]


def test_an_error_event_mid_stream_is_the_engines_error_and_a_bad_event_is_a_value_error():
    failing = b'data: {"error": {"message": "engine dead", "code": 500}}\n\n'
    with pytest.raises(EngineStatusError) as caught:
        list(read_events(response_of(event("梅"), failing)))
    assert caught.value.status_code == 500 and caught.value.message == "engine dead"
    with pytest.raises(ValueError):
        list(read_events(response_of(b"data: {not json\n\n")))
    with pytest.raises(ValueError):
        list(read_events(response_of(b"data: [1, 2]\n\n")))


def test_a_stream_from_the_engine_carries_the_answer_usage_and_finish_reason(standin):
    with httpx.Client() as client:
        llm = EngineLLM(client, model=standin.model, api_base=standin.base_url, messages_to_prompt=llama2_prompt)
        kwargs = {"max_tokens": 200, "stream_options": {"include_usage": True}, "extra_body": {"top_k": -1}}
        responses = list(llm.stream_chat(MESSAGES, **kwargs))
        sent = standin.last_request()
        whole = llm.chat(MESSAGES, max_tokens=200).message.content
    assert sent["prompt"] == llama2_prompt(MESSAGES) and sent["top_k"] == -1 and "extra_body" not in sent
    assert "".join(r.delta for r in responses) == responses[-1].message.content == whole
    assert "梅雨は初夏の雨季である" in whole
    last = responses[-1].raw
    assert last["usage"]["completion_tokens"] > 1
    assert any(r.raw["choices"] and r.raw["choices"][0]["finish_reason"] == "stop" for r in responses)


def test_an_http_error_is_the_engines_status_and_message(standin):
    with httpx.Client() as client:
        llm = EngineLLM(client, model="another-model", api_base=standin.base_url, messages_to_prompt=llama2_prompt)
        with pytest.raises(EngineStatusError) as caught:
            list(llm.stream_chat(MESSAGES, max_tokens=5))
    assert caught.value.status_code == 404 and "another-model" in caught.value.message
