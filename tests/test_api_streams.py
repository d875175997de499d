"""The API's relay of an answer's stream (pipeline.api.streams.Relay), on a real event loop
and real threads: when the engine's request goes out, and what ends it."""

import asyncio
import contextlib
import gc
import json
import threading
import time

import pytest
from starlette.requests import ClientDisconnect

from pipeline.api.service import ApiService
from pipeline.api.streams import Relay, RelayedResponse, chat_chunks, joined_text, text_chunks
from pipeline.core.schema import Answer
from pipeline.serving.interface import AnswerStream
from pipeline.settings.sources import load_settings
from tests.conftest import wait_for


class Client:
    """What joined_text asks of a Starlette request: whether the client has gone."""

    def __init__(self) -> None:
        self.gone = False

    async def is_disconnected(self) -> bool:
        return self.gone


class Engine:
    """An answer's chunks as the chat engine yields them: pulling the first sends the
    engine's request; closing the generator closes it."""

    def __init__(self, chunks: int, delay_s: float) -> None:
        self.requested, self.closed, self.ended = threading.Event(), threading.Event(), threading.Event()
        self.sent = 0
        self._chunks, self._delay_s = chunks, delay_s

    def stream(self) -> AnswerStream:
        answer = Answer(question="梅雨とは", standalone_question="梅雨とは", retriever="dense")
        return AnswerStream(answer, self._generate(answer))

    def _generate(self, answer: Answer):
        self.requested.set()
        try:
            for number in range(self._chunks):
                time.sleep(self._delay_s)
                self.sent += 1
                answer.text += f"{number} "  # as the chat engine completes its answer
                yield f"{number} "
            answer.complete = True
        finally:
            self.closed.set()


def test_the_engines_request_goes_out_before_anyone_reads_the_answer():
    """As ApiService.answer builds it, in the preparing worker thread: nothing consumes the
    answer, yet the engine is asked at once, and when the answer ends without a reader the
    generation slot comes back all the same (on 2026-12-05 the request waited 42-48 ms for
    the busy event loop at 32-64 users on the H200)."""
    engine, slots = Engine(chunks=3, delay_s=0.01), []

    async def prepared_but_unread() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(Relay, engine.stream(), loop, lambda: slots.append("released"))
        await asyncio.to_thread(engine.requested.wait, 10)
        await asyncio.to_thread(engine.closed.wait, 10)

    asyncio.run(prepared_but_unread())
    assert engine.requested.is_set() and engine.sent == 3 and engine.closed.is_set()
    wait_for(lambda: slots == ["released"], timeout_s=5)


def test_the_reader_gets_every_chunk_and_the_slot_is_back_before_the_end():
    engine, slots = Engine(chunks=5, delay_s=0.01), []

    def release() -> None:
        time.sleep(0.05)  # a slow release still comes before the reader sees the end
        slots.append("released")

    async def read() -> tuple[str, list[str]]:
        relay = Relay(engine.stream(), asyncio.get_running_loop(), release)
        text = "".join([chunk async for chunk in text_chunks(relay)])
        return text, list(slots)

    text, slots_at_the_end = asyncio.run(read())
    assert text == "0 1 2 3 4 " and slots_at_the_end == ["released"]


def test_what_goes_out_before_the_text_is_the_answer_as_prepared():
    """The relay thread completes the answer from the start: the first chunk's record
    (sources before any text) must not carry text the stream then sends again (the API
    client's test saw the whole answer there, then the text a second time)."""
    engine = Engine(chunks=3, delay_s=0.0)

    async def read_after_the_whole_answer() -> list[str]:
        relay = Relay(engine.stream(), asyncio.get_running_loop(), lambda: None)
        await asyncio.to_thread(engine.closed.wait, 10)  # generated before anything is read
        return [event async for event in chat_chunks(relay, "jawiki-rag")]

    events = [json.loads(event.removeprefix("data: ")) for event in asyncio.run(read_after_the_whole_answer())[:-1]]
    assert events[0]["rag"]["answer"] == "" and not events[0]["rag"]["complete"]
    assert "".join(event["choices"][0]["delta"].get("content", "") for event in events) == "0 1 2 "
    assert events[-1]["rag"]["answer"] == "0 1 2 " and events[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("spec", "leaving"),
    [("2.3", "between chunks"), ("2.3", "during a send"), ("2.4", "the send fails")],
)
def test_a_client_that_leaves_a_streamed_answer_stops_the_generation_at_the_next_chunk(spec, leaving):
    """Starlette's StreamingResponse as uvicorn (ASGI spec 2.3) or a 2.4 server calls it,
    the client gone after the first text: between two chunks, while a send is pending (a
    slow reader: the body stays parked at its yield, whose finally never runs), or as the
    failed send of a 2.4 server. Each time the relay thread stops at the next chunk and
    closes the stream (upstream, vLLM aborts the request), then frees the slot."""
    engine, slots = Engine(chunks=1000, delay_s=0.02), []

    async def leave_after_the_first_text() -> bool:
        relay = Relay(engine.stream(), asyncio.get_running_loop(), lambda: slots.append("released"))
        response = RelayedResponse(relay, chat_chunks(relay, "jawiki-rag"))
        gone, texts = asyncio.Event(), []

        async def receive() -> dict:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if b'"content": "0' not in message.get("body", b""):
                return
            texts.append(message["body"])
            gone.set()
            if leaving == "during a send":
                await asyncio.Event().wait()  # never read: cancelled when the client is gone
            if leaving == "the send fails":
                raise OSError("the connection was closed")

        scope = {"type": "http", "asgi": {"spec_version": spec}, "method": "POST"}
        with contextlib.suppress(ClientDisconnect):
            await asyncio.wait_for(response(scope, receive, send), 10)
        assert len(texts) == 1
        # while the response and its body still live: no garbage collection stops it
        closed = await asyncio.to_thread(engine.closed.wait, 5)
        del response
        return closed

    assert asyncio.run(leave_after_the_first_text()) and engine.sent < 20
    wait_for(lambda: slots == ["released"], timeout_s=5)


