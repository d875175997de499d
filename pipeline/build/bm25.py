"""The ``bm25`` stage: the product's BM25 index of a built corpus, from shards in parallel,
the same bits that :meth:`~pipeline.retrieval.bm25.BM25Index.build` writes in one process
(2.6 h and 31 GiB at 5.5M passages there).

1. **terms** (a task per corpus shard): each passage's :class:`~pipeline.text.terms.SearchTerms`
   (MeCab words and character bigrams of title + text, the product's tokenizer); per
   passage its length and each distinct term with its count; the shard's vocabulary in
   first-seen order.
2. **vocabulary** (driver): the shard vocabularies merged in shard order, so that every
   term gets the id ``BM25Index.build`` gives it (first seen in corpus order); document
   frequencies and lengths give the idf (bm25s's own function) and the average length, and
   the column pointers of the score matrix (a column holds one entry per passage that has
   the term).
3. **scores** (a task per shard): every (passage, term) score with bm25s's own formula,
   sorted by column.
4. **merge** (a task per block of columns): each block's entries from every shard, in shard
   order, written in place into the final arrays, whose layout is known from step 2.

The result is what ``bm25s.BM25.save`` writes (``data``/``indices``/``indptr.csc.index.npy``,
``vocab.index.json``, ``params.index.json``), loaded with ``bm25s.BM25.load(mmap=True)``.
No process holds more than one shard's or one block's entries, and the driver the
vocabulary.

Steps 1 to 3 are resumable shard by shard: the vocabulary is kept until the index is
written, and a shard's terms file is deleted once its scores are, so that the work files
peak at about 12 bytes an entry beside the index's 8 (1.2 billion entries for 5.5M
synthetic passages). The index's files get their whole size on disk before the merge
writes into them through memory maps (:func:`~pipeline.build.files.reserve`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from array import array
from collections import Counter
from pathlib import Path

import bm25s
import numpy as np
import pyarrow.parquet as pq
from bm25s.scoring import _build_idf_array, _select_idf_scorer, _select_tfc_scorer
from bm25s.utils import json_functions
from numpy.lib import format as npy_format

from pipeline.build.files import (
    link_or_copy,
    remove,
    remove_leftovers,
    require_free_space,
    require_params,
    reserve,
    staged,
    staging_path,
)
from pipeline.build.layout import BuildLayout
from pipeline.build.progress import Progress
from pipeline.build.runner import Runner
from pipeline.retrieval.bm25 import new_model
from pipeline.retrieval.corpus import PassageStore, read_passages
from pipeline.text.terms import TERMS_VERSION, SearchTerms

logger = logging.getLogger("pipeline.build")

#: Entries per merge block: 12 bytes each, about three copies in flight per worker.
BLOCK_ENTRIES = 8_000_000
#: Entries scored at once (float64 temporaries).
SCORE_SLICE = 4_000_000
DATA, INDICES, INDPTR = "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"
VOCAB, PARAMS = "vocab.index.json", "params.index.json"
#: Bytes an entry: step 1's files (term, count), step 3's (column, row, score), the index's (score, row).
TERMS_ENTRY_BYTES, SCORES_ENTRY_BYTES, INDEX_ENTRY_BYTES = 8, 12, 8


def shard_terms(item: dict) -> dict:
    """Step 1 for one corpus shard: ``<target>`` (.npz) with the passages' lengths, their
    distinct terms (shard-local ids) and counts, and the shard's vocabulary."""
    terms = SearchTerms()
    vocabulary: dict[str, int] = {}
    # Typed arrays, not lists: 4 bytes an entry instead of ~36 (a shard holds ~20M entries).
    lengths, distinct, ids, counts = array("q"), array("q"), array("i"), array("i")
    store = PassageStore(read_passages(Path(item["source"])), item["source"])
    for documents in store.iter_documents():
        for document in documents:
            words = terms(document)
            tally = Counter(words)
            lengths.append(len(words))
            distinct.append(len(tally))
            ids.extend(vocabulary.setdefault(word, len(vocabulary)) for word in tally)
            counts.extend(tally.values())
    with staged(Path(item["target"])) as staging, staging.open("wb") as file:
        np.savez(
            file,
            lengths=np.frombuffer(lengths, np.int64),
            distinct=np.frombuffer(distinct, np.int64),
            ids=np.frombuffer(ids, np.int32),
            counts=np.frombuffer(counts, np.int32),
            vocabulary=np.frombuffer(json.dumps(list(vocabulary), ensure_ascii=False).encode(), np.uint8),
        )
    return {"shard": item["shard"], "passages": len(lengths)}


