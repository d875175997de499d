"""The jawiki profile's loading path end to end, against a hub-shaped local mirror."""

import faiss
import pytest

from pipeline.core.errors import DataUnavailableError, IndexMismatchError
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.loading import load_retrieval
from tests.conftest import FLAT_FILE, INDEX_REPO, IVFPQ_FILE, build_flat_l2, jawiki_settings, retrieved, search


def test_full_profile_loads_corpus_index_and_model_from_the_mirror(hub_mirror, tmp_path, wiki_records):
    settings = jawiki_settings(hub_mirror, tmp_path)
    service = load_retrieval(settings)
    assert len(service.passages) == len(wiki_records)
    assert service.passages.files and all(f.endswith(".arrow") for f in service.passages.files)  # memory-mapped
    assert service.modes == ["bm25", "dense", "hybrid"]
    assert service.embedding.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert service.embedding.fallback_reason == ""
    assert service.notices == []
    store = service.vector_index.vector_store
    assert store.is_ivf and store.nprobe == 128
    assert service.auto_mode == "hybrid"  # the configured model itself is loaded

    record = wiki_records[21]
    question = f"{record['title']}\n{record['text']}"
    result = search(service, question, mode="dense", top_k=5)
    assert result.mode == "dense"
    assert result.hits[0].row == 21
    assert result.hits[0].section in ("", "歴史 > 概要")
    assert set(result.timings) >= {"embed", "search", "fetch", "retrieval_total"}
    hybrid = retrieved(service, question, mode="hybrid", top_k=5)
    assert hybrid[0].node.metadata["row"] == 21
    assert hybrid[0].node.metadata["rank_bm25"] is not None


def test_a_flat_hub_index_gives_exact_cosines(hub_mirror, tmp_path, wiki_records):
    service = load_retrieval(jawiki_settings(hub_mirror, tmp_path, file=FLAT_FILE))
    assert not service.vector_index.vector_store.is_ivf
    hits = search(service, f"{wiki_records[3]['title']}\n{wiki_records[3]['text']}", mode="dense").hits
    assert hits[0].row == 3
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_missing_index_file_disables_dense_with_a_clear_message(hub_mirror, tmp_path):
    service = load_retrieval(jawiki_settings(hub_mirror, tmp_path, file="faiss_indexes/absent.faiss"))
    assert service.modes == ["bm25"]
    notice = service.missing["dense"]
    assert "absent.faiss" in notice.en and "absent.faiss" in notice.ja
    result = search(service, "梅雨", mode="dense")
    assert result.mode == "bm25"
    assert result.notices[0].code == "retriever_fallback" and "absent.faiss" in result.notices[0].ja


def write_variant(mirror, tmp_path, name, index=None, data=None):
    """A copy of the index repo holding one altered index file."""
    import shutil

    repo = tmp_path / "variant" / INDEX_REPO
    shutil.copytree(mirror / INDEX_REPO, repo)
    target = repo / IVFPQ_FILE
    if index is not None:
        faiss.write_index(index, str(target))
    if data is not None:
        target.write_bytes(data)
    return str(repo)


def test_truncated_index_is_refused(hub_mirror, tmp_path):
    whole = (hub_mirror / INDEX_REPO / IVFPQ_FILE).read_bytes()
    repo = write_variant(hub_mirror, tmp_path, "truncated", data=whole[: len(whole) // 2])
    service = load_retrieval(jawiki_settings(hub_mirror, tmp_path, repo=repo))
    notice = service.missing["dense"]
    assert "truncated or corrupt" in notice.en and "python -m pipeline.download" in notice.ja


def test_wrong_dimension_index_is_refused(hub_mirror, tmp_path, passage_vectors):
    repo = write_variant(hub_mirror, tmp_path, "dim", index=build_flat_l2(passage_vectors[:, :128].copy()))
    service = load_retrieval(jawiki_settings(hub_mirror, tmp_path, repo=repo))
    notice = service.missing["dense"]
    assert "128-dimensional" in notice.en and "384-dimensional" in notice.en
    assert "128" in notice.ja and "384" in notice.ja


def test_corpus_and_index_of_different_sizes_are_refused(hub_mirror, tmp_path, passage_vectors):
    repo = write_variant(hub_mirror, tmp_path, "size", index=build_flat_l2(passage_vectors[:100]))
    settings = jawiki_settings(hub_mirror, tmp_path, repo=repo)
    with pytest.raises(IndexMismatchError) as caught:
        from pipeline.retrieval.dense.backends import open_dense_index
        from pipeline.retrieval.dense.encoder import load_embedding

        open_dense_index(settings, PassageStore.from_settings(settings), load_embedding(settings, allow_download=False))
    message = caught.value
    assert "100 vectors" in message.en and "160 passages" in message.en
    assert IVFPQ_FILE.rsplit("/", 1)[1] in message.en and ".arrow" in message.en
    assert "100" in message.ja and "160" in message.ja


def test_the_prebuilt_index_never_gets_the_stand_in_model(hub_mirror, tmp_path):
    settings = jawiki_settings(hub_mirror, tmp_path).model_copy(deep=True)
    settings.embedding.model = "intfloat/multilingual-e5-large"  # not in the mirror, not cached
    service = load_retrieval(settings)
    assert service.modes == ["bm25"]
    assert "intfloat/multilingual-e5-large" in service.missing["dense"].ja


def test_unreachable_hub_with_nothing_cached_is_a_clear_error(tmp_path):
    from pipeline.settings.sources import load_settings

    settings = load_settings(environ={}, path="/none.toml", overrides={"profile": "jawiki", "cache_dir": str(tmp_path)})
    with pytest.raises(DataUnavailableError) as caught:
        load_retrieval(settings)
    assert "singletongue/wikipedia-utils" in caught.value.ja
    assert "python -m pipeline.download" in caught.value.ja and "RAG_HUB_MIRROR" in caught.value.ja
