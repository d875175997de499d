"""Questions prepared together go to the engine together: the waits of
pipeline.generation.waves, alone and in the chat engine against the stand-in engine."""

import threading
import time
from contextlib import contextmanager

import pytest

from pipeline.core.gpu import ProductGpuUse
from pipeline.generation.llm import LLMBackend
from pipeline.generation.waves import PreparationWaves
from tests.helpers import QUESTION, engine_for
from ui.widgets import timing_line


@contextmanager
def held_preparation(waves: PreparationWaves):
    """A preparation running on a thread of its own until the block ends (another
    question still being retrieved)."""
    begun, release = threading.Event(), threading.Event()

    def prepare() -> None:
        with waves.preparing():
            begun.set()
            release.wait(30)

    thread = threading.Thread(target=prepare)
    thread.start()
    begun.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def finished_preparation(waves: PreparationWaves):
    with waves.preparing() as ticket:
        pass
    return ticket


def test_a_prepared_request_waits_for_a_preparation_begun_before_it_was_ready():
    waves = PreparationWaves()
    waited: list[float] = []
    with held_preparation(waves):
        ticket = finished_preparation(waves)
        waiter = threading.Thread(target=lambda: waited.append(waves.wait_for_earlier(ticket, 30)))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()  # still waiting for the other question
    waiter.join(10)
    assert 0.25 <= waited[0] < 10  # held for at least the 0.3 s slept, less the thread's start


def test_preparations_begun_after_the_request_was_ready_do_not_lengthen_its_wait():
    waves = PreparationWaves()
    ticket = finished_preparation(waves)
    with held_preparation(waves):
        assert waves.wait_for_earlier(ticket, 30) < 1


def test_the_wait_ends_at_its_limit_and_a_failed_preparation_counts_as_ended():
    waves = PreparationWaves()
    with held_preparation(waves):
        ticket = finished_preparation(waves)
        assert 0.2 <= waves.wait_for_earlier(ticket, 0.2) < 5
        assert waves.wait_for_earlier(ticket, 0) == 0.0
    with pytest.raises(RuntimeError), waves.preparing():
        raise RuntimeError("retrieval failed")
    assert waves.wait_for_earlier(finished_preparation(waves), 30) < 1


@pytest.fixture
def rag_beside_local_engine(retrieval, standin, monkeypatch):
    """The local service as on a GPU host: retrieval keeps its encoder on the GPU and the
    engine is the process's own (the stand-in, reached as the local backend); a limit far
    above the waits the tests hold."""
    monkeypatch.setattr(retrieval, "gpu_use", ProductGpuUse(1.0, 0.0, measured=True))
    rag = engine_for(retrieval, standin.base_url, llm={"wait_for_retrieval_ms": 1000})
    rag.backend = LLMBackend("local", standin.base_url)
    return rag


def test_the_engine_is_asked_once_the_questions_that_came_with_it_are_retrieved(rag_beside_local_engine, standin):
    rag = rag_beside_local_engine
    assert rag.shares_gpu_with_engine()
    question = f"{QUESTION}（同時）"
    with held_preparation(rag.waves):
        stream = rag.answer(question)
        consumer = threading.Thread(target=stream.consume)
        consumer.start()
        time.sleep(0.3)
        assert consumer.is_alive() and (standin.last_request() or {}).get("prompt") != stream.answer.prompt
    consumer.join(30)
    answer = stream.answer
    assert standin.last_request()["prompt"] == answer.prompt and answer.complete
    assert answer.timings["wave"] >= 250 and answer.timings["ttft"] > 0
    assert "同時の質問の検索待ち" in timing_line(answer.timings)  # the answer's caption says what it waited for


def test_the_limit_is_the_settings_and_zero_or_a_remote_engine_never_waits(rag_beside_local_engine, standin, retrieval):
    rag = rag_beside_local_engine
    settings = rag.settings.model_copy(deep=True)
    with held_preparation(rag.waves):
        settings.llm.wait_for_retrieval_ms = 100
        answer = rag.answer(QUESTION, settings=settings).consume()
        assert answer.complete and 100 <= answer.timings["wave"] < 5000
        settings.llm.wait_for_retrieval_ms = 0
        assert "wave" not in rag.answer(QUESTION, settings=settings).consume().timings
        remote = engine_for(retrieval, standin.base_url, llm={"wait_for_retrieval_ms": 1000})
        assert not remote.shares_gpu_with_engine() and "wave" not in remote.answer(QUESTION).consume().timings


def test_a_follow_up_being_condensed_keeps_no_one_waiting(rag_beside_local_engine, monkeypatch):
    """Condensing a follow-up asks the engine itself: other questions do not wait for it."""
    from pipeline.core.schema import Turn
    from pipeline.generation import chat_engine

    rag = rag_beside_local_engine
    condensing, release = threading.Event(), threading.Event()
    condense = chat_engine.standalone_question

    def held_condense(question, history, *args):
        if history:
            condensing.set()
            release.wait(30)
        return condense(question, history, *args)

    monkeypatch.setattr(chat_engine, "standalone_question", held_condense)
    history = [Turn(question=QUESTION, answer="北海道と小笠原諸島です。")]
    follow_up = threading.Thread(target=lambda: rag.answer("では沖縄は？", history).consume())
    follow_up.start()
    try:
        assert condensing.wait(10)
        answer = rag.answer(QUESTION).consume()
        assert answer.complete and answer.timings["wave"] < 500  # not the fixture's 1,000 ms limit
    finally:
        release.set()
        follow_up.join(30)