class _Frequencies:
    """Document frequencies by term id, as bm25s's ``_build_idf_array`` reads a dict."""

    def __init__(self, frequencies: np.ndarray) -> None:
        self._frequencies = frequencies

    def __len__(self) -> int:
        return len(self._frequencies)

    def items(self):
        return enumerate(self._frequencies.tolist())


def merge_vocabulary(terms_files: list[Path], folder: Path) -> dict:
    """Step 2: global term ids (``<shard>.ids.npy`` per shard), ``idf.npy``,
    ``indptr.npy``, ``blocks.npy``, ``vocab.json`` and ``counts.json`` (the corpus's
    numbers, returned, and each shard's entries) in ``folder``."""
    vocabulary: dict[str, int] = {}
    frequencies = np.zeros(0, np.int64)
    total_length = documents = 0
    shard_entries = []
    for number, path in enumerate(terms_files):
        with np.load(path) as shard:
            words = json.loads(shard["vocabulary"].tobytes())
            ids, lengths = shard["ids"], shard["lengths"]
        shard_entries.append(len(ids))
        global_ids = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in words), np.int32, len(words))
        np.save(folder / f"{number}.ids.npy", global_ids)
        counted = np.bincount(global_ids[ids], minlength=len(vocabulary))
        frequencies = np.concatenate([frequencies, np.zeros(len(counted) - len(frequencies), np.int64)])
        frequencies += counted
        total_length += int(lengths.sum())
        documents += len(lengths)
    model = new_model()
    idf = _build_idf_array(_Frequencies(frequencies), documents, _select_idf_scorer(model.idf_method), model.dtype)
    indptr = np.zeros(len(frequencies) + 1, np.int64)
    np.cumsum(frequencies, out=indptr[1:])
    entries = int(indptr[-1])
    blocks = max(1, math.ceil(entries / BLOCK_ENTRIES))
    cuts = np.searchsorted(indptr, np.arange(1, blocks) * (entries / blocks))
    np.save(folder / "idf.npy", idf)
    np.save(folder / "indptr.npy", indptr)
    np.save(folder / "blocks.npy", np.unique(np.concatenate([[0], cuts, [len(frequencies)]])).astype(np.int64))
    if "" not in vocabulary:  # bm25s's empty token, added last when it indexes
        vocabulary[""] = len(vocabulary)
    (folder / "vocab.json").write_bytes(json_functions.dumps(vocabulary, ensure_ascii=False).encode())
    # np.mean's value for integer lengths: the exact sum over the count, in float64
    average = float(np.float64(total_length) / documents) if documents else 0.0
    counts = {"passages": documents, "terms": len(frequencies), "entries": entries, "average_length": average}
    (folder / "counts.json").write_text(json.dumps({**counts, "shard_entries": shard_entries}), encoding="utf-8")
    return counts


