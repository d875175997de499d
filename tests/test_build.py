"""The corpus builder (``python -m pipeline.build``), end to end and offline: a small
CirrusSearch dump in the real format into passages; a slice of the demo corpus through
every stage on worker processes and on a local Ray cluster (identical outputs); an
interrupted build resumed without redoing finished shards; and BM25 recall on JSQuAD
identical whether the index comes from the builder or from the product's own build.

Real MeCab, FAISS, Ray and the offline all-MiniLM-L6-v2 (standing in for E5; its
vectors are filed under its own name)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import bm25s
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build import files
from pipeline.build.__main__ import main
from pipeline.build.bm25 import shard_scores
from pipeline.build.chunking import passages, sentences
from pipeline.build.encode import length_batches
from pipeline.build.ivfpq import index_shape
from pipeline.build.manifest import Manifest
from pipeline.build.runner import cuda_devices
from pipeline.build.wikitext import sections
from pipeline.core.errors import RagError
from pipeline.evaluation.retrieval import evaluate
from pipeline.evaluation.squad import read_squad
from pipeline.retrieval.bm25 import cache_folder
from pipeline.retrieval.corpus import LEAD_SECTION, PassageStore
from pipeline.retrieval.loading import load_retrieval
from pipeline.settings.sources import load_settings
from tests.conftest import DEMO_PARQUET, HERMETIC_ENV, JSQUAD_PATH, MODEL_REPO, dump_page, write_dump

CORPUS_REPO = "singletongue/wikipedia-utils"
INDEX_REPO = "hotchpotch/wikipedia-passages-jawiki-embeddings"
#: The demo builds' config; the dump's is named after its date.
CONFIG = "passages-jsquad-20251201"
DUMP_CONFIG = "passages-c400-jawiki-20251201"
#: The demo passages the full builds use (embedding them is most of the test's time).
SLICE = 150
MODEL_ARGS = ["--model", MODEL_REPO, "--passage-prefix", "", "--max-length", "64"]


@pytest.fixture(scope="module")
def build_env(tmp_path_factory, minilm_dir):
    """No RAG_* from the caller, a cache of its own, MiniLM in a hub-shaped mirror."""
    root = tmp_path_factory.mktemp("build-env")
    mirror = root / "mirror"
    (mirror / MODEL_REPO).parent.mkdir(parents=True)
    (mirror / MODEL_REPO).symlink_to(minilm_dir)
    env = {
        "RAG_CACHE_DIR": str(root / "cache"),
        "RAG_SETTINGS_FILE": str(root / "settings.toml"),
        "RAG_SECRETS_FILE": str(root / "secrets.toml"),
        "RAG_HUB_MIRROR": str(mirror),
        **HERMETIC_ENV,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("RAG_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


def build(out: Path, *args: str) -> int:
    return main(["--out", str(out), "--config", CONFIG, "--workers", "2", *args])


def corpus(out: Path, config: str = CONFIG):
    """The built corpus as one table."""
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / CORPUS_REPO / config).glob("train-*.parquet")))


# --- passages-c400 from a CirrusSearch dump ---------------------------------------------------

SENTENCE = "これは段落を長くするための文で、四百文字で切れるかどうかを確かめる。"  # 34 characters
LONG_SENTENCE = "あ" * 420 + "。"


LONG_PAGE = "\n\n".join([
    "'''長い記事'''は試験用の記事である。" + SENTENCE * 4, "== 本文 ==",
    SENTENCE * 20, SENTENCE * 2 + LONG_SENTENCE, SENTENCE * 20, SENTENCE * 5,
])  # fmt: skip
PAGES = [
    dump_page(
        5,
        "アンパサンド",
        """{{Infobox 記号
|名前 = &
|画像 = [[ファイル:Ampersand.svg|thumb|[[記号]]の例]]
}}
'''アンパサンド'''（{{lang|en|ampersand}}、&）は、並立助詞「…と…」を意味する[[記号]]である<ref>{{cite web|url=https://example.org|title=出典}}</ref>。{{仮リンク|ラテン語|en|Latin}}の単語を起源とする。
<!-- コメントは消える -->
== 歴史 ==
{{Main|アンパサンドの歴史}}
その使用は1世紀に遡る[[古代ローマ|ローマ]]の[[筆記体]]に見られる<ref name="a" />。
* 箇条書きは段落ではない
=== 字形 ===
字形は[https://example.org/glyph さまざま]である。これは小見出しの段落である。
{| class="wikitable"
! 年 !! 出来事
|-
| 1世紀 || 誕生
|}
== 脚注 ==
{{Reflist}}
== 参考文献 ==
* 本の一覧
[[Category:記号]]""",
    ),
    dump_page(6, "長い記事", LONG_PAGE),
    dump_page(7, "Wikipedia:削除依頼", "削除依頼の本文です。これは記事ではありません。", namespace=4),
    dump_page(8, "本文なし", None),
    dump_page(9, "一覧だけの記事", "* 項目一\n* 項目二\n[[Category:一覧]]"),
    dump_page(10, "短い記事", "'''短い記事'''は[[日本]]の短い記事である。"),
]


@pytest.fixture(scope="module")
def dump_builds(tmp_path_factory, build_env):
    """The dump, and its passages built with worker processes."""
    root = tmp_path_factory.mktemp("dump")
    dump = root / "jawiki-20251201-cirrussearch-content.json.gz"
    write_dump(dump, PAGES)
    assert main(dump_args(root / "local", dump, "--stages", "passages,bm25,install")) == 0
    return {"dump": dump, "local": root / "local"}


def dump_args(out: Path, dump: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--dump", str(dump), "--pages-per-batch", "2", "--shard-size", "7", "--workers", "2",
            *extra]  # fmt: skip


def ray_installed() -> None:
    """Ray is for clusters (requirements-dev.txt brings it; the GPU host's wheels do not)."""
    pytest.importorskip("ray", reason="ray is not installed here (requirements-dev.txt installs it)")


def test_a_dump_becomes_passages_c400(dump_builds, build_env):
    out = dump_builds["local"]
    config_dir = out / CORPUS_REPO / DUMP_CONFIG  # named after the dump's date
    rows = corpus(out, DUMP_CONFIG).to_pylist()
    assert [pq.read_metadata(p).num_rows for p in sorted(config_dir.glob("train-*.parquet"))] == [7, len(rows) - 7]
    assert [row["id"] for row in rows] == list(range(1, len(rows) + 1))  # wikipedia-utils numbers from 1
    assert all(len(row["text"]) <= 400 for row in rows)
    assert {row["title"] for row in rows} == {"アンパサンド", "長い記事", "短い記事"}
    by_title = {title: [r for r in rows if r["title"] == title] for title in ("アンパサンド", "長い記事")}
    ampersand = by_title["アンパサンド"]
    assert {(r["pageid"], r["revid"]) for r in ampersand} == {(5, 507)}
    assert [r["section"] for r in ampersand] == [LEAD_SECTION, "歴史"]  # 脚注, 参考文献 left out
    assert ampersand[0]["text"] == (
        "アンパサンド(ampersand、&)は、並立助詞「...と...」を意味する記号である。ラテン語の単語を起源とする。"
    )  # NFKC, templates, links and references rendered as wikipedia-utils' paragraphs read
    assert (
        ampersand[1]["text"]
        == "その使用は1世紀に遡るローマの筆記体に見られる。字形はさまざまである。これは小見出しの段落である。"
    )
    for row in rows:
        assert not any(mark in row["text"] for mark in ("{{", "}}", "[[", "<ref", "'''", "wikitable", "箇条書き"))

    body = [r["text"] for r in by_title["長い記事"] if r["section"] == "本文"]
    assert len(body) >= 4 and all(len(text) > 400 - len(SENTENCE) for text in body[:-1])  # packed full, then cut
    assert "".join(body) == SENTENCE * 47  # every sentence once, in order; the 421-character one dropped

    manifest = json.loads((config_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["dump_date"] == "2025-12-01"
    assert manifest["counts"] == {
        "pages": 6, "passages": len(rows), "skipped_namespace": 1, "skipped_no_wikitext": 1,
        "pages_without_passages": 1, "sentences_over_limit": 1, "shards": -(-len(rows) // 7),
    }  # fmt: skip
    dump = out.parent / "jawiki-20251201-cirrussearch-content.json.gz"
    assert manifest["source"]["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    bm25 = f"{INDEX_REPO}/bm25/{DUMP_CONFIG}"
    assert set(manifest["files"]) == {
        f"{CORPUS_REPO}/README.md",
        *(f"{CORPUS_REPO}/{DUMP_CONFIG}/{p.name}" for p in config_dir.glob("train-*.parquet")),
        *(f"{bm25}/{name}" for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy",
                                        "vocab.index.json", "params.index.json")),
    }  # fmt: skip
    assert set(manifest["stages"]) == {"passages", "bm25", "install"}

    settings = load_settings(overrides={"profile": "jawiki", "hub_mirror": str(out), "corpus": {"config": DUMP_CONFIG}})
    store = PassageStore.from_settings(settings)  # the product reads the build as it reads the hub's corpus
    assert len(store) == len(rows)
    assert store.get(0).title == "アンパサンド" and store.get(0).section == ""  # __LEAD__ shown as no section
    assert store.get(1).section == "歴史"


def test_the_dump_on_ray_gives_the_same_passages(dump_builds, build_env, tmp_path):
    ray_installed()
    assert main(dump_args(tmp_path / "ray", dump_builds["dump"], "--stages", "passages", "--ray")) == 0
    assert corpus(dump_builds["local"], DUMP_CONFIG).equals(corpus(tmp_path / "ray", DUMP_CONFIG))


def test_another_corpus_under_the_same_config_is_served_as_built(dump_builds, tmp_path):
    """Another corpus under the same config name, installed into the same cache: the
    product reads the new one (its cache and fingerprint follow the files), and its BM25
    index is the new one's."""
    dump = tmp_path / "jawiki-20251201-cirrussearch-content.json.gz"
    write_dump(dump, PAGES[-1:])
    args = ["--out", str(tmp_path / "out"), "--dump", str(dump), "--stages", "passages,bm25,install", "--workers", "2"]
    assert main(args) == 0
    settings = load_settings(overrides={"profile": "custom", "corpus": {"build": str(tmp_path / "out")}})
    served = PassageStore.from_settings(settings)
    assert served.table.column("title").to_pylist() == ["短い記事"]
    first = PassageStore.from_settings(
        load_settings(overrides={"profile": "custom", "corpus": {"build": str(dump_builds["local"])}})
    )
    assert served.fingerprint != first.fingerprint and len(first) > len(served)  # fmt: skip


# --- the demo corpus through every stage: worker processes and Ray -------------------------


@pytest.fixture(scope="module")
def demo_slice(tmp_path_factory) -> Path:
    """The first demo passages as a passages dataset (the builder's other input)."""
    path = tmp_path_factory.mktemp("passages") / "passages.parquet"
    pq.write_table(pq.read_table(DEMO_PARQUET).slice(0, SLICE), path)
    return path


FULL = ["--stages", "passages,embed,faiss,bm25", "--shard-size", "50", *MODEL_ARGS]


@pytest.fixture(scope="module")
def full_build(tmp_path_factory, build_env, demo_slice) -> Path:
    """The demo slice through every stage with worker processes."""
    out = tmp_path_factory.mktemp("full") / "local"
    assert build(out, "--passages", str(demo_slice), *FULL) == 0
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / CORPUS_REPO / CONFIG / "manifest.json").read_text(encoding="utf-8"))


def vectors(out: Path) -> np.ndarray:
    folder = out / INDEX_REPO / f"embs/{CONFIG}/all-MiniLM-L6-v2-passage"
    assert sorted(p.name for p in folder.iterdir()) == ["0.npz", "1.npz", "2.npz"]
    return np.concatenate([np.load(folder / f"{n}.npz")["embs"] for n in range(3)])


def bm25_scores(out: Path, queries: list[str]) -> list[np.ndarray]:
    from pipeline.text.terms import SearchTerms

    model, terms = bm25s.BM25.load(out / INDEX_REPO / "bm25" / CONFIG, mmap=True), SearchTerms()
    return [model.get_scores([w for w in terms(q) if w in model.vocab_dict]) for q in queries]


def test_every_stage_writes_the_hub_layout(full_build):
    out = full_build
    record = manifest(out)
    assert record["counts"] == {"passages": SLICE, "shards": 3}
    assert corpus(out).equals(pq.read_table(DEMO_PARQUET).slice(0, SLICE))  # ids and all, as given
    matrix = vectors(out)
    assert matrix.shape == (SLICE, 384) and matrix.dtype == np.float16
    assert np.allclose(np.linalg.norm(matrix.astype(np.float32), axis=1), 1, atol=2e-3)
    assert record["model"]["name"] == "all-MiniLM-L6-v2" and record["model"]["repo"] == MODEL_REPO
    nlist, m, bits = index_shape(SLICE, 384)
    assert (nlist, m, bits) == (2, 192, 7)  # fewer than 256 vectors per PQ centroid set: 7-bit codes
    assert record["faiss"]["file"] == f"faiss_indexes/{CONFIG}/all-MiniLM-L6-v2-passage/index_IVF2_PQ192x7.faiss"
    index = faiss.read_index(str(out / INDEX_REPO / record["faiss"]["file"]))
    assert isinstance(index, faiss.IndexIVFPQ) and index.metric_type == faiss.METRIC_L2
    assert (index.ntotal, index.d, index.nlist, index.pq.M, index.pq.nbits) == (SLICE, 384, nlist, m, bits)
    faiss.extract_index_ivf(index).nprobe = nlist
    _, found = index.search(matrix[:20].astype(np.float32), 1)
    assert (found[:, 0] == np.arange(20)).mean() >= 0.9  # each passage finds itself through the PQ codes
    for path, entry in record["files"].items():
        assert (out / path).stat().st_size == entry["bytes"], path
    assert record["settings"]["RAG_INDEX_FILE"] == record["faiss"]["file"]
    assert set(record["stages"]) == {"passages", "embed", "faiss", "bm25"}


def test_ray_and_worker_processes_build_the_same(full_build, build_env, demo_slice, tmp_path):
    ray_installed()
    local, ray = full_build, tmp_path / "ray"
    assert build(ray, "--passages", str(demo_slice), *FULL, "--ray") == 0
    assert corpus(local).equals(corpus(ray))
    for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json"):
        assert (local / INDEX_REPO / "bm25" / CONFIG / name).read_bytes() == (
            ray / INDEX_REPO / "bm25" / CONFIG / name
        ).read_bytes()
    queries = ["梅雨はいつ始まるか", "北海道に梅雨はあるか", "生命の起源"]
    for a, b in zip(bm25_scores(local, queries), bm25_scores(ray, queries), strict=True):
        assert np.array_equal(a, b) and a.max() > 0
    # The encoder runs with one thread per Ray actor and all cores here: fp32 sums may round
    # differently before the cast to fp16.
    assert np.abs(vectors(local).astype(np.float32) - vectors(ray).astype(np.float32)).max() < 2e-3
    records = [manifest(out) for out in (local, ray)]
    assert records[0]["counts"] == records[1]["counts"]
    assert records[0]["bm25"]["entries"] == records[1]["bm25"]["entries"]
    assert records[1]["host"]["runner"] == "ray" and records[0]["host"]["runner"] == "local"
    assert {k: v for k, v in records[0]["files"].items() if "/embs/" not in k and "faiss" not in k} == {
        k: v for k, v in records[1]["files"].items() if "/embs/" not in k and "faiss" not in k
    }


def test_one_encoder_process_per_device_gives_the_same_vectors(full_build, tmp_path, build_env, minilm_dir):
    """The one-process-per-GPU pool, here with two CPU devices (this machine has no GPU)."""
    from pipeline.build.embed import ShardEmbedder
    from pipeline.build.runner import LocalRunner

    runner = LocalRunner(workers=2)
    runner._devices = ["cpu", "cpu"]  # what devices() finds on a host with two GPUs, as CPU devices
    shards = sorted((full_build / CORPUS_REPO / CONFIG).glob("train-*.parquet"))
    items = [{"shard": n, "source": str(path), "target": str(tmp_path / f"{n}.npz")} for n, path in enumerate(shards)]
    options = {"folder": str(minilm_dir), "prefix": "", "max_length": 64, "batch_tokens": None, "compile": False}
    assert sorted(result["shard"] for result in runner.map_actors(ShardEmbedder, options, items)) == [0, 1, 2]
    pooled = np.concatenate([np.load(tmp_path / f"{n}.npz")["embs"] for n in range(3)])
    assert np.abs(pooled.astype(np.float32) - vectors(full_build).astype(np.float32)).max() < 2e-3


# --- resuming -----------------------------------------------------------------------------


def test_an_interrupted_build_resumes_without_redoing_finished_shards(tmp_path, build_env, demo_slice, full_build):
    out = tmp_path / "resumed"
    assert build(out, "--passages", str(demo_slice), *FULL[:1], "passages", *FULL[2:]) == 0
    # One GPU at most: its encoder process has two shards in flight, so at most two of the
    # three are embedded when the run stops (one on a host without a GPU, where the
    # encoder runs in this process, one shard at a time).
    stopped = ["--limit-shards", "1", "--gpus", "1"]
    assert build(out, *FULL[:1], "embed", *FULL[2:], *stopped) == 3  # stopped: run again
    assert build(out, *FULL[:1], "bm25", *FULL[2:], *stopped) == 3
    embeddings = out / INDEX_REPO / f"embs/{CONFIG}/all-MiniLM-L6-v2-passage"
    terms = out / ".build" / CONFIG / "bm25" / "terms"
    first = {path: path.stat().st_mtime_ns for path in embeddings.glob("*.npz")}
    embedded = len(first)  # the shards in flight when it stopped finish too
    terms_done = len(list(terms.glob("*.npz")))
    assert embedded == (2 if cuda_devices() else 1) and terms_done >= 1
    (embeddings / ".2.npz.partial").write_bytes(b"half a file from a killed run")

    assert build(out, "--passages", str(demo_slice), *FULL) == 0
    assert {path: path.stat().st_mtime_ns for path in first} == first  # not rewritten
    stages = manifest(out)["stages"]
    assert stages["embed"]["shards_reused"] == embedded and stages["embed"]["shards_computed"] == 3 - embedded
    assert stages["bm25"]["steps"]["terms"]["shards_reused"] == terms_done
    assert stages["bm25"]["steps"]["terms"]["shards_computed"] == 3 - terms_done
    assert not (embeddings / ".2.npz.partial").exists() and not (out / ".build" / CONFIG / "bm25").exists()
    clean = full_build
    assert corpus(out).equals(corpus(clean))
    assert np.array_equal(vectors(out), vectors(clean))  # same process kind: bit for bit
    files = {k: v for k, v in manifest(out)["files"].items() if "faiss" not in k}
    assert files == {k: v for k, v in manifest(clean)["files"].items() if "faiss" not in k}


def test_a_bm25_build_stopped_while_scoring_goes_on_from_its_scored_shards(tmp_path, build_env, demo_slice, full_build):
    """A shard's terms file is deleted once its scores are written (the work files' disk
    peak); a run stopped there keeps the vocabulary and the scored shards, and the next
    one scores only the others, into the same index (as a build of 3 shards makes it)."""
    out, shards = tmp_path / "scoring", set(range(8))  # 20 passages a shard
    assert build(out, "--passages", str(demo_slice), "--stages", "passages", "--shard-size", "20") == 0
    assert build(out, "--stages", "bm25", "--limit-shards", "8") == 3  # every shard's terms
    assert build(out, "--stages", "bm25", "--limit-shards", "1") == 3  # the vocabulary, then scores
    work = out / ".build" / CONFIG / "bm25"
    scored = {int(p.name) for p in (work / "scores").iterdir()}
    assert 1 <= len(scored) < 8 and (work / "vocabulary" / "counts.json").exists()
    assert {int(p.stem) for p in (work / "terms").glob("*.npz")} == shards - scored
    # a retried task (Ray retries failed ones) finds its scores written: no error, nothing redone
    done = min(scored)
    (work / "terms" / f"{done}.npz").write_bytes(b"")
    assert shard_scores({"shard": done, "target": str(work / "scores" / str(done)), "passages": 20,
                         "terms": str(work / "terms" / f"{done}.npz")}) == {"shard": done, "passages": 20}  # fmt: skip
    assert not (work / "terms" / f"{done}.npz").exists()

    assert build(out, "--stages", "bm25") == 0
    steps = manifest(out)["stages"]["bm25"]["steps"]
    assert steps["terms"]["shards_computed"] == 0 and steps["terms"]["shards_reused"] == 8
    assert steps["scores"]["shards_reused"] == len(scored) and steps["scores"]["shards_computed"] == 8 - len(scored)
    assert not work.exists() and not list(work.parent.iterdir())  # the work deleted, no leftover
    files = {k: v for k, v in manifest(out)["files"].items() if "/bm25/" in k}
    assert len(files) == 5 and files == {k: v for k, v in manifest(full_build)["files"].items() if "/bm25/" in k}


def test_a_damaged_bm25_work_folder_is_redone_where_needed(tmp_path, build_env, demo_slice, full_build):
    """A vocabulary without its counts (an older build's, or one half deleted) and a work
    folder whose deletion was interrupted: the next build redoes what depends on them."""
    out = tmp_path / "damaged"
    assert build(out, "--passages", str(demo_slice), "--stages", "passages", "--shard-size", "20") == 0
    assert build(out, "--stages", "bm25", "--limit-shards", "8") == 3
    assert build(out, "--stages", "bm25", "--limit-shards", "1") == 3
    work = out / ".build" / CONFIG / "bm25"
    (work / "vocabulary" / "counts.json").unlink()
    (work.parent / ".bm25.partial").mkdir()  # a finished build's work, half deleted
    (work.parent / ".bm25.partial" / "blocks.npy").write_bytes(b"half")
    assert build(out, "--stages", "bm25") == 0
    steps = manifest(out)["stages"]["bm25"]["steps"]
    assert steps["terms"]["shards_computed"] >= 1 and steps["scores"]["shards_computed"] == 8  # scores redone
    assert not list(work.parent.iterdir())
    files = {k: v for k, v in manifest(out)["files"].items() if "/bm25/" in k}
    assert files == {k: v for k, v in manifest(full_build)["files"].items() if "/bm25/" in k}


def stop_before_recording(monkeypatch, stage: str) -> None:
    """The build killed once ``stage`` has done its work, before the manifest records it."""
    record_stage = Manifest.record_stage

    def killed(self, name, *args):
        if name == stage:
            raise KeyboardInterrupt
        record_stage(self, name, *args)

    monkeypatch.setattr(Manifest, "record_stage", killed)


def test_a_dump_build_stopped_before_its_record_writes_the_corpus_from_its_chunks(
    dump_builds, build_env, tmp_path, monkeypatch
):
    """The dump's chunks are kept until the manifest records the passages stage: the next
    run writes the corpus from them without reading the dump again (made unreadable here)."""
    dump, out = tmp_path / dump_builds["dump"].name, tmp_path / "out"
    shutil.copy(dump_builds["dump"], dump)
    stop_before_recording(monkeypatch, "passages")
    with pytest.raises(KeyboardInterrupt):
        main(dump_args(out, dump, "--stages", "passages"))
    monkeypatch.undo()
    pages = out / ".build" / DUMP_CONFIG / "pages"
    assert (pages / "complete.json").exists()
    dump.write_bytes(bytes(dump.stat().st_size))  # the same name and size, no gzip in it
    assert main(dump_args(out, dump, "--stages", "passages")) == 0
    assert corpus(out, DUMP_CONFIG).equals(corpus(dump_builds["local"], DUMP_CONFIG))
    assert not pages.exists()


def test_a_bm25_build_stopped_before_the_manifest_records_it_merges_again_from_its_scores(
    tmp_path, build_env, demo_slice, full_build, monkeypatch
):
    """The work folder goes only once the manifest records the index: a build killed after
    the merge, before the record, redoes the merge alone."""
    out = tmp_path / "unrecorded"
    assert build(out, "--passages", str(demo_slice), *FULL[:1], "passages", *FULL[2:]) == 0
    stop_before_recording(monkeypatch, "bm25")
    with pytest.raises(KeyboardInterrupt):
        build(out, *FULL[:1], "bm25", *FULL[2:])
    work = out / ".build" / CONFIG / "bm25"
    assert (work / "vocabulary" / "counts.json").exists() and len(list((work / "scores").iterdir())) == 3
    monkeypatch.undo()
    assert build(out, *FULL[:1], "bm25", *FULL[2:]) == 0
    steps = manifest(out)["stages"]["bm25"]["steps"]
    assert steps["terms"]["shards_computed"] == 0 and steps["scores"]["shards_computed"] == 0
    assert not list(work.parent.iterdir())
    files = {k: v for k, v in manifest(out)["files"].items() if "/bm25/" in k}
    assert len(files) == 5 and files == {k: v for k, v in manifest(full_build)["files"].items() if "/bm25/" in k}


def test_work_left_by_a_build_stopped_after_its_record_goes_at_the_next_run(tmp_path, build_env, demo_slice):
    """Killed between the record and the deletion, or during the deletion: the work folder,
    and its staging name half deleted, go when the next run finds the stage done."""
    out = tmp_path / "recorded"
    assert build(out, "--passages", str(demo_slice), "--stages", "passages,bm25", "--shard-size", "50") == 0
    work = out / ".build" / CONFIG
    for folder in (work / "bm25" / "scores", work / ".bm25.partial" / "vocabulary"):
        folder.mkdir(parents=True)
        (folder / "0.npy").write_bytes(b"left over")
    assert build(out, "--stages", "bm25") == 0
    assert not list(work.iterdir())


def test_a_bm25_build_without_the_disk_for_its_scores_and_index_stops_before_them_and_keeps_its_terms(
    tmp_path, build_env, demo_slice, full_build, monkeypatch, capsys
):
    """The check counts 4 bytes an entry for the scores that replace the terms and 8 for
    the index, after an interrupted merge's index is out of the way: a byte less than that
    stops the build, exactly that lets it through."""
    out = tmp_path / "full-disk"
    assert build(out, "--passages", str(demo_slice), *FULL[:1], "passages", *FULL[2:]) == 0
    entries = manifest(full_build)["bm25"]["entries"]
    half_merged = out / INDEX_REPO / "bm25" / f".{CONFIG}.partial"
    real = shutil.disk_usage

    def disk_with(free: int) -> None:
        """A disk with ``free`` bytes beside an interrupted merge's index, which takes some."""
        half_merged.mkdir(parents=True, exist_ok=True)
        (half_merged / "data.csc.index.npy").write_bytes(bytes(4 * entries))
        taken = lambda: sum(p.stat().st_blocks * 512 for p in half_merged.rglob("*")) if half_merged.exists() else 0  # noqa: E731
        monkeypatch.setattr(files.shutil, "disk_usage", lambda path: real(path)._replace(free=free - taken()))

    disk_with(12 * entries - 1)
    assert build(out, *FULL[:1], "bm25", *FULL[2:]) == 1
    message = capsys.readouterr().err
    assert "the BM25 scores and index: about" in message and "0.0 GiB free" in message
    work = out / ".build" / CONFIG / "bm25"
    assert len(list((work / "terms").glob("*.npz"))) == 3 and not list((work / "scores").iterdir())
    disk_with(12 * entries)
    assert build(out, *FULL[:1], "bm25", *FULL[2:]) == 0
    assert manifest(out)["stages"]["bm25"]["steps"]["terms"]["shards_reused"] == 3


def test_reserving_a_file_gives_it_its_blocks_and_a_full_disk_is_a_clear_error(tmp_path):
    path = tmp_path / "sparse.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(2**20,)).flush()
    assert path.stat().st_blocks * 512 < 2**20  # written sparse: nothing allocated behind the zeros
    files.reserve(path, path.stat().st_size, ("the test", "試験"))
    assert path.stat().st_blocks * 512 >= path.stat().st_size
    with pytest.raises(RagError) as raised:
        files.reserve(path, shutil.disk_usage(tmp_path).total + 1, ("the test", "試験"))
    assert "the test: about" in raised.value.en and "試験にはディスク" in raised.value.ja
    assert path.stat().st_size == 2**22 + 128  # refused before anything was allocated


# --- BM25 recall: the builder's index and the product's own ---------------------------------


def test_bm25_recall_is_the_same_from_the_builder_and_from_the_product(tmp_path, build_env):
    """The whole demo corpus through the builder (BM25 installed into the product's cache)
    and through today's path (BM25Index.cached), then the same JSQuAD questions."""
    out = tmp_path / "demo"
    assert build(out, "--passages", str(DEMO_PARQUET), "--stages", "passages,bm25,install", "--shard-size", "400") == 0
    questions = read_squad([JSQUAD_PATH], [True]).questions[:300]
    built = load_settings(overrides={"profile": "jawiki", "hub_mirror": str(out), "corpus": {"config": CONFIG},
                                     "cache_dir": build_env["RAG_CACHE_DIR"]})  # fmt: skip
    installed = cache_folder(PassageStore.from_settings(built), built.resolved_cache_dir)
    stamp = {p.name: p.stat().st_ino for p in installed.iterdir()}
    service = load_retrieval(built, bm25=True, dense=False)
    assert {p.name: p.stat().st_ino for p in installed.iterdir()} == stamp  # loaded as installed, not rebuilt
    builder_report = evaluate(service, questions, "bm25", 10, progress=False).as_dict()

    product = load_settings(overrides={"cache_dir": str(tmp_path / "product-cache")})  # the demo profile
    today = load_retrieval(product, bm25=True, dense=False)
    product_report = evaluate(today, questions, "bm25", 10, progress=False).as_dict()
    builder_report.pop("seconds"), product_report.pop("seconds")
    assert builder_report == product_report
    assert builder_report["recall@5"] > 0.9
    own = cache_folder(today.passages, product.resolved_cache_dir)
    for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json"):
        assert (installed / name).read_bytes() == (own / name).read_bytes()  # the same index, bit for bit


# --- the parts ---------------------------------------------------------------------------


def test_wikitext_renders_as_wikipedia_utils_paragraphs():
    wikitext = """{{Infobox|名前={{nowrap|X}}}}
'''X'''（{{読み仮名|漢字|かんじ}}、{{生年月日と年齢|1950|1|2}} - ）は[[A|B]]と[[C]]の{{efn|脚注}}人物である。
== 経歴 ==
本文は[[File:a.jpg|thumb|[[入れ子]]の説明]]ここから続く文である。[[Category:人物]]
:字下げは段落ではない
 整形済みも段落ではない
短い
== 外部リンク ==
* [https://example.org 公式]"""
    assert list(sections(wikitext)) == [
        (LEAD_SECTION, ["X(漢字(かんじ)、1950年1月2日 - )はBとCの人物である。"]),
        ("経歴", ["本文はここから続く文である。"]),  # "短い" is under 10 characters
    ]


def test_sentences_are_packed_up_to_400_characters_within_a_section():
    forty = "あ" * 39 + "。"
    chunks = list(passages([("節一", [forty * 6, forty * 6]), ("節二", [forty]), ("節三", ["い" * 401 + "。"])]))
    assert chunks == [("節一", forty * 10), ("節一", forty * 2), ("節二", forty)]
    assert sentences("一つ。「二つ。」 三つ") == ["一つ。", "「二つ。」", " 三つ"]


def test_length_batches_cover_every_row_once_within_the_token_budget():
    lengths = [5, 300, 17, 64, 64, 1, 512, 9]
    batches = length_batches(lengths, max_tokens=600)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        width = -(-max(lengths[i] for i in batch) // 8) * 8
        assert len(batch) == 1 or len(batch) * width <= 600


def test_index_shape_is_the_hubs_at_full_size_and_shrinks_for_small_corpora():
    assert index_shape(5_555_583, 1024) == (2048, 256, 8)
    assert index_shape(1145, 384) == (16, 192, 8)
    assert index_shape(20, 384) == (1, 192, 4)


def test_help_explains_the_stages(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for stage in ("passages", "embed", "faiss", "bm25", "install", "--ray-address", "--limit-shards"):
        assert stage in help_text


# --- bench/index_build.py ----------------------------------------------------------------


def test_the_benchmark_runs_every_part_in_quick_mode(tmp_path):
    from bench import index_build

    result = index_build.main(["--quick", "--out", str(tmp_path / "index_build.json")])
    keys = ("gpu", "commit", "date", "e5_passages_per_s", "bm25_passages", "bm25_seconds", "bm25_peak_rss_gib",
            "parse_passages_per_s_per_core")  # fmt: skip
    assert all(result[key] for key in keys if key != "gpu")
    assert result["bm25_passages"] == 2000 and result["parse"]["passages"] > 1000
    assert json.loads((tmp_path / "index_build.json").read_text(encoding="utf-8"))["bm25_seconds"] > 0


def test_the_benchmarks_passage_lengths_are_the_chunkers():
    from bench import index_build

    quantiles = np.percentile(index_build.c400_lengths(), np.arange(0, 101, 5))
    assert tuple(int(q) for q in quantiles) == index_build.C400_CHAR_QUANTILES
