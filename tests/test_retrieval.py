import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.core.errors import EmptyQueryError, RetrieverUnavailableError
from pipeline.retrieval.loading import load_retrieval, touches_retrieval
from pipeline.settings.sources import load_settings
from tests.conftest import retrieved, search

QUESTION = "日本で梅雨がないのは北海道とどこか。"


@pytest.fixture(scope="module")
def demo_service(demo_cache):
    """The demo profile on a fresh offline machine, with hybrid search asked for: bundled
    corpus, BM25, and dense search with the bundled stand-in model."""
    overrides = {"cache_dir": str(demo_cache), "retrieval": {"mode": "hybrid"}}
    return load_retrieval(load_settings(environ={}, path="/none.toml", overrides=overrides))


@pytest.fixture(scope="module")
def bm25_only_service(tmp_path_factory):
    settings = load_settings(
        environ={},
        path="/none.toml",
        overrides={"cache_dir": str(tmp_path_factory.mktemp("c")), "embedding": {"allow_fallback": False}},
    )
    return load_retrieval(settings)


def test_demo_profile_offers_every_mode_and_says_which_model_stands_in(demo_service):
    assert demo_service.modes == ["bm25", "dense", "hybrid"]
    assert len(demo_service.passages) == 1145
    assert [n.code for n in demo_service.notices] == ["embedding_fallback"]
    assert "all-MiniLM-L6-v2" in demo_service.notices[0].ja
    assert "intfloat/multilingual-e5-large" in demo_service.notices[0].ja


def test_auto_mode_avoids_fusing_the_stand_in_model(demo_service, bm25_only_service):
    assert demo_service.auto_mode == "bm25"
    result = search(demo_service, QUESTION, mode="auto")
    assert result.mode == "bm25" and result.notices == []
    assert search(bm25_only_service, QUESTION, mode="auto").mode == "bm25"


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_each_mode_returns_top_k_passages_with_timings(demo_service, mode):
    result = search(demo_service, QUESTION, mode=mode, top_k=7)
    assert result.mode == mode and result.query == QUESTION
    assert len(result.hits) == 7
    assert len({h.row for h in result.hits}) == 7 and [h.number for h in result.hits] == list(range(1, 8))
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert result.timings["retrieval_total"] > 0 and result.timings["fetch"] > 0
    if mode != "bm25":
        assert result.timings["embed"] > 0


def test_bm25_and_hybrid_put_the_gold_paragraph_first(demo_service):
    for mode in ("bm25", "hybrid"):
        rows = [h.row for h in search(demo_service, QUESTION, mode=mode, top_k=5).hits]
        assert 0 in rows, mode  # paragraph 0 of 梅雨 holds the answer (小笠原諸島)


def test_hybrid_scores_are_reciprocal_rank_fusion_of_both_rankings(demo_service):
    hits = retrieved(demo_service, QUESTION, mode="hybrid", top_k=5)
    for hit in hits:
        ranks = [hit.node.metadata["rank_bm25"], hit.node.metadata["rank_dense"]]
        assert any(r is not None for r in ranks)
        assert hit.score == pytest.approx(sum(1 / (60 + r) for r in ranks if r is not None))
        assert "rank_bm25" not in hit.node.get_content(metadata_mode="llm")
    bm25_rows = [h.row for h in search(demo_service, QUESTION, mode="bm25", top_k=50).hits]
    assert bm25_rows.index(hits[0].node.metadata["row"]) + 1 == hits[0].node.metadata["rank_bm25"]


@pytest.mark.parametrize("query", ["", "   ", "\n\t　"])
def test_empty_questions_are_refused_before_searching(demo_service, query):
    with pytest.raises(EmptyQueryError) as caught:
        demo_service.search(query)
    assert "質問が空です" in caught.value.ja


def test_over_long_questions_are_truncated_with_notices(demo_service):
    question = "梅雨前線はどこに停滞するか。" * 1500  # 21,000 characters
    result = search(demo_service, question, mode="hybrid")
    assert len(result.query) == 2000
    codes = [n.code for n in result.notices]
    assert codes == ["query_truncated", "query_tokens_truncated"]
    assert "21,000 文字" in result.notices[0].ja
    assert result.hits