def shard_scores(item: dict) -> dict:
    """Step 3 for one shard: its entries (column, row, score) sorted by column, and where
    each merge block starts among them, in the folder ``<target>``; then its terms file,
    which nothing needs any more, is deleted."""
    if Path(item["target"]).exists():  # done, and its terms file not yet deleted (a retried task)
        remove(Path(item["terms"]))
        return {"shard": item["shard"], "passages": item["passages"]}
    vocabulary = Path(item["vocabulary"])
    model = new_model()
    with np.load(item["terms"]) as shard:
        lengths, distinct, counts = shard["lengths"], shard["distinct"], shard["counts"]
        columns = np.load(vocabulary / f"{item['shard']}.ids.npy")[shard["ids"]]
    idf = np.load(vocabulary / "idf.npy")
    entry_lengths = np.repeat(lengths.astype(np.int32), distinct)
    scores = np.empty(len(columns), model.dtype)
    tfc_of = _select_tfc_scorer(model.method)
    for start in range(0, len(columns), SCORE_SLICE):  # float64 temporaries for a slice at a time
        part = slice(start, start + SCORE_SLICE)
        tfc = tfc_of(
            tf_array=counts[part].astype(model.dtype),
            l_d=entry_lengths[part],
            l_avg=np.float64(item["average_length"]),
            k1=model.k1,
            b=model.b,
            delta=model.delta,
        )
        scores[part] = idf[columns[part]] * tfc
    del counts, entry_lengths, idf
    order = np.argsort(columns, kind="stable")  # rows are ascending already: (column, row) order
    first = item["first_row"]
    rows = np.repeat(np.arange(first, first + len(lengths), dtype=np.int32), distinct)
    with staged(Path(item["target"])) as staging:  # one sorted copy at a time
        staging.mkdir()
        np.save(staging / "rows.npy", rows[order])
        del rows
        np.save(staging / "scores.npy", scores[order])
        del scores
        columns = columns[order]
        np.save(staging / "columns.npy", columns)
        np.save(staging / "bounds.npy", np.searchsorted(columns, np.load(vocabulary / "blocks.npy")))
    remove(Path(item["terms"]))
    return {"shard": item["shard"], "passages": len(lengths)}


def merge_block(item: dict) -> dict:
    """Step 4 for one block of columns: its entries from every shard, in shard order and
    sorted by column, written into their place in the final ``data`` and ``indices``."""
    block, vocabulary = item["block"], Path(item["vocabulary"])
    blocks, indptr = np.load(vocabulary / "blocks.npy"), np.load(vocabulary / "indptr.npy", mmap_mode="r")
    start, end = int(indptr[blocks[block]]), int(indptr[blocks[block + 1]])
    pieces: dict[str, list[np.ndarray]] = {"columns": [], "rows": [], "scores": []}
    for shard in item["shards"]:
        bounds = np.load(Path(shard) / "bounds.npy")
        for name, parts in pieces.items():
            array = np.load(Path(shard) / f"{name}.npy", mmap_mode="r")
            parts.append(np.array(array[bounds[block] : bounds[block + 1]]))
            del array
    columns = np.concatenate(pieces["columns"])
    assert len(columns) == end - start, (block, len(columns), end - start)
    order = np.argsort(columns, kind="stable")
    for name, values in ((DATA, pieces["scores"]), (INDICES, pieces["rows"])):
        target = np.load(Path(item["index"]) / name, mmap_mode="r+")
        target[start:end] = np.concatenate(values)[order]
        target.flush()
        del target
    return {"block": block, "entries": end - start}


