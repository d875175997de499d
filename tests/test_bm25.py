import numpy as np
import pytest

from pipeline.evaluation.squad import read_squad
from pipeline.retrieval.bm25 import BM25Index
from pipeline.retrieval.corpus import PassageStore
from pipeline.text.tokenizer import JapaneseTokenizer
from tests.conftest import JSQUAD_PATH


def jsquad_store_and_questions():
    corpus = read_squad([JSQUAD_PATH], [True])
    return PassageStore.from_records(corpus.passages, "jsquad"), corpus.questions


def test_bm25_finds_the_gold_passage_of_jsquad_questions():
    store, questions = jsquad_store_and_questions()
    index = BM25Index.build(store, JapaneseTokenizer())
    sample = questions[::20]  # every 20th of 4,442 questions
    found = sum(q.gold_row in index.search(q.text, 5)[0] for q in sample)
    assert found / len(sample) >= 0.93


def test_scores_are_positive_and_descending():
    store, questions = jsquad_store_and_questions()
    rows, scores = BM25Index.build(store, JapaneseTokenizer()).search(questions[0].text, 10)
    assert len(rows) == 10
    assert np.all(scores > 0) and np.all(np.diff(scores) <= 0)


def test_a_question_without_known_words_finds_nothing():
    store, _ = jsquad_store_and_questions()
    rows, scores = BM25Index.build(store, JapaneseTokenizer()).search("ｚｚｑｘ。、", 5)
    assert rows.size == 0 and scores.size == 0


def test_the_cached_index_is_reused_and_rebuilt_when_the_corpus_changes(tmp_path, wiki_records):
    store = PassageStore.from_records(wiki_records[:50], "a")
    first = BM25Index.cached(store, tmp_path)
    entries = list((tmp_path / "indexes" / "bm25").iterdir())
    assert len(entries) == 1
    stamp = (entries[0] / "params.index.json").stat().st_mtime_ns
    second = BM25Index.cached(store, tmp_path)
    assert (entries[0] / "params.index.json").stat().st_mtime_ns == stamp
    question = wiki_records[7]["text"][:30]
    assert first.search(question, 3)[0].tolist() == second.search(question, 3)[0].tolist()
    assert BM25Index.existing(store, tmp_path) is not None

    changed = PassageStore.from_records(wiki_records[:51], "b")
    assert BM25Index.existing(changed, tmp_path) is None
    BM25Index.cached(changed, tmp_path)
    assert len(list((tmp_path / "indexes" / "bm25").iterdir())) == 2


def test_an_interrupted_build_leaves_no_entry(tmp_path, wiki_records, monkeypatch):
    store = PassageStore.from_records(wiki_records[:20], "a")

    def broken_build(cls, passages, tokenizer):
        raise KeyboardInterrupt

    monkeypatch.setattr(BM25Index, "build", classmethod(broken_build))
    with pytest.raises(KeyboardInterrupt):
        BM25Index.cached(store, tmp_path)
    assert list((tmp_path / "indexes" / "bm25").iterdir()) == []
    assert BM25Index.existing(store, tmp_path) is None
