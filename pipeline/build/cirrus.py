"""A Wikimedia CirrusSearch content dump, streamed, into passages.

``jawiki-YYYYMMDD-cirrussearch-content.json.gz`` is Elasticsearch bulk-API NDJSON:
an action line (``{"index": {"_type": ..., "_id": "<page id>"}}``) before each page
document (``title``, ``namespace``, ``page_id``, ``version`` = revision id,
``source_text`` = wikitext, ``text``, ``heading``, …). :class:`DumpReader` reads it
line by line in the driver, hashing the compressed bytes as they go by, and hands out
batches of pages; :func:`chunk_batch` (in a worker) turns one batch into passages and
writes them as one parquet file. Nothing holds more than the batches in flight.

Pages outside the main namespace are skipped, and so are pages without wikitext; both
are counted, as are pages that give no passage (lists, disambiguation stubs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.build.chunking import ChunkStats, passages
from pipeline.build.files import staged
from pipeline.build.wikitext import sections
from pipeline.retrieval.corpus import PASSAGE_SCHEMA

#: Counts kept in each batch file's metadata, summed into the manifest.
STAT_KEYS = (
    "pages",
    "passages",
    "skipped_namespace",
    "skipped_no_wikitext",
    "pages_without_passages",
    "sentences_over_limit",
)
STATS_METADATA_KEY = b"build_stats"


class _HashingReader(io.RawIOBase):
    """A file whose bytes are hashed and counted as they are read."""

    def __init__(self, file: io.BufferedReader) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._file.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        self.offset += count
        return count


class DumpReader:
    """Batches of ``pages`` page documents (each with its action line) from the dump."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._raw: _HashingReader | None = None

    @property
    def fraction_read(self) -> float:
        return self._raw.offset / self.size if self._raw is not None and self.size else 0.0

    @property
    def sha256(self) -> str:
        assert self._raw is not None
        return self._raw.digest.hexdigest()

    def batches(self, pages: int) -> Iterator[tuple[int, bytes]]:
        """(batch number, NDJSON bytes) in dump order, to the end of the file."""
        with self.path.open("rb") as file:
            self._raw = _HashingReader(file)
            lines = io.BufferedReader(gzip.GzipFile(fileobj=io.BufferedReader(self._raw, 2**20)), 2**20)
            batch: list[bytes] = []
            count = number = 0
            for line in lines:
                batch.append(line)
                if not line.startswith(b'{"index"'):
                    count += 1
                    if count == pages:
                        yield number, b"".join(batch)
                        batch, count, number = [], 0, number + 1
            if batch:
                yield number, b"".join(batch)


def page_passages(document: dict, page_id: int | None, stats: dict[str, int], chunk_stats: ChunkStats) -> list[dict]:
    """One page document's passages (without ids), counting what is skipped."""
    if document.get("namespace", 0) != 0:
        stats["skipped_namespace"] += 1
        return []
    wikitext = document.get("source_text")
    if not wikitext:
        stats["skipped_no_wikitext"] += 1
        return []
    page_id = document.get("page_id", page_id)
    found = [
        {
            "pageid": page_id,
            "revid": document.get("version"),
            "title": document["title"],
            "section": section,
            "text": text,
        }
        for section, text in passages(sections(wikitext), stats=chunk_stats)
    ]
    if not found:
        stats["pages_without_passages"] += 1
    return found


def chunk_batch(item: dict) -> dict:
    """Passages of one batch of pages into ``item["target"]`` (parquet, ids numbered from
    0 within the batch; the corpus renumbers them), with the batch's counts in its
    metadata. Returns the counts."""
    stats = dict.fromkeys(STAT_KEYS, 0)
    chunk_stats = ChunkStats()
    rows: list[dict] = []
    page_id = None
    for line in item["lines"].splitlines():
        record = json.loads(line)
        if "index" in record and len(record) == 1:
            page_id = int(record["index"]["_id"])
            continue
        stats["pages"] += 1
        rows.extend(page_passages(record, page_id, stats, chunk_stats))
        page_id = None
    stats["passages"] = len(rows)
    stats["sentences_over_limit"] = chunk_stats.sentences_over_limit
    for number, row in enumerate(rows):
        row["id"] = number
    table = pa.Table.from_pylist(rows, schema=PASSAGE_SCHEMA)
    table = table.replace_schema_metadata({STATS_METADATA_KEY: json.dumps(stats).encode()})
    with staged(Path(item["target"])) as staging:
        pq.write_table(table, staging)
    return {"batch": item["batch"], **stats}


def batch_stats(path: Path) -> dict[str, int]:
    """The counts a batch file was written with."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[STATS_METADATA_KEY])