def test_a_client_that_leaves_a_joined_answer_stops_the_generation_at_the_next_chunk():
    """Not streamed, nothing else watches the client: it hangs up after the first text, and
    the next chunk finds it gone."""
    engine, slots, client = Engine(chunks=1000, delay_s=0.02), [], Client()

    async def leave_after_the_first_chunk() -> str:
        relay = Relay(engine.stream(), asyncio.get_running_loop(), lambda: slots.append("released"))
        await asyncio.to_thread(lambda: wait_for(lambda: engine.sent >= 1, timeout_s=10))
        client.gone = True
        return await joined_text(relay, client)

    assert asyncio.run(leave_after_the_first_chunk()) == ""
    assert engine.closed.wait(10) and engine.sent < 20
    wait_for(lambda: slots == ["released"], timeout_s=5)


def test_a_response_that_never_starts_stops_the_generation():
    """The client gone before the response began: its body, never iterated, is dropped,
    and the relay stops at its next chunk instead of generating for nobody."""
    engine, slots = Engine(chunks=1000, delay_s=0.02), []

    async def dropped() -> None:
        relay = Relay(engine.stream(), asyncio.get_running_loop(), lambda: slots.append("released"))
        response = RelayedResponse(relay, text_chunks(relay))
        del response
        gc.collect()
        await asyncio.to_thread(engine.closed.wait, 10)

    asyncio.run(dropped())
    assert engine.closed.is_set() and engine.sent < 20
    wait_for(lambda: slots == ["released"], timeout_s=5)


class SlowRag:
    """A RAG service whose preparation waits until told to go on."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.preparing, self.go_on = engine, threading.Event(), threading.Event()

    def answer(self, question, history, settings) -> AnswerStream:
        self.preparing.set()
        self.go_on.wait(10)
        return self.engine.stream()


def test_a_request_cancelled_while_its_answer_prepares_frees_its_slot_once(isolated_env, monkeypatch):
    """A task cancelled as asyncio cancels it (a server shutting down), while its worker
    thread still prepares: the slot is free at once, exactly once, and the prepared answer
    is closed, not generated for nobody."""
    engine = Engine(chunks=3, delay_s=0.01)
    rag = SlowRag(engine)
    service = ApiService(load_settings(overrides={"api": {"max_concurrent_generations": 1}}))
    monkeypatch.setattr(ApiService, "rag", property(lambda self: rag))
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: errors.append(hook.exc_value))
    settings = service.settings

    async def cancel_while_preparing() -> None:
        task = asyncio.create_task(service.answer("梅雨とは", [], settings))
        await asyncio.to_thread(rag.preparing.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert service._slots.acquire(blocking=False)  # free at once
        service._slots.release()
        rag.go_on.set()  # the worker thread finishes its preparation now
        await asyncio.sleep(0.3)

    asyncio.run(cancel_while_preparing())
    assert not engine.requested.is_set()  # never asked: the abandoned answer was closed
    assert service._slots.acquire(blocking=False) and not service._slots.acquire(blocking=False)
    service._slots.release()
    assert errors == []


def test_chunks_that_come_while_the_event_loop_is_busy_join_one_wake_and_none_is_lost():
    """Under load the event loop takes a while to come back to a stream: what the relay
    thread handed meanwhile must arrive whole and in order, with far fewer wakes of the
    loop than chunks (each wake writes to the loop's self-pipe; a wake per chunk cost the
    API 19 % of its CPU samples under 8 streams on the dev machine)."""
    engine, wakes = Engine(chunks=2000, delay_s=0.0), []

    async def read_slowly() -> str:
        loop = asyncio.get_running_loop()
        wake = loop.call_soon_threadsafe

        def counted(callback, *args):
            wakes.append(callback)
            return wake(callback, *args)

        loop.call_soon_threadsafe = counted  # this loop's wakes from other threads, counted
        relay = Relay(engine.stream(), loop, lambda: None)
        texts, finished = [], False
        while not finished:
            text, finished = await relay.handed()
            texts.append(text)
            time.sleep(0.001)  # the loop busy with other streams: the thread hands on
        return "".join(texts)

    assert asyncio.run(read_slowly()) == "".join(f"{number} " for number in range(2000))
    assert 0 < len(wakes) < 2000 / 4


def test_text_handed_before_the_engine_failed_reaches_the_reader_before_the_error():
    """The relay thread hands text, then the error of an engine gone mid-answer, while the
    event loop is busy: both come in one take, and the text must not go with the error."""

    class EngineGone(RuntimeError):
        pass

    def failing():
        yield "梅雨は"
        yield "六月から"
        raise EngineGone("the engine closed the stream")

    answer = Answer(question="梅雨とは", standalone_question="梅雨とは", retriever="dense")

    async def read_late() -> tuple[list[str], BaseException | None]:
        relay = Relay(AnswerStream(answer, failing()), asyncio.get_running_loop(), lambda: None)
        await asyncio.sleep(0.2)  # everything is handed before the first take
        texts = []
        try:
            async for text in text_chunks(relay):
                texts.append(text)
        except EngineGone as exc:
            return texts, exc
        return texts, None

    texts, error = asyncio.run(read_late())
    assert "".join(texts) == "梅雨は六月から" and isinstance(error, EngineGone)
