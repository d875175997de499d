"""The ``passages`` stage: a dump or a passages dataset into the corpus the product reads.

From a dump, batches of pages are chunked in parallel (:func:`~pipeline.build.cirrus.chunk_batch`),
each batch a file in the work folder that a later run does not redo. When every batch
is there, the corpus is written in one go: the batches' passages in dump order, ids
numbered from 1 as wikipedia-utils numbers them, in shards of ``shard_size`` passages,
through :func:`~pipeline.retrieval.corpus.write_corpus_repo` into a staging folder that
then replaces ``<corpus repo>/<config>``. From a passages dataset (parquet files in the
wikipedia-utils schema, ids kept as they are) only that last step runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.build.cirrus import STAT_KEYS, DumpReader, batch_stats, chunk_batch
from pipeline.build.files import remove, remove_leftovers, require_params, sha256, staged
from pipeline.build.layout import BuildLayout
from pipeline.build.progress import Progress
from pipeline.build.runner import Runner
from pipeline.core.errors import DataUnavailableError
from pipeline.retrieval.corpus import PASSAGE_SCHEMA, write_corpus_repo

logger = logging.getLogger("pipeline.build")

README = "README.md"


def chunk_dump(
    layout: BuildLayout, dump: Path, runner: Runner, pages_per_batch: int, limit: int | None
) -> tuple[list[Path], dict, dict]:
    """Every batch of the dump chunked into the work folder: the batch files in order, the
    source's record and the chunking's progress record."""
    folder = layout.work_dir / "pages"
    require_params(folder, {"dump": dump.name, "bytes": dump.stat().st_size, "pages_per_batch": pages_per_batch})
    remove_leftovers(folder)
    complete = folder / "complete.json"
    if complete.exists():
        record = json.loads(complete.read_text(encoding="utf-8"))
        return [folder / name for name in record["batches"]], record["source"], record["chunking"]
    reader = DumpReader(dump)
    progress = Progress("passages", None, "passages", limit=limit)
    batches: list[Path] = []

    def pending() -> Iterator[dict]:
        for number, lines in reader.batches(pages_per_batch):
            target = folder / f"{number:06d}.parquet"
            batches.append(target)
            if target.exists():
                progress.skip(1, batch_stats(target)["passages"])
            else:
                yield {"batch": number, "lines": lines, "target": str(target)}

    for result in runner.map(chunk_batch, pending()):
        progress.advance(result["passages"], reader.fraction_read)
    source = {"kind": "cirrussearch", "path": str(dump), "bytes": reader.size, "sha256": reader.sha256}
    record = {"batches": [p.name for p in batches], "source": source, "chunking": progress.finish()}
    with staged(complete) as staging:
        staging.write_text(json.dumps(record), encoding="utf-8")
    return batches, source, record["chunking"]


def dump_counts(batches: list[Path]) -> dict[str, int]:
    totals = dict.fromkeys(STAT_KEYS, 0)
    for path in batches:
        for key, value in batch_stats(path).items():
            totals[key] += value
    return totals


def _tables(files: Iterable[Path]) -> Iterator[pa.Table]:
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=PASSAGE_SCHEMA.names):
            yield pa.Table.from_batches([batch]).cast(PASSAGE_SCHEMA)


def in_shards(tables: Iterable[pa.Table], shard_size: int, first_id: int | None) -> Iterator[pa.Table]:
    """The rows of ``tables`` regrouped into tables of ``shard_size`` rows; with
    ``first_id``, ids renumbered from it."""
    buffered: list[pa.Table] = []
    rows = 0
    next_id = first_id

    def shard(size: int) -> pa.Table:
        nonlocal buffered, rows, next_id
        table = pa.concat_tables(buffered)
        head, rest = table.slice(0, size), table.slice(size)
        buffered, rows = ([rest] if rest.num_rows else []), rest.num_rows
        if next_id is not None:
            head = head.set_column(0, "id", pa.array(range(next_id, next_id + size), pa.int64()))
            next_id += size
        return head.combine_chunks()

    for table in tables:
        buffered.append(table)
        rows += table.num_rows
        while rows >= shard_size:
            yield shard(shard_size)
    if rows:
        yield shard(rows)


def write_corpus(layout: BuildLayout, tables: Iterable[pa.Table], shard_size: int, first_id: int | None) -> None:
    """The corpus config folder, written whole in a staging repo and moved into place,
    and the config added to the repo's dataset card."""
    staging_repo = layout.work_dir / "corpus"
    remove(staging_repo)
    write_corpus_repo(staging_repo, layout.config, in_shards(tables, shard_size, first_id))
    with staged(layout.corpus_dir) as staging:
        (staging_repo / layout.config).rename(staging)
    add_config_to_card(
        layout.corpus_repo_dir / README, (staging_repo / README).read_text(encoding="utf-8"), layout.config
    )
    remove(staging_repo)


def add_config_to_card(card: Path, new_card: str, config: str) -> None:
    """List ``config`` in the repo's dataset card (``new_card`` lists only it), keeping the
    configs and text already there: the folder may be a mirror of the hub repo."""
    if not card.exists():
        card.write_text(new_card, encoding="utf-8")
        return
    text = card.read_text(encoding="utf-8")
    if f"config_name: {config}\n" in text:
        return
    entry = new_card.split("configs:\n", 1)[1].split("---\n", 1)[0]
    if text.startswith("---\n") and "\nconfigs:\n" in text.split("\n---\n", 1)[0]:
        text = text.replace("\nconfigs:\n", "\nconfigs:\n" + entry, 1)
    elif text.startswith("---\n"):
        text = "---\nconfigs:\n" + entry + text.removeprefix("---\n")
    else:
        text = new_card + text
    with staged(card) as staging:
        staging.write_text(text, encoding="utf-8")


def passages_from_dump(
    layout: BuildLayout, dump: Path, runner: Runner, pages_per_batch: int, shard_size: int, limit: int | None
) -> dict:
    batches, source, chunking = chunk_dump(layout, dump, runner, pages_per_batch, limit)
    counts = dump_counts(batches)
    logger.info(
        "passages: writing %s passages of %s pages as the corpus", f"{counts['passages']:,}", f"{counts['pages']:,}"
    )
    write_corpus(layout, _tables(batches), shard_size, first_id=1)
    return {"source": source, "counts": counts, "chunking": chunking}


def input_files(path: Path) -> list[Path]:
    """A parquet file, or every parquet file under a folder (a hub-shaped repo or a
    config folder), in name order."""
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise DataUnavailableError(
            en=f"no parquet files at {path}", ja=f"{path} にパッセージの parquet ファイルがありません。"
        )
    return files


def passages_from_dataset(layout: BuildLayout, path: Path, shard_size: int) -> dict:
    files = input_files(path)
    write_corpus(layout, _tables(files), shard_size, first_id=None)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in layout.corpus_shards())
    source = {
        "kind": "passages",
        "path": str(path),
        "files": [
            {"name": str(f.relative_to(path)) if f != path else f.name, "bytes": f.stat().st_size, "sha256": sha256(f)}
            for f in files
        ],
    }
    return {"source": source, "counts": {"passages": rows}}
