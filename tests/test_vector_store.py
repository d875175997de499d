import faiss
import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.vector_stores.types import VectorStoreQuery

from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.encoder import PassageEmbedding
from pipeline.retrieval.dense.store import PassagesAsIs, PassageVectorStore
from tests.conftest import build_flat_l2, build_ivfpq


@pytest.fixture(scope="module")
def store_parts(wiki_records, passage_vectors):
    return PassageStore.from_records(wiki_records, "fixture"), passage_vectors


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return PassageEmbedding(model_name=str(minilm_dir), max_length=256, normalize=True, device="cpu")


def test_from_vector_store_and_a_retriever_return_filled_nodes(store_parts, minilm, wiki_records):
    passages, vectors = store_parts
    store = PassageVectorStore.from_index(build_ivfpq(vectors), passages, nprobe=8)
    retriever = VectorStoreIndex.from_vector_store(
        store, embed_model=minilm, transformations=[PassagesAsIs()]
    ).as_retriever(similarity_top_k=4)
    record = wiki_records[42]
    hits = retriever.retrieve(f"{record['title']}\n{record['text']}")
    assert len(hits) == 4
    top = hits[0].node
    assert top.node_id == "42" and top.get_content() == record["text"]
    assert top.metadata["row"] == 42
    assert top.metadata["title"] == record["title"]
    assert top.metadata["pageid"] == record["pageid"] and top.metadata["revid"] == record["revid"]
    assert top.metadata["url"].startswith("https://ja.wikipedia.org/wiki/")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_l2_distances_become_cosine_similarities(store_parts):
    passages, vectors = store_parts
    store = PassageVectorStore.from_index(build_flat_l2(vectors), passages)
    query = vectors[10]
    result = store.query(VectorStoreQuery(query_embedding=query.tolist(), similarity_top_k=5))
    rows = [int(i) for i in result.ids]
    assert rows[0] == 10
    expected = vectors[rows] @ query
    np.testing.assert_allclose(result.similarities, expected, atol=1e-5)
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5)


def test_inner_product_indexes_report_the_inner_product(store_parts):
    passages, vectors = store_parts
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    store = PassageVectorStore.from_index(index, passages)
    result = store.query(VectorStoreQuery(query_embedding=vectors[3].tolist(), similarity_top_k=3))
    np.testing.assert_allclose(result.similarities, vectors[[int(i) for i in result.ids]] @ vectors[3], atol=1e-5)


def test_nprobe_is_honoured_per_query(store_parts):
    passages, vectors = store_parts
    store = PassageVectorStore.from_index(build_ivfpq(vectors, nlist=8), passages, nprobe=1)
    query = VectorStoreQuery(query_embedding=vectors[5].tolist(), similarity_top_k=len(passages))
    one_list = store.query(query)
    all_lists = store.query(query, nprobe=8)
    # One probed list holds only part of the corpus; -1 padding rows are dropped.
    assert 0 < len(one_list.ids) < len(passages)
    assert len(all_lists.ids) == len(passages)
    assert store.nprobe == 1  # the override did not change the shared store


def test_the_store_is_read_only_and_checks_its_size(store_parts):
    passages, vectors = store_parts
    with pytest.raises(ValueError, match="160 passages"):
        PassageVectorStore.from_index(build_flat_l2(vectors[:-1]), passages)
    store = PassageVectorStore.from_index(build_flat_l2(vectors), passages)
    assert store.stores_text and store.client.ntotal == len(passages)
    with pytest.raises(NotImplementedError):
        store.add([])
    with pytest.raises(NotImplementedError):
        store.delete("1")


def test_dense_retrieval_loads_without_llamaindexs_default_tokenizer(wiki_records, tmp_path, monkeypatch):
    """An offline host cannot download tiktoken's encoding, which LlamaIndex's default
    node parser asks for: the read-only index must not build one (it did, and dense
    retrieval failed to load on the GPU host)."""
    import llama_index.core
    import tiktoken
    from llama_index.core import Settings

    from pipeline.retrieval.loading import load_retrieval
    from pipeline.settings.sources import load_settings

    def offline(name: str):
        raise ConnectionError(f"no network: cannot download the encoding of {name}")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    monkeypatch.setattr(llama_index.core, "global_tokenizer", None)
    for cached in ("_node_parser", "_tokenizer", "_transformations"):
        monkeypatch.setattr(Settings, cached, None)
    settings = load_settings(environ={}, path="/none.toml", overrides={"cache_dir": str(tmp_path), "device": "cpu"})
    service = load_retrieval(settings, PassageStore.from_records(wiki_records[:40], "small"), bm25=False)
    assert service.modes == ["dense"] and service.notices[0].code == "embedding_fallback"
