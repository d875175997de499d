import pytest

from pipeline.config import load_settings
from pipeline.corpus import LEAD_SECTION, Passage, PassageStore
from pipeline.squad import read_squad
from tests.conftest import CORPUS_REPO, JSQUAD_PATH, write_corpus_shards


def demo_settings(tmp_path, **overrides):
    return load_settings(environ={}, path="/none.toml", overrides={"cache_dir": str(tmp_path), **overrides})


def test_bundled_demo_corpus_loads_in_the_wikipedia_utils_schema(tmp_path):
    store = PassageStore.from_settings(demo_settings(tmp_path))
    assert len(store) == 1145
    assert store.dataset.column_names == ["id", "pageid", "revid", "title", "section", "text"]
    first = store.get(0)
    assert first == Passage(0, 0, None, None, "梅雨", "", first.text)
    assert first.text.startswith("梅雨（つゆ、ばいう）は")
    assert store.dataset.cache_files, "the corpus must be memory-mapped from the Arrow cache"


def test_bundled_demo_corpus_is_exactly_the_jsquad_paragraphs(tmp_path):
    """Guards the shipped copy against drift from its source (rebuild with
    scripts/build_demo_corpus.py)."""
    expected = read_squad([JSQUAD_PATH], [False]).passages
    store = PassageStore.from_settings(demo_settings(tmp_path))
    assert store.dataset.to_list() == expected


def test_rows_come_back_in_the_order_asked(tmp_path):
    store = PassageStore.from_settings(demo_settings(tmp_path))
    rows = [500, 3, 1144, 3]
    assert [p.row for p in store.get_many(rows)] == rows
    assert [p.id for p in store.get_many(rows)] == rows
    assert store.get_many([]) == []
    with pytest.raises(IndexError):
        store.get_many([1145])
    with pytest.raises(IndexError):
        store.get(-1)


def test_wikipedia_urls_and_section_labels():
    lead = Passage(0, 0, 1, 2, "東京 タワー", LEAD_SECTION, "…")
    assert lead.section_label == ""
    assert lead.url == "https://ja.wikipedia.org/wiki/%E6%9D%B1%E4%BA%AC_%E3%82%BF%E3%83%AF%E3%83%BC"
    nested = Passage(1, 1, 1, 2, "梅雨", "歴史 > 近代", "…")
    assert nested.url.endswith("#%E8%BF%91%E4%BB%A3")


def test_nodes_show_only_title_and_section_to_the_llm():
    node = Passage(7, 70, 11, 12, "梅雨", "気候", "梅雨前線が停滞する。").to_node()
    assert node.node_id == "7"
    assert node.metadata["row"] == 7 and node.metadata["pageid"] == 11 and node.metadata["revid"] == 12
    llm_text = node.get_content(metadata_mode="llm")
    assert "title: 梅雨" in llm_text and "section: 気候" in llm_text and "梅雨前線" in llm_text
    for hidden in ("row", "passage_id", "pageid", "revid", "url"):
        assert hidden not in llm_text
    assert "section" not in Passage(7, 70, None, None, "梅雨", "", "本文").to_node().get_content(metadata_mode="llm")


def test_neighbours_stay_within_the_article(tmp_path, wiki_records):
    mirror = tmp_path / "mirror"
    write_corpus_shards(mirror / CORPUS_REPO, wiki_records)
    store = PassageStore.from_settings(demo_settings(tmp_path, profile="jawiki", hub_mirror=str(mirror)))
    first_of_second_article = next(r["id"] for r in wiki_records if r["pageid"] == 1001)
    previous, following = store.neighbours(first_of_second_article)
    assert previous is None
    assert following.pageid == 1001 and following.row == first_of_second_article + 1
    previous, _ = store.neighbours(first_of_second_article - 1)
    assert previous.pageid == 1000
    assert store.neighbours(0)[0] is None


def test_demo_neighbours_use_titles_when_page_ids_are_unknown(tmp_path):
    store = PassageStore.from_settings(demo_settings(tmp_path))
    previous, following = store.neighbours(1)
    assert previous.row == 0 and following.row == 2
    titles = store.dataset["title"]
    last_of_article = max(r for r, title in enumerate(titles) if title == "梅雨")
    assert titles[last_of_article + 1] != "梅雨"
    assert store.neighbours(last_of_article)[0].title == "梅雨"
    assert store.neighbours(last_of_article)[1] is None


def test_fingerprint_follows_the_content(wiki_records):
    a = PassageStore.from_records(wiki_records[:10], "a")
    b = PassageStore.from_records(wiki_records[:10], "b")
    changed = [dict(r) for r in wiki_records[:10]]
    changed[3]["text"] += "。"
    assert a.fingerprint == b.fingerprint
    assert PassageStore.from_records(changed, "c").fingerprint != a.fingerprint
