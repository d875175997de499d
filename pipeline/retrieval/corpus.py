"""The passage store: Wikipedia passages by row, memory-mapped, in the wikipedia-utils schema.

Row ``i`` of the store is vector ``i`` of the dense index. The full profile loads
``singletongue/wikipedia-utils`` (config ``passages-c400-jawiki-20230403``) with
``datasets``: the Arrow cache file is memory-mapped, so opening 5.5M passages copies
nothing into RAM and a row is read in microseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataUnavailableError
from pipeline.core.hub import DOWNLOAD_HINT_EN, DOWNLOAD_HINT_JA, local_repo_dir
from pipeline.core.schema import Passage, PassageContext
from pipeline.core.settings import Settings
from pipeline.core.timing import step

PASSAGE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("int64"),
        "pageid": datasets.Value("int64"),
        "revid": datasets.Value("int64"),
        "title": datasets.Value("string"),
        "section": datasets.Value("string"),
        "text": datasets.Value("string"),
    }
)

#: wikipedia-utils marks the lead (untitled first) section of an article this way.
LEAD_SECTION = "__LEAD__"


class PassageStore:
    """Random access to passages by row over a ``datasets.Dataset``."""

    def __init__(self, dataset: datasets.Dataset, name: str) -> None:
        missing = set(PASSAGE_FEATURES) - set(dataset.column_names)
        if missing:
            raise DataUnavailableError(
                en=f"corpus {name} lacks the columns {sorted(missing)}",
                ja=f"コーパス {name} に列 {sorted(missing)} がありません。",
            )
        self.dataset = dataset
        self.name = name

    @classmethod
    def from_settings(cls, settings: Settings) -> PassageStore:
        """Open the configured corpus (bundled, mirrored or from the hub; cached)."""
        corpus = settings.corpus
        folder = local_repo_dir(corpus.repo, settings)
        source = str(folder) if folder is not None else corpus.repo
        try:
            dataset = datasets.load_dataset(
                source,
                corpus.config,
                split=corpus.split,
                cache_dir=str(settings.resolved_cache_dir / "datasets"),
            )
        except (ConnectionError, FileNotFoundError, ValueError) as exc:
            raise DataUnavailableError(
                en=f"cannot load corpus {corpus.repo} ({corpus.config}, {corpus.split}): {exc}; {DOWNLOAD_HINT_EN}",
                ja=f"コーパス {corpus.repo}（{corpus.config}）を読み込めません。{DOWNLOAD_HINT_JA}",
            ) from exc
        return cls(dataset, name=f"{corpus.repo}/{corpus.config}")

    @classmethod
    def from_records(cls, records: Sequence[dict], name: str) -> PassageStore:
        """An in-memory store (evaluation corpora, tests)."""
        return cls(datasets.Dataset.from_list(list(records), features=PASSAGE_FEATURES), name)

    def __len__(self) -> int:
        return self.dataset.num_rows

    @property
    def fingerprint(self) -> str:
        """Identifies the corpus content, for the cache keys of indexes built from it."""
        if self.dataset.cache_files:
            # datasets hashes the source files and builder config into this, deterministically.
            return self.dataset._fingerprint
        digest = hashlib.sha256()
        for batch in self.dataset.iter(batch_size=4096):
            for title, text in zip(batch["title"], batch["text"], strict=True):
                digest.update(f"{title}\x00{text}\x01".encode())
        return digest.hexdigest()[:16]

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
            columns = self.dataset[rows]
        return [
            Passage(
                row=row, id=columns["id"][i], pageid=columns["pageid"][i], revid=columns["revid"][i],
                title=columns["title"][i], text=columns["text"][i],
                section="" if columns["section"][i] == LEAD_SECTION else columns["section"][i],
            )
            for i, row in enumerate(rows)
        ]  # fmt: skip

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
        for batch in self.dataset.iter(batch_size=batch_size):
            yield [f"{t}\n{x}" for t, x in zip(batch["title"], batch["text"], strict=True)]


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
        table = table.cast(PASSAGE_FEATURES.arrow_schema)
        pq.write_table(table, folder / config / f"train-{number:05d}.parquet")
