"""E5 and the int8 scan in one step on the graph thread (index.encode_and_scan): the same
rows as the two-step path, one batch for the questions waiting, LlamaIndex's retriever
asking with the question's text. Here MiniLM and the int8 scan run on the CPU (the graph
thread is the same thread, without graphs); the GPU host runs the recorded path."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex

from pipeline.core import timing
from pipeline.core.cuda_graphs import graph_thread
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.encoder import PassageEmbedding
from pipeline.retrieval.dense.question_scan import QuestionScan
from pipeline.retrieval.dense.searchers import BatchingSearcher, Int8Searcher, SearcherClosedError
from pipeline.retrieval.dense.store import PassagesAsIs, PassageVectorStore
from tests.conftest import wait_for

QUESTIONS = ["日本で梅雨がないのは北海道とどこか。", "東京タワーの高さは？", "富士山はどこ？", "What is a typhoon?"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory, wiki_records, passage_vectors, minilm_dir):
    """The fixture corpus, its MiniLM vectors as an int8 searcher, and MiniLM encoding
    questions through the padded encoder (eager on the CPU)."""
    path = tmp_path_factory.mktemp("question-scan") / "vectors.npy"
    np.save(path, passage_vectors.astype(np.float16))
    embedding = PassageEmbedding(model_name=str(minilm_dir), max_length=256, normalize=True, device="cpu")
    embedding.use_padded_encoder("eager")
    searcher = Int8Searcher.from_file(path, "cpu")
    return PassageStore.from_records(wiki_records, "fixture"), embedding, searcher


def test_one_step_finds_what_encoding_then_searching_finds(parts):
    _, embedding, searcher = parts
    scan = QuestionScan(embedding.padded_encoder, "query: ", searcher)
    for question in QUESTIONS:
        similarities, rows = scan.search(question, 7)
        expected = searcher.search(embedding.padded_encoder.encode(["query: " + question]), 7)
        np.testing.assert_array_equal(rows, expected[1][0])
        np.testing.assert_allclose(similarities, expected[0][0], rtol=1e-6)


def test_questions_waiting_together_are_encoded_and_scanned_in_one_batch(parts, monkeypatch):
    _, embedding, searcher = parts
    scan = QuestionScan(embedding.padded_encoder, "", searcher)
    scanned, encoded, rescored = [], [], []
    real_candidates, real_encode = searcher.candidates, embedding.padded_encoder.encode_batch
    real_rescored = searcher.rescored
    threads = set()

    def candidates(queries, k):
        scanned.append((len(queries), k))
        threads.add(threading.get_ident())
        return real_candidates(queries, k)

    def encode_batch(texts):
        encoded.append(len(texts))
        threads.add(threading.get_ident())
        return real_encode(texts)

    def rescore(queries, candidates, k):
        rescored.append((len(queries), k))
        threads.add(threading.get_ident())
        return real_rescored(queries, candidates, k)

    monkeypatch.setattr(searcher, "candidates", candidates)
    monkeypatch.setattr(searcher, "rescored", rescore)
    monkeypatch.setattr(embedding.padded_encoder, "encode_batch", encode_batch)
    alone = {q: scan.search(q, 3 + i) for i, q in enumerate(QUESTIONS)}
    scanned.clear(), encoded.clear(), rescored.clear()
    busy = threading.Event()
    graph_thread().submit(busy.wait)  # the graph thread is busy while the questions arrive
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        futures = [pool.submit(scan.search, q, 3 + i) for i, q in enumerate(QUESTIONS)]
        wait_for(lambda: scan._waiting.qsize() == len(QUESTIONS))
        busy.set()
        together = [f.result() for f in futures]
    largest_k = 3 + len(QUESTIONS) - 1
    assert encoded == [len(QUESTIONS)] and scanned == rescored == [(len(QUESTIONS), largest_k)]
    assert threads == {graph_thread().submit(threading.get_ident).result()}  # all three steps
    for question, (similarities, rows) in zip(QUESTIONS, together, strict=True):
        np.testing.assert_array_equal(rows, alone[question][1])  # each its own k, from the largest k's candidates
        np.testing.assert_allclose(similarities, alone[question][0], rtol=1e-6)


def test_the_retriever_asks_the_store_with_text_and_the_steps_are_timed(parts, monkeypatch):
    passages, embedding, searcher = parts
    batched = BatchingSearcher(searcher)
    plain = PassageVectorStore.from_searcher(batched, passages)
    one_step = PassageVectorStore.from_searcher(
        batched, passages, questions=QuestionScan(embedding.padded_encoder, "", searcher)
    )
    assert plain.is_embedding_query and not one_step.is_embedding_query
    assert plain.describe() == batched.describe()  # what the status page shows
    assert one_step.describe() == f"{batched.describe()}, E5 and the scan in one step"

    def retriever(store):
        index = VectorStoreIndex.from_vector_store(store, embed_model=embedding, transformations=[PassagesAsIs()])
        return index.as_retriever(similarity_top_k=5)

    expected = [[hit.node.node_id for hit in retriever(plain).retrieve(q)] for q in QUESTIONS]

    def no_embedding(*args, **kwargs):
        raise AssertionError("the retriever embedded the question itself")

    monkeypatch.setattr(type(embedding), "_get_query_embedding", no_embedding)
    for question, rows in zip(QUESTIONS, expected, strict=True):
        with timing.collect() as timings:
            hits = retriever(one_step).retrieve(question)
        assert [hit.node.node_id for hit in hits] == rows and hits[0].node.get_content()
        assert timings["embed"] > 0 and timings["search"] > 0

    # The two steps together are the whole call, the batch's re-scoring (on the graph thread) included.
    real_rescored, threads = searcher.rescored, []

    def slow_rescored(*args):
        threads.append(threading.current_thread())
        time.sleep(0.05)
        return real_rescored(*args)

    monkeypatch.setattr(searcher, "rescored", slow_rescored)
    with timing.collect() as timings:
        started = time.perf_counter()
        retriever(one_step).retrieve(QUESTIONS[0])
        took = (time.perf_counter() - started) * 1000.0
    assert timings["search"] >= 50 and took - 5 < timings["embed"] + timings["search"] <= took

    async def asked_on_the_loop():
        loop_thread = threading.current_thread()
        hits = await retriever(one_step).aretrieve(QUESTIONS[1])
        return loop_thread, [hit.node.node_id for hit in hits]

    loop_thread, rows = asyncio.run(asked_on_the_loop())
    assert rows == expected[1] and threads[-1] is not loop_thread  # the loop stays free


def test_a_closed_searcher_is_said_to_every_waiting_question(tmp_path, passage_vectors, parts):
    _, embedding, _ = parts
    np.save(tmp_path / "v.npy", passage_vectors[:100].astype(np.float16))
    searcher = Int8Searcher.from_file(tmp_path / "v.npy", "cpu")
    scan = QuestionScan(embedding.padded_encoder, "", searcher)
    assert len(scan.search(QUESTIONS[0], 3)[1]) == 3
    searcher.close()
    with pytest.raises(SearcherClosedError):
        scan.search(QUESTIONS[1], 3)
    assert embedding.padded_encoder.encode([QUESTIONS[2]]).shape == (1, passage_vectors.shape[1])  # it goes on


def test_without_the_graph_thread_the_setting_leaves_the_retriever_embedding(hub_mirror, tmp_path):
    """One step is for questions encoded through CUDA graphs: on the CPU (the padded
    encoder eager) the store takes vectors, as without the setting."""
    from pipeline.retrieval.loading import load_retrieval
    from pipeline.settings.sources import with_values
    from tests.conftest import jawiki_settings, search

    settings = with_values(
        jawiki_settings(hub_mirror, tmp_path, backend="exact-int8"),
        {"device": "cpu", "index.encode_and_scan": True, "embedding.query_encoder": "padded"},
    )
    service = load_retrieval(settings)
    try:
        assert "int8" in service.vector_index.vector_store.client.describe()
        assert service.vector_index.vector_store.is_embedding_query
        assert "in one step" not in service.status().vector_search  # asked for, not running
        assert search(service, QUESTIONS[0], mode="dense").hits
    finally:
        service.close()
