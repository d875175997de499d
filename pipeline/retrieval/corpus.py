"""The passage store: Wikipedia passages by row, in the wikipedia-utils schema, over an
Arrow table.

Row ``i`` of the store is vector ``i`` of the dense index. The full profile loads
``singletongue/wikipedia-utils`` (config ``passages-c400-jawiki-20230403``) with
``datasets``: its Arrow cache file is memory-mapped, so opening 5.5M passages copies
nothing into RAM and a row is read in microseconds. The bundled demo corpus is one small
parquet file read with pyarrow alone: ``datasets`` takes 0.6 s to import, which the
first page of the app does not wait for.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.assets.hub import BUNDLED_PREFIX, DOWNLOAD_HINT_EN, DOWNLOAD_HINT_JA, local_repo_dir
from pipeline.core.errors import DataUnavailableError
from pipeline.core.schema import Passage, PassageContext
from pipeline.core.timing import step
from pipeline.settings.model import Settings
from pipeline.settings.sources import MANIFEST_NAME

PASSAGE_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("pageid", pa.int64()),
        ("revid", pa.int64()),
        ("title", pa.string()),
        ("section", pa.string()),
        ("text", pa.string()),
    ]
)


def read_passages(path: Path) -> pa.Table:
    """One parquet file of passages, in :data:`PASSAGE_SCHEMA`. Through ``ParquetFile``:
    ``pq.read_table`` imports ``pyarrow.dataset`` and pandas, 0.24 s before the app's
    first answer."""
    return pq.ParquetFile(path).read(columns=PASSAGE_SCHEMA.names).cast(PASSAGE_SCHEMA)


#: wikipedia-utils marks the lead (untitled first) section of an article this way.
LEAD_SECTION = "__LEAD__"


def corpus_manifest(settings: Settings) -> dict | None:
    """What ``python -m pipeline.build`` recorded of the configured corpus, when it built it
    (the manifest beside its passages); None for any other corpus."""
    repo = settings.corpus.repo
    folder = None if repo.startswith(BUNDLED_PREFIX) else local_repo_dir(repo, settings)
    if folder is None:
        return None
    try:
        return json.loads((folder / settings.corpus.config / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _files_key(folder: Path, *more: str) -> str:
    """A key of the data files in ``folder``: their names, sizes and modification times."""
    digest = hashlib.sha256("\x00".join(more).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".parquet", ".arrow", ".jsonl")):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\x00{stat.st_size}\x00{stat.st_mtime_ns}\x01".encode())
    return digest.hexdigest()[:16]


class PassageStore:
    """Random access to passages by row over an Arrow table (memory-mapped for the hub's
    corpus). ``files`` are the files it was read from, for messages."""

    def __init__(self, table: pa.Table, name: str, fingerprint: str | None = None, files: Sequence[str] = ()) -> None:
        missing = set(PASSAGE_SCHEMA.names) - set(table.column_names)
        if missing:
            raise DataUnavailableError(
                en=f"corpus {name} lacks the columns {sorted(missing)}",
                ja=f"コーパス {name} に列 {sorted(missing)} がありません。",
            )
        self.table = table
        self.name = name
        self.files = list(files)
        if fingerprint is not None:
            self.fingerprint = fingerprint

    @classmethod
    def from_settings(cls, settings: Settings) -> PassageStore:
        """Open the configured corpus (bundled, mirrored or from the hub; cached)."""
        corpus = settings.corpus
        folder = local_repo_dir(corpus.repo, settings)
        name = f"{corpus.repo}/{corpus.config}"
        if corpus.repo.startswith(BUNDLED_PREFIX):
            files = sorted((folder / corpus.config).glob(f"{corpus.split}-*.parquet"))
            return cls(pa.concat_tables(read_passages(f) for f in files), name, files=[str(f) for f in files])
        import datasets

        cache = settings.resolved_cache_dir / "datasets"
        if folder is not None:
            # datasets tells the corpora of a local folder apart by their config's name only:
            # a rebuilt corpus under the same name would be served from the old one's cache
            # (and every index keyed by its fingerprint with it). Its files name the cache.
            cache = cache / f"local-{_files_key(folder / corpus.config)}"
        try:
            dataset = datasets.load_dataset(
                str(folder) if folder is not None else corpus.repo,
                corpus.config,
                split=corpus.split,
                cache_dir=str(cache),
            )
        except (ConnectionError, FileNotFoundError, ValueError) as exc:
            raise DataUnavailableError(
                en=f"cannot load corpus {corpus.repo} ({corpus.config}, {corpus.split}): {exc}; {DOWNLOAD_HINT_EN}",
                ja=f"コーパス {corpus.repo}（{corpus.config}）を読み込めません。{DOWNLOAD_HINT_JA}",
            ) from exc
        # datasets hashes the source (a hub revision) and the builder config into _fingerprint;
        # a local folder's files go in too, as for the cache above.
        fingerprint = dataset._fingerprint
        if folder is not None:
            fingerprint = _files_key(folder / corpus.config, fingerprint)
        return cls(
            dataset.data.table, name, fingerprint=fingerprint, files=[f["filename"] for f in dataset.cache_files]
        )

    @classmethod
    def from_records(cls, records: Sequence[dict], name: str) -> PassageStore:
        """An in-memory store (evaluation corpora, tests)."""
        return cls(pa.Table.from_pylist(list(records), schema=PASSAGE_SCHEMA), name)

    def __len__(self) -> int:
        return self.table.num_rows

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the corpus content, for the cache keys of indexes built from it."""
        digest = hashlib.sha256()
        for batch in self.table.select(["title", "text"]).to_batches(max_chunksize=4096):
            for title, text in zip(batch.column("title").to_pylist(), batch.column("text").to_pylist(), strict=True):
                digest.update(f"{title}\x00{text}\x01".encode())
        return digest.hexdigest()[:16]

    @cached_property
    def _batches(self) -> tuple[list[pa.RecordBatch], list[int]]:
        """The table's record batches (zero-copy) and the first row of each, so that a row
        is found by bisection. ``Table.slice`` walks the chunks from the first, on each
        column: 10 random rows of a 5.5M-row corpus took 0.455 ms that way and 0.143 ms
        this way (dev machine, bench/results/passage_store_bisect_check.json).
        ``Table.take`` is no way out: across chunks it concatenates them, and the full
        corpus's text (over 2 GiB) overflows a string column's offsets."""
        batches = self.table.to_batches()
        starts = [0]
        for batch in batches[:-1]:
            starts.append(starts[-1] + batch.num_rows)
        return batches, starts

    def get(self, row: int) -> Passage:
        return self.get_many([row])[0]

    def get_many(self, rows: Sequence[int]) -> list[Passage]:
        """Passages in the order of ``rows``; an out-of-range row raises IndexError."""
        rows = [int(r) for r in rows]
        for row in rows:
            if not 0 <= row < len(self):
                raise IndexError(f"row {row} is outside the corpus (0..{len(self) - 1})")
        if not rows:
            return []
        with step("fetch"):
            batches, starts = self._batches
            records = []
            for row in rows:
                number = bisect.bisect_right(starts, row) - 1
                records.append(batches[number].slice(row - starts[number], 1).to_pylist()[0])
        return [
            Passage(
                row=row,
                id=record["id"],
                pageid=record["pageid"],
                revid=record["revid"],
                title=record["title"],
                text=record["text"],
                section="" if record["section"] == LEAD_SECTION else record["section"],
            )
            for row, record in zip(rows, records, strict=True)
        ]

    def context(self, row: int) -> PassageContext:
        """A passage with the previous and next passages of the same article (rows are in
        article order)."""
        rows = [r for r in (row - 1, row, row + 1) if 0 <= r < len(self)]
        by_row = {p.row: p for p in self.get_many(rows)}
        current = by_row[row]

        def same_article(other: int) -> Passage | None:
            passage = by_row.get(other)
            if passage is None:
                return None
            same = passage.pageid == current.pageid if current.pageid is not None else passage.title == current.title
            return passage if same else None

        return PassageContext(passage=current, previous=same_article(row - 1), next=same_article(row + 1))

    def iter_documents(self, batch_size: int = 1024) -> Iterator[list[str]]:
        """Batches of 'title + text', the text that BM25 and passage embeddings index."""
        for batch in self.table.select(["title", "text"]).to_batches(max_chunksize=batch_size):
            titles, texts = batch.column("title").to_pylist(), batch.column("text").to_pylist()
            yield [f"{t}\n{x}" for t, x in zip(titles, texts, strict=True)]

    def column(self, name: str) -> list:
        """One column as Python values (titles, to find article boundaries in tests and tools)."""
        return self.table.column(name).to_pylist()


def write_corpus_repo(folder: Path, config: str, shards: Iterable[list[dict] | pa.Table]) -> None:
    """Write passages as a dataset repo laid out like ``singletongue/wikipedia-utils``
    (a card listing the config, parquet shards under ``<config>/train-*``), loadable by
    :meth:`PassageStore.from_settings` from a mirror: custom corpora, tests, benchmarks."""
    (folder / config).mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: train\n    path: {config}/train-*\n---\n",
        encoding="utf-8",
    )
    for number, shard in enumerate(shards):
        table = shard if isinstance(shard, pa.Table) else pa.Table.from_pylist(shard)
        table = table.cast(PASSAGE_SCHEMA)
        pq.write_table(table, folder / config / f"train-{number:05d}.parquet")
