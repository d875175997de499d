"""The reranking plumbing with a tiny cross-encoder built here: random weights and the
real WordPiece vocabulary of the offline MiniLM package. It proves that candidates are
re-scored and cut to top-k, not that the order is any better (random weights)."""

import shutil

import numpy as np
import pytest
from sentence_transformers import CrossEncoder
from transformers import BertConfig, BertForSequenceClassification

from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.loading import load_retrieval
from pipeline.settings.sources import load_settings
from tests.conftest import retrieved, search

TOKENIZER_FILES = ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory, minilm_dir):
    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    vocab = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, folder / name)
    return folder


def test_candidates_are_reranked_by_the_cross_encoder_and_cut_to_top_k(tiny_cross_encoder, wiki_records, tmp_path):
    settings = load_settings(environ={}, path="/none.toml", overrides={
        "cache_dir": str(tmp_path), "device": "cpu",
        "rerank": {"enabled": True, "model": str(tiny_cross_encoder), "candidates": 20},
    })  # fmt: skip
    service = load_retrieval(settings, PassageStore.from_records(wiki_records, "fixture"), dense=False)
    assert service.reranker is not None and service.notices == []
    question = wiki_records[12]["text"][:40]
    result = search(service, question, mode="bm25", top_k=5)
    candidates = service.retriever("bm25", 20).retrieve(question)
    assert len(result.hits) == 5 and result.timings["rerank"] > 0
    assert {str(h.row) for h in result.hits} <= {h.node.node_id for h in candidates}
    expected = CrossEncoder(str(tiny_cross_encoder), device="cpu").predict(
        [(question, h.node.get_content()) for h in candidates]
    )
    best = [candidates[i].node.node_id for i in np.argsort(-expected, kind="stable")[:5]]  # ties: retrieval order
    assert [str(h.row) for h in result.hits] == best
    reranked = retrieved(service, question, mode="bm25", top_k=5)
    assert all("retrieval_score" in h.node.metadata for h in reranked)
    assert "retrieval_score" not in reranked[0].node.get_content(metadata_mode="llm")


def test_an_unloadable_reranker_is_reported_and_skipped(wiki_records, tmp_path):
    settings = load_settings(environ={}, path="/none.toml", overrides={
        "cache_dir": str(tmp_path), "rerank": {"enabled": True}})  # fmt: skip
    service = load_retrieval(settings, PassageStore.from_records(wiki_records, "fixture"), dense=False)
    assert service.reranker is None
    assert any(n.code == "reranker_unavailable" for n in service.notices)
    assert len(search(service, "梅雨", mode="bm25", top_k=3).hits) == 3
