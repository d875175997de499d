"""The API's relay of an answer's stream (pipeline.api.streams.Relay), on a real event loop
and real threads: when the engine's request goes out, and what ends it."""

import asyncio
import threading
import time

from pipeline.api.streams import Relay, text_chunks
from pipeline.core.schema import Answer
from pipeline.serving.interface import AnswerStream
from tests.conftest import wait_for


class Client:
    """What text_chunks asks of a Starlette request: whether the client has gone."""

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
        return AnswerStream(answer, self._generate())

    def _generate(self):
        self.requested.set()
        try:
            for number in range(self._chunks):
                time.sleep(self._delay_s)
                self.sent += 1
                yield f"{number} "
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

    async def read() -> tuple[str, list[str]]:
        relay = Relay(engine.stream(), asyncio.get_running_loop(), lambda: slots.append("released"))
        text = "".join([chunk async for chunk in text_chunks(relay, Client())])
        return text, list(slots)

    text, slots_at_the_end = asyncio.run(read())
    assert text == "0 1 2 3 4 " and slots_at_the_end == ["released"]


def test_a_reader_that_leaves_stops_the_generation_at_the_next_chunk():
    """The client hangs up after the first text: the relay thread stops at the next chunk
    and closes the stream (upstream, vLLM aborts the request), then frees the slot."""
    engine, slots, client = Engine(chunks=1000, delay_s=0.02), [], Client()

    async def read_one_then_leave() -> str:
        relay = Relay(engine.stream(), asyncio.get_running_loop(), lambda: slots.append("released"))
        chunks = text_chunks(relay, client)
        first = await anext(chunks)
        client.gone = True
        async for _ in chunks:
            pass
        return first

    first = asyncio.run(read_one_then_leave())
    assert first.startswith("0 ")
    assert engine.closed.wait(10) and engine.sent < 20
    wait_for(lambda: slots == ["released"], timeout_s=5)