def test_a_question_is_tokenized_for_its_length_only_where_it_could_be_too_long(demo_service, monkeypatch):
    """The bound (UTF-8 bytes, one word-start mark, the special tokens) never lets through
    a question that is too long: in every script, at lengths around the model's limit, the
    answer is the exact count's. Questions under the bound are not tokenized at all."""
    model = demo_service.embedding.model
    pieces = ["梅雨前線", "tokyo tower ", "😀", "ｶﾀｶﾅ", "é", "1234 ", "\u3000", "𠮷野家"]
    for piece in pieces:
        for repeat in range(1, 2 * model.max_length, 7):
            question = piece * repeat
            exact = model.query_token_count(question)
            assert model.query_tokens_past_limit(question) == (exact if exact > model.max_length else None)
    monkeypatch.setattr(type(model), "query_token_count", lambda self, query: pytest.fail("tokenized"))
    assert model.query_tokens_past_limit(QUESTION) is None


def one_token_a_character(letters: str, normalizer, pre_tokenizer):
    """A fast tokenizer that makes one token of each character its pieces hold."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{letter: number for number, letter in enumerate(sorted(set(letters)), start=1)}}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=""))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


@pytest.mark.parametrize("lengthening", ["normalizer", "pre-tokenizer"])
def test_the_length_bound_holds_where_the_tokenizer_lengthens_the_text(demo_service, monkeypatch, lengthening):
    """NFKC, as XLM-R's (E5's) normalizer applies it, turns the 3 bytes of "ﷺ" into 18
    characters (15 tokens of one a character); a Metaspace after a punctuation split puts
    a "▁" before each mark (2 tokens a byte). The bound is taken after both, so such a
    question is counted, and told."""
    from tokenizers import normalizers, pre_tokenizers

    if lengthening == "normalizer":
        pieces, question = ["ﷺ", "㍿", QUESTION], "ﷺ" * 18  # 54 bytes, 270 tokens
        letters = unicodedata.normalize("NFKC", "".join(pieces)).replace(" ", "")
        tokenizer = one_token_a_character(letters, normalizers.NFKC(), pre_tokenizers.Whitespace())
    else:
        pieces, question = ["^", "q^", QUESTION], "q" + "^" * 200  # 201 bytes, 402 tokens
        marked = pre_tokenizers.Metaspace(prepend_scheme="always")
        split = pre_tokenizers.Sequence([pre_tokenizers.Punctuation(), marked])
        tokenizer = one_token_a_character("▁q^" + QUESTION, None, split)
    model = demo_service.embedding.model
    monkeypatch.setattr(model._model[0], "processor", tokenizer)
    assert len(question.encode("utf-8")) + 1 < model.max_length < model.query_token_count(question)
    assert model.query_tokens_past_limit(question) == model.query_token_count(question)
    for piece in pieces:
        for repeat in range(1, 2 * model.max_length, 11):
            exact = model.query_token_count(piece * repeat)
            assert model.query_tokens_past_limit(piece * repeat) == (exact if exact > model.max_length else None)


def test_unavailable_dense_search_falls_back_to_bm25_with_a_notice(bm25_only_service):
    assert bm25_only_service.modes == ["bm25"]
    result = search(bm25_only_service, QUESTION, mode="hybrid")
    assert result.mode == "bm25" and result.hits
    assert result.notices[0].code == "retriever_fallback"
    assert "hybrid" in result.notices[0].ja and "intfloat/multilingual-e5-large" in result.notices[0].ja
    with pytest.raises(RetrieverUnavailableError):
        bm25_only_service.retriever("dense", 5)


def test_concurrent_searches_match_sequential_ones(demo_service):
    questions = ["梅雨とは何か", "グスタフ・マーラーの交響曲", "生命の起源", "ラオスの首都", "石油の成分"] * 4
    expected = [[h.row for h in demo_service.search(q).hits] for q in questions]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda q: [h.row for h in demo_service.search(q).hits], questions))
    assert got == expected


def test_by_default_no_stand_in_index_is_built_until_someone_asks(tmp_path, wiki_records):
    """auto would not use the English stand-in for Japanese: it is neither imported nor
    built at start-up; asking for dense search builds it behind BM25."""
    from pipeline.retrieval.corpus import PassageStore

    settings = load_settings(environ={}, path="/none.toml", overrides={"cache_dir": str(tmp_path)})
    service = load_retrieval(settings, PassageStore.from_records(wiki_records[:60], "small"), dense_in_background=True)
    assert service.modes == ["bm25"] and service.missing["dense"].code == "dense_not_requested"
    assert "python -m pipeline.download" in service.missing["dense"].ja
    assert not list((tmp_path / "indexes").glob("dense/*"))
    asked = search(service, QUESTION, mode="dense")  # BM25 stands in, and the loading starts
    assert asked.mode == "bm25" and asked.notices[0].code == "retriever_fallback"
    assert service.missing["dense"].code == "dense_loading"
    deadline = time.monotonic() + 180
    while "dense" not in service.modes and time.monotonic() < deadline:
        time.sleep(0.2)
    assert service.modes == ["bm25", "dense", "hybrid"] and service.embedding.fallback_reason
    assert search(service, wiki_records[3]["text"], mode="dense").hits[0].row == 3


def test_dense_retrieval_can_join_after_bm25_is_serving(tmp_path, wiki_records):
    from pipeline.retrieval.corpus import PassageStore

    overrides = {"cache_dir": str(tmp_path), "retrieval": {"mode": "hybrid"}}  # asked for in the settings
    settings = load_settings(environ={}, path="/none.toml", overrides=overrides)
    passages = PassageStore.from_records(wiki_records[:60], "small")
    service = load_retrieval(settings, passages, dense_in_background=True)
    assert service.modes == ["bm25"]  # at once: nothing waits for the dense index
    assert service.missing["dense"].code == "dense_loading"
    assert search(service, QUESTION, mode="dense").mode == "bm25"  # BM25 stands in meanwhile
    deadline = time.monotonic() + 120
    while "dense" not in service.modes and time.monotonic() < deadline:
        time.sleep(0.2)
    assert service.modes == ["bm25", "dense", "hybrid"] and "dense" not in service.missing
    assert search(service, wiki_records[3]["text"], mode="dense").hits[0].row == 3


def test_a_full_disk_while_caching_loses_nothing_and_says_why(tmp_path, wiki_records, monkeypatch):
    import errno
    from pathlib import Path

    import numpy

    from pipeline.retrieval.corpus import PassageStore

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(numpy, "save", disk_full)  # bm25s writes its matrices with numpy.save
    monkeypatch.setattr(Path, "write_bytes", disk_full)  # the dense index is written as bytes
    settings = load_settings(
        environ={}, path="/none.toml", overrides={"cache_dir": str(tmp_path), "retrieval": {"mode": "hybrid"}}
    )
    service = load_retrieval(settings, PassageStore.from_records(wiki_records[:40], "small"))
    assert service.modes == ["bm25"]  # BM25 built in memory; dense could not be cached
    codes = {n.code for n in service.notices}
    assert {"bm25_not_cached", "dense_unavailable"} <= codes
    assert all("No space left on device" in n.ja for n in service.notices if n.code != "embedding_fallback")
    assert service.search(wiki_records[5]["text"][:40]).hits
    leftovers = [p for p in (tmp_path / "indexes").rglob("*") if p.is_file()]
    assert leftovers == []  # no half-written entry stays behind


@pytest.mark.parametrize(
    ("backend", "device", "reloads"),
    [
        ("exact-int8", "cuda", True),
        ("exact-int8", "cpu", False),
        ("exact", "cuda", False),
        ("faiss-cpu", "cuda", False),
    ],
)
def test_the_scan_graphs_setting_reloads_the_vectors_only_where_it_records_graphs(backend, device, reloads):
    """index.scan_graphs records the int8 scan on a GPU; elsewhere it changes nothing, and
    saving it must not load 5.5M vectors again."""
    base = load_settings(environ={}, path="/none.toml", overrides={"device": device, "index": {"backend": backend}})
    index = base.index.model_copy(update={"scan_graphs": not base.index.scan_graphs})
    flipped = base.model_copy(update={"index": index})
    assert touches_retrieval(base, flipped) is reloads
