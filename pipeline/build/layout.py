"""Where a build puts everything: a folder laid out like the hub repos the product reads.

    <out>/<corpus repo>/README.md                          dataset card listing the configs
    <out>/<corpus repo>/<config>/train-00000.parquet …     passages (wikipedia-utils schema)
    <out>/<corpus repo>/<config>/manifest.json             what was built, from what, checksums
    <out>/<index repo>/embs/<config>/<model>-passage/0.npz …          raw vectors, key embs, fp16
    <out>/<index repo>/faiss_indexes/<config>/<model>-passage/index_IVF<nlist>_PQ<m>.faiss
    <out>/<index repo>/bm25/<config>/                      the bm25s index of the product's BM25
    <out>/.build/<config>/                                 work in progress (shards, partials)

The repos default to the names the product's settings use (``singletongue/wikipedia-utils``,
``hotchpotch/wikipedia-passages-jawiki-embeddings``), so that with ``RAG_HUB_MIRROR=<out>``
only the config, the index file and the embeddings folder settings change; a new dump date
is a new config beside the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings.sources import MANIFEST_NAME

WORK_DIR = ".build"


def model_folder_name(model: str) -> str:
    """``intfloat/multilingual-e5-large`` -> ``multilingual-e5-large``, the name the hub
    repo files its vectors under (``<name>-passage``)."""
    return Path(model.rstrip("/")).name


def dump_date(path: Path) -> str | None:
    """``20251201`` from ``jawiki-20251201-cirrussearch-content.json.gz``."""
    match = re.search(r"-(\d{8})-", path.name)
    return match.group(1) if match else None


@dataclass(frozen=True)
class BuildLayout:
    out: Path
    config: str
    corpus_repo: str
    index_repo: str
    model_name: str

    @property
    def corpus_repo_dir(self) -> Path:
        return self.out / self.corpus_repo

    @property
    def corpus_dir(self) -> Path:
        return self.corpus_repo_dir / self.config

    @property
    def manifest_path(self) -> Path:
        return self.corpus_dir / MANIFEST_NAME

    @property
    def embeddings_dir(self) -> str:
        """Relative to the index repo: the ``index.embeddings_dir`` setting."""
        return f"embs/{self.config}/{self.model_name}-passage"

    def index_file(self, nlist: int, m: int, nbits: int) -> str:
        """Relative to the index repo: the ``index.file`` setting. ``index_IVF2048_PQ256``
        as the hub names its E5-large index; ``x<nbits>`` when codes are not 8 bits (tiny
        corpora)."""
        suffix = "" if nbits == 8 else f"x{nbits}"
        return f"faiss_indexes/{self.config}/{self.model_name}-passage/index_IVF{nlist}_PQ{m}{suffix}.faiss"

    @property
    def bm25_dir(self) -> Path:
        return self.out / self.index_repo / "bm25" / self.config

    @property
    def work_dir(self) -> Path:
        return self.out / WORK_DIR / self.config

    def corpus_shards(self) -> list[Path]:
        return sorted(self.corpus_dir.glob("train-*.parquet"))

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()
