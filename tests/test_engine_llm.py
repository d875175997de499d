"""EngineLLM: LlamaIndex's LLM interface over the engine's own stream, against the
stand-in engine on loopback, and the stream parsing on byte splits a socket can give."""

from __future__ import annotations

import json

import httpx
import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from pipeline.generation.engine_llm import EngineLLM, EngineStatusError, read_events, read_summary
from pipeline.generation.llm import engine_connections
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


def test_crlf_line_breaks_comments_and_multi_line_data_are_read_as_the_protocol_says():
    crlf = event("梅").replace(b"\n", b"\r\n")
    two_lines = b'data: {"choices":\r\ndata: [{"text": "\\u96e8"}]}\r\n\r\n'  # one event's data on two lines
    reads = [b": keep-alive\r\n\r\n", crlf[:-1], crlf[-1:] + two_lines, b"data: [DONE]\r\n\r\n"]
    texts = [[e["choices"][0]["text"] for e in group] for group in read_events(response_of(*reads))]
    assert texts == [["梅", "雨"]]  # the CR that ended one read and its LF in the next are one break


def test_a_read_that_brings_the_last_events_together_keeps_finish_reason_and_usage():
    last = event("。") + event("", choices=None) + b'data: {"choices": [], "usage": {"completion_tokens": 9}}\n\n'
    last = last.replace(b'"choices": null, ', b"")  # the event with no choices key at all
    [group] = list(read_events(response_of(event("梅").replace(b'"finish_reason": null', b'"finish_reason": "length"')
                                           + last + b"data: [DONE]\n\n")))  # fmt: skip
    assert read_summary(group, lambda choice: choice.get("text")) == (
        "梅。",
        {"finish_reason": "length", "usage": {"completion_tokens": 9}},
    )
    with pytest.raises(ValueError):
        read_summary([{"choices": [None]}], lambda choice: choice.get("text"))


def test_a_stream_cut_off_before_done_is_an_interrupted_stream():
    with pytest.raises(httpx.RemoteProtocolError):
        list(read_events(response_of(event("梅"), event("雨"))))


def test_an_error_event_mid_stream_is_the_engines_error_and_a_bad_event_is_a_value_error():
    failing = b'data: {"error": {"message": "engine dead", "code": 400}}\n\n'
    with pytest.raises(EngineStatusError) as caught:
        list(read_events(response_of(event("梅"), failing)))
    assert caught.value.status_code == 400 and caught.value.message == "engine dead"
    named = b'data: {"error": {"message": "too long", "code": "context_length_exceeded"}}\n\n'
    with pytest.raises(EngineStatusError) as caught:
        list(read_events(response_of(named)))
    assert caught.value.status_code == 500 and caught.value.message == "too long"
    assert len(list(read_events(response_of(event("梅", error=None), b"data: [DONE]\n\n")))) == 1
    with pytest.raises(ValueError):
        list(read_events(response_of(b"data: {not json\n\n")))
    with pytest.raises(ValueError):
        list(read_events(response_of(b"data: [1, 2]\n\n")))


def test_text_before_an_error_event_in_the_same_read_is_given_before_the_error():
    failing = b'data: {"error": {"message": "EngineCore encountered an issue", "code": 500}}\n\n'
    stream = read_events(response_of(event("梅") + event("雨") + failing + b"data: [DONE]\n\n"))
    assert [e["choices"][0]["text"] for e in next(stream)] == ["梅", "雨"]  # a proxy merged the chunks
    with pytest.raises(EngineStatusError) as caught:
        next(stream)
    assert caught.value.status_code == 500


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
    assert responses[-1].raw["usage"]["completion_tokens"] > 1
    assert [r.raw["finish_reason"] for r in responses if r.raw["finish_reason"]] == ["stop"]


def test_an_http_error_is_the_engines_status_and_message(standin):
    with httpx.Client() as client:
        llm = EngineLLM(client, model="another-model", api_base=standin.base_url, messages_to_prompt=llama2_prompt)
        with pytest.raises(EngineStatusError) as caught:
            list(llm.stream_chat(MESSAGES, max_tokens=5))
    assert caught.value.status_code == 404 and "another-model" in caught.value.message


def test_any_reply_but_success_is_an_error_not_an_empty_answer():
    """A redirect or a proxy's page is no answer (the openai SDK raised for any non-2xx)."""
    redirect = httpx.MockTransport(lambda request: httpx.Response(301, headers={"location": "http://x/"}, text="moved"))
    with httpx.Client(transport=redirect) as client:
        llm = EngineLLM(client, model="m", api_base="http://engine/v1", messages_to_prompt=llama2_prompt)
        with pytest.raises(EngineStatusError) as caught:
            list(llm.stream_chat(MESSAGES, max_tokens=5))
    assert caught.value.status_code == 301


def test_an_answer_whose_body_ends_badly_after_done_is_whole():
    """A proxy that merged the last text with ``[DONE]`` and then cut the body short (no
    chunked end): the answer came whole, so it is yielded, not turned into an error."""

    class CutAfterDone(httpx.SyncByteStream):
        def __iter__(self):
            yield event("梅雨") + b"data: [DONE]\n\n"
            raise httpx.RemoteProtocolError("incomplete chunked read")

    groups = list(read_events(httpx.Response(200, stream=CutAfterDone())))
    assert [[e["choices"][0]["text"] for e in group] for group in groups] == [["梅雨"]]


def test_the_shared_connections_refuse_cookies():
    """One cookie jar for every answer would let a load balancer's sticky-session cookie
    pin them all to one replica."""
    connections = engine_connections()
    request = httpx.Request("POST", "http://lb.example/v1/completions")
    sticky = httpx.Response(200, headers={"set-cookie": "replica=2; Path=/"}, request=request)
    connections.cookies.extract_cookies(sticky)
    assert not connections.cookies
    accepting = httpx.Cookies()
    accepting.extract_cookies(sticky)
    assert accepting.get("replica") == "2"  # what an ordinary jar keeps