def build_bm25(layout: BuildLayout, runner: Runner, limit: int | None) -> dict:
    """Steps 1 to 4 into ``layout.bm25_dir``; the stage's record. The work folder stays
    for the builder to discard once the manifest records the index: a build stopped in
    between then merges again from the scores instead of starting over."""
    started = time.perf_counter()
    work = layout.work_dir / "bm25"
    shards = layout.corpus_shards()
    rows = [pq.ParquetFile(path).metadata.num_rows for path in shards]
    require_params(work, {"terms": TERMS_VERSION, "bm25s": bm25s.__version__, "shards": len(shards), "rows": sum(rows)})
    remove(staging_path(work))  # a finished build's work, its deletion interrupted
    vocabulary, terms, scores = work / "vocabulary", work / "terms", work / "scores"
    if not (vocabulary / "counts.json").exists():  # none yet, or an older build's (before counts.json)
        remove(vocabulary)
        remove(scores)  # scores number their terms by the vocabulary they were made with
    for folder in (terms, scores):
        folder.mkdir(parents=True, exist_ok=True)
        remove_leftovers(folder)
    terms_files = [terms / f"{number}.npz" for number in range(len(shards))]
    scored = [scores / str(number) for number in range(len(shards))]

    progress = Progress("bm25 terms", len(shards), "passages", sum(rows), limit=limit)
    items = []
    for number, (path, count) in enumerate(zip(shards, rows, strict=True)):
        if terms_files[number].exists() or scored[number].exists():
            progress.skip(1, count)
        else:
            items.append({"shard": number, "source": str(path), "target": str(terms_files[number])})
    for result in runner.map(shard_terms, items):
        progress.advance(result["passages"])
    record = {"terms": progress.finish()}

    if not vocabulary.exists():
        with staged(vocabulary) as staging:
            staging.mkdir()
            merge_vocabulary(terms_files, staging)
    counts = json.loads((vocabulary / "counts.json").read_text(encoding="utf-8"))
    shard_entries = counts.pop("shard_entries")
    logger.info(
        "bm25 vocabulary: %s terms, %s entries, average length %.1f",
        f"{counts['terms']:,}",
        f"{counts['entries']:,}",
        counts["average_length"],
    )
    first_rows = np.concatenate([[0], np.cumsum(rows)[:-1]]).tolist()
    to_score = [n for n in range(len(shards)) if not scored[n].exists()]
    unscored = sum(shard_entries[n] for n in to_score)
    remove(staging_path(layout.bm25_dir))  # an interrupted merge's index, in the way of the check
    # A shard's scores replace its terms as they are written; the index comes last.
    require_free_space(
        work,
        (SCORES_ENTRY_BYTES - TERMS_ENTRY_BYTES) * unscored + INDEX_ENTRY_BYTES * counts["entries"],
        ("the BM25 scores and index", "BM25 のスコアと索引の作成"),
    )
    items = [
        {
            "shard": n,
            "terms": str(terms_files[n]),
            "vocabulary": str(vocabulary),
            "first_row": first_rows[n],
            "passages": rows[n],
            "average_length": counts["average_length"],
            "target": str(scored[n]),
        }
        for n in to_score
    ]
    progress = Progress("bm25 scores", len(shards), "passages", sum(rows), limit=limit)
    progress.skip(len(shards) - len(to_score), sum(rows) - sum(rows[n] for n in to_score))
    for result in runner.map(shard_scores, items):
        progress.advance(result["passages"])
    record["scores"] = progress.finish()

    model = new_model()
    blocks = len(np.load(vocabulary / "blocks.npy")) - 1
    with staged(layout.bm25_dir) as index:
        index.mkdir()
        for name, dtype in ((DATA, model.dtype), (INDICES, model.int_dtype)):
            npy_format.open_memmap(index / name, mode="w+", dtype=dtype, shape=(counts["entries"],)).flush()
            reserve(index / name, (index / name).stat().st_size, ("the BM25 merge", "BM25 の統合"))
        shard_scores_dirs = [str(folder) for folder in scored]
        items = [
            {"block": block, "vocabulary": str(vocabulary), "index": str(index), "shards": shard_scores_dirs}
            for block in range(blocks)
        ]
        progress = Progress("bm25 merge", blocks, "entries", counts["entries"], pieces="blocks")
        for result in runner.map(merge_block, items):
            progress.advance(result["entries"])
        record["merge"] = progress.finish()
        np.save(index / INDPTR, np.load(vocabulary / "indptr.npy"))
        link_or_copy(vocabulary / "vocab.json", index / VOCAB)
        params = {
            "k1": model.k1,
            "b": model.b,
            "delta": model.delta,
            "method": model.method,
            "idf_method": model.idf_method,
            "dtype": model.dtype,
            "int_dtype": model.int_dtype,
            "num_docs": counts["passages"],
            "version": bm25s.__version__,
            "backend": model.backend,
        }
        (index / PARAMS).write_text(json.dumps(params, indent=4), encoding="utf-8")
    return {
        **counts,
        "terms_version": TERMS_VERSION,
        "bm25s": bm25s.__version__,
        "k1": model.k1,
        "b": model.b,
        "seconds": round(time.perf_counter() - started, 1),
        "steps": record,
    }
