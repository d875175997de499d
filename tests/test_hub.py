import pytest

from pipeline.assets.hub import BUNDLED_DIR, fetch_file, fetch_model, local_repo_dir
from pipeline.core.errors import DataUnavailableError
from pipeline.settings.sources import load_settings


def settings_with(tmp_path, **overrides):
    return load_settings(environ={}, path="/none.toml", overrides={"cache_dir": str(tmp_path / "c"), **overrides})


def test_repos_resolve_to_bundled_direct_and_mirrored_folders(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "owner" / "name").mkdir(parents=True)
    settings = settings_with(tmp_path, hub_mirror=str(mirror))
    assert local_repo_dir("bundled:jsquad-valid-v1.3", settings) == BUNDLED_DIR / "jsquad-valid-v1.3"
    assert local_repo_dir(str(tmp_path), settings) == tmp_path
    assert local_repo_dir("owner/name", settings) == mirror / "owner" / "name"
    assert local_repo_dir("owner/other", settings) is None
    with pytest.raises(DataUnavailableError):
        local_repo_dir("bundled:nothing-here", settings)


def test_fetch_file_names_the_missing_file_in_a_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "owner" / "name").mkdir(parents=True)
    (mirror / "owner" / "name" / "present.bin").write_bytes(b"x")
    settings = settings_with(tmp_path, hub_mirror=str(mirror))
    assert fetch_file("owner/name", "present.bin", settings).read_bytes() == b"x"
    with pytest.raises(DataUnavailableError) as caught:
        fetch_file("owner/name", "absent.bin", settings)
    assert "absent.bin" in caught.value.en and "absent.bin" in caught.value.ja


def test_offline_hub_with_nothing_cached_says_what_to_do(tmp_path):
    settings = settings_with(tmp_path)
    with pytest.raises(DataUnavailableError) as caught:
        fetch_file("hotchpotch/wikipedia-passages-jawiki-embeddings", "faiss_indexes/x.faiss", settings)
    assert "python -m pipeline.download" in caught.value.en and "RAG_HUB_MIRROR" in caught.value.en
    assert "python -m pipeline.download" in caught.value.ja
    with pytest.raises(DataUnavailableError) as caught:
        fetch_model("intfloat/multilingual-e5-large", settings, allow_download=True)
    assert "intfloat/multilingual-e5-large" in caught.value.ja
