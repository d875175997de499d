"""The exact backend: raw .npz vectors from the hub-shaped mirror, assembled and searched."""

import shutil

import numpy as np
import pytest

from pipeline.core.errors import DataUnavailableError, IndexMismatchError
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.vector_files import assemble, embedding_files, npz_shape
from pipeline.retrieval.loading import load_retrieval
from tests.conftest import EMBEDDINGS_DIR, INDEX_REPO, jawiki_settings, search, write_embedding_files


def test_files_are_taken_in_numeric_order_and_assembled(hub_mirror, tmp_path, passage_vectors):
    settings = jawiki_settings(hub_mirror, tmp_path)
    files = embedding_files(settings, allow_download=False)
    assert [f.name for f in files] == ["0.npz", "1.npz", "10.npz"]
    assert npz_shape(files[0]) == ((50, 384), np.dtype("float16"))
    assemble(files, tmp_path / "m.npy", len(passage_vectors), 384)
    matrix = np.load(tmp_path / "m.npy", mmap_mode="r")
    assert matrix.dtype == np.float16
    np.testing.assert_array_equal(matrix, passage_vectors.astype(np.float16))


def test_mismatched_and_broken_files_are_refused(tmp_path, passage_vectors):
    write_embedding_files(tmp_path / "dim", passage_vectors[:, :100], [0, 80])
    with pytest.raises(IndexMismatchError, match="expected float16"):
        assemble(sorted((tmp_path / "dim").glob("*.npz")), tmp_path / "a.npy", len(passage_vectors), 384)
    write_embedding_files(tmp_path / "rows", passage_vectors[:150], [0, 80])
    with pytest.raises(IndexMismatchError) as caught:
        assemble(sorted((tmp_path / "rows").glob("*.npz")), tmp_path / "b.npy", len(passage_vectors), 384)
    assert "150" in caught.value.ja and "160" in caught.value.ja
    broken = tmp_path / "rows" / "0.npz"
    broken.write_bytes(broken.read_bytes()[:500])
    with pytest.raises(DataUnavailableError, match="partly downloaded"):
        npz_shape(broken)


@pytest.mark.parametrize(("backend", "described"), [("exact", "exact fp32 scan"), ("exact-int8", "exact int8 scan")])
def test_exact_backend_end_to_end_on_cpu(hub_mirror, tmp_path, wiki_records, backend, described):
    settings = jawiki_settings(hub_mirror, tmp_path, backend=backend).model_copy(deep=True)
    settings.device = "cpu"
    service = load_retrieval(settings)
    assert described in service.vector_index.vector_store.client.describe()
    assert service.notices == []
    record = wiki_records[33]
    hit = search(service, f"{record['title']}\n{record['text']}", mode="dense").hits[0]
    assert hit.row == 33 and hit.score == pytest.approx(1.0, abs=2e-3)


def test_missing_vectors_fall_back_to_faiss_with_a_notice(hub_mirror, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(hub_mirror / INDEX_REPO, repo)
    shutil.rmtree(repo / EMBEDDINGS_DIR)
    settings = jawiki_settings(hub_mirror, tmp_path, backend="exact", repo=str(repo)).model_copy(deep=True)
    settings.device = "cpu"
    service = load_retrieval(settings)
    assert service.modes == ["bm25", "dense", "hybrid"]
    assert "IndexIVFPQ" in service.vector_index.vector_store.client.describe()
    notice = next(n for n in service.notices if n.code == "vector_backend_fallback")
    assert "exact" in notice.ja and ".npz" in notice.ja


def test_an_int8_scan_that_fails_its_check_falls_back_with_a_notice(hub_mirror, tmp_path, monkeypatch):
    import torch

    def zeros(left, right):
        return torch.zeros((len(left), right.shape[1]), dtype=torch.int32)

    monkeypatch.setattr(torch, "_int_mm", zeros)
    settings = jawiki_settings(hub_mirror, tmp_path, backend="exact-int8").model_copy(deep=True)
    settings.device = "cpu"
    service = load_retrieval(settings)
    assert "IndexIVFPQ" in service.vector_index.vector_store.client.describe()
    notice = next(n for n in service.notices if n.code == "vector_backend_fallback")
    assert "exact-int8" in notice.ja and "wrong results" in notice.en


def test_faiss_gpu_without_gpu_support_falls_back(hub_mirror, tmp_path):
    service = load_retrieval(jawiki_settings(hub_mirror, tmp_path, backend="faiss-gpu"))
    assert service.vector_index.vector_store.client.describe().endswith("(cpu)")
    assert any(n.code == "vector_backend_fallback" and "faiss-gpu" in n.ja for n in service.notices)


def test_demo_corpus_vectors_are_computed_when_there_is_no_hub_repo(tmp_path, wiki_records):
    from pipeline.settings.sources import load_settings

    settings = load_settings(environ={}, path="/none.toml", overrides={
        "cache_dir": str(tmp_path), "device": "cpu", "index": {"backend": "exact"}})  # fmt: skip
    passages = PassageStore.from_records(wiki_records[:40], "small")
    service = load_retrieval(settings, passages, bm25=False)
    assert "exact" in service.vector_index.vector_store.client.describe()
    assert search(service, wiki_records[7]["text"], mode="dense").hits[0].row == 7
