from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.schema import Passage
from pipeline.evaluation.squad import read_squad
from pipeline.retrieval.corpus import LEAD_SECTION, PassageStore
from pipeline.retrieval.nodes import passage_node
from pipeline.settings.sources import load_settings
from tests.conftest import CORPUS_REPO, JSQUAD_PATH, write_corpus_shards


def demo_settings(tmp_path, **overrides):
    return load_settings(environ={}, path="/none.toml", overrides={"cache_dir": str(tmp_path), **overrides})


def test_bundled_demo_corpus_loads_in_the_wikipedia_utils_schema(tmp_path):
    store = PassageStore.from_settings(demo_settings(tmp_path))
    assert len(store) == 1145
    assert store.table.column_names == ["id", "pageid", "revid", "title", "section", "text"]
    first = store.get(0)
    assert first == Passage(row=0, id=0, title="梅雨", section="", text=first.text)
    assert first.text.startswith("梅雨（つゆ、ばいう）は")
    assert [Path(f).name for f in store.files] == ["train-00000-of-00001.parquet"]  # read as is, no cache


def test_bundled_demo_corpus_is_exactly_the_jsquad_paragraphs(tmp_path):
    """Guards the shipped copy against drift from its source (rebuild with
    scripts/build_demo_corpus.py)."""
    expected = read_squad([JSQUAD_PATH], [False]).passages
    store = PassageStore.from_settings(demo_settings(tmp_path))
    assert store.table.to_pylist() == expected


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


def test_rows_from_many_chunks_are_fetched_without_joining_them(tmp_path):
    """The full corpus is memory-mapped in many chunks holding over 2 GiB of text: fetching
    rows must not concatenate the chunks (pyarrow's take did, and overflowed on the H200
    host). Here: a table of 1,145 one-row chunks."""
    store = PassageStore.from_settings(demo_settings(tmp_path))
    chunked = PassageStore(pa.concat_tables([store.table.slice(i, 1) for i in range(len(store))]), "chunked")
    assert chunked.table.column("text").num_chunks == len(store)
    rows = [1144, 0, 577, 0]
    assert chunked.get_many(rows) == store.get_many(rows)


def test_every_row_is_found_in_uneven_chunks_that_differ_between_columns(tmp_path):
    """Rows are found by bisecting the batches' first rows: each row of a table whose
    chunks are of uneven sizes, and laid out differently in each column, comes back as in
    one unchunked table."""
    store = PassageStore.from_settings(demo_settings(tmp_path))
    whole = store.table.combine_chunks()
    sizes = [0, 1, 7, 0, 2, 300, 5, 830, 0]  # 1,145 rows; empty chunks first, between and last
    columns = {}
    for number, name in enumerate(whole.column_names):
        cuts = sizes[number % 2 :] + sizes[: number % 2]  # two layouts, alternating
        starts = [sum(cuts[:i]) for i in range(len(cuts))]
        columns[name] = pa.chunked_array(
            [whole.column(name).slice(a, n).combine_chunks() for a, n in zip(starts, cuts, strict=True)]
        )
    uneven = PassageStore(pa.table(columns), "uneven")
    assert uneven.table.column("text").num_chunks == len(sizes)
    rows = list(range(len(store)))[::-1]
    assert uneven.get_many(rows) == PassageStore(whole, "whole").get_many(rows)


def test_wikipedia_urls_and_section_labels(tmp_path):
    store = PassageStore.from_records([
        {"id": 0, "pageid": 1, "revid": 2, "title": "東京 タワー", "section": LEAD_SECTION, "text": "…"},
        {"id": 1, "pageid": 1, "revid": 2, "title": "梅雨", "section": "歴史 > 近代", "text": "…"},
    ], "urls")  # fmt: skip
    lead, nested = store.get_many([0, 1])
    assert lead.section == ""
    assert lead.url == "https://ja.wikipedia.org/wiki/%E6%9D%B1%E4%BA%AC_%E3%82%BF%E3%83%AF%E3%83%BC"
    assert nested.url.endswith("#%E8%BF%91%E4%BB%A3")


def test_nodes_show_only_title_and_section_to_the_llm():
    node = passage_node(
        Passage(row=7, id=70, pageid=11, revid=12, title="梅雨", section="気候", text="梅雨前線が停滞する。")
    )
    assert node.node_id == "7"
    assert node.metadata["row"] == 7 and node.metadata["pageid"] == 11 and node.metadata["revid"] == 12
    llm_text = node.get_content(metadata_mode="llm")
    assert "title: 梅雨" in llm_text and "section: 気候" in llm_text and "梅雨前線" in llm_text
    for hidden in ("row", "id", "pageid", "revid", "url"):
        assert hidden not in llm_text
    bare = passage_node(Passage(row=7, id=70, title="梅雨", text="本文"))
    assert "section" not in bare.get_content(metadata_mode="llm")


def test_neighbours_stay_within_the_article(tmp_path, wiki_records):
    mirror = tmp_path / "mirror"
    write_corpus_shards(mirror / CORPUS_REPO, wiki_records)
    store = PassageStore.from_settings(demo_settings(tmp_path, profile="jawiki", hub_mirror=str(mirror)))
    first_of_second_article = next(r["id"] for r in wiki_records if r["pageid"] == 1001)
    context = store.context(first_of_second_article)
    assert context.previous is None and context.passage.row == first_of_second_article
    assert context.next.pageid == 1001 and context.next.row == first_of_second_article + 1
    assert store.context(first_of_second_article - 1).previous.pageid == 1000
    assert store.context(0).previous is None


def test_demo_neighbours_use_titles_when_page_ids_are_unknown(tmp_path):
    store = PassageStore.from_settings(demo_settings(tmp_path))
    context = store.context(1)
    assert context.previous.row == 0 and context.next.row == 2
    titles = store.column("title")
    last_of_article = max(r for r, title in enumerate(titles) if title == "梅雨")
    assert titles[last_of_article + 1] != "梅雨"
    assert store.context(last_of_article).previous.title == "梅雨"
    assert store.context(last_of_article).next is None
    assert store.context(len(store) - 1).next is None


def test_fingerprint_follows_the_content(wiki_records):
    a = PassageStore.from_records(wiki_records[:10], "a")
    b = PassageStore.from_records(wiki_records[:10], "b")
    changed = [dict(r) for r in wiki_records[:10]]
    changed[3]["text"] += "。"
    assert a.fingerprint == b.fingerprint
    assert PassageStore.from_records(changed, "c").fingerprint != a.fingerprint
