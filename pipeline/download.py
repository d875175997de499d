"""Download (or verify) everything a profile needs, with progress bars.

    python -m pipeline.download                    # what the configured profile needs
    RAG_PROFILE=jawiki python -m pipeline.download  # the full jawiki corpus, index and E5
    python -m pipeline.download --bm25              # also build the BM25 index (slow at 5.5M)
    python -m pipeline.download --llm               # also the LLM's weights, for `vllm serve`

Downloads resume where they stopped and land in ``$RAG_CACHE_DIR`` (or come from
``$RAG_HUB_MIRROR``). The same code paths load the data at run time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from pipeline.bm25 import BM25Index
from pipeline.config import Settings, load_settings
from pipeline.corpus import PassageStore
from pipeline.dense_index import open_searcher
from pipeline.embeddings import load_embedding
from pipeline.errors import RagError
from pipeline.hub import fetch_model, hub_cache_dir, local_repo_dir

#: What `vllm serve` needs of a model repo: weights, configs, tokenizer.
LLM_FILE_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["demo", "jawiki"], help="default: RAG_PROFILE or the settings file")
    parser.add_argument("--bm25", action="store_true", help="also build the BM25 index of the corpus")
    parser.add_argument("--skip-dense", action="store_true", help="skip the embedding model and vector index")
    parser.add_argument("--llm", action="store_true", help="also the LLM's weights (llm.model, ~26 GB for ELYZA-13B)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"profile": args.profile} if args.profile else {}
    try:
        settings = load_settings(overrides=overrides)
        print(f"profile {settings.profile}; cache {settings.resolved_cache_dir}")
        started = time.perf_counter()
        passages = PassageStore.from_settings(settings)
        print(f"corpus: {len(passages):,} passages ({passages.name})")
        if not args.skip_dense:
            embedding = load_embedding(settings, allow_download=True, allow_fallback=False)
            print(f"embedding model: {embedding.name} ({embedding.model.dimension} dimensions)")
            searcher, notices = open_searcher(settings, passages, embedding)
            print(f"vector search: {searcher.describe()}, {searcher.ntotal:,} vectors, dimension {searcher.d}")
            for notice in notices:
                print(f"note: {notice.en}")
        if args.llm:
            folder = fetch_model(settings.llm.model, settings, allow_download=True, patterns=LLM_FILE_PATTERNS)
            print(f"LLM: {settings.llm.model} in {folder}")
        if args.bm25:
            BM25Index.cached(passages, settings.resolved_cache_dir)
            print("BM25 index: ready")
        print(f"done in {time.perf_counter() - started:.0f}s")
    except RagError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


@dataclass(frozen=True)
class DataItem:
    """One thing a profile needs, and whether it is on this machine."""

    label_ja: str
    location: str
    present: bool
    size_bytes: int


def data_status(settings: Settings) -> list[DataItem]:
    """What the profile needs and what is already here (no network)."""
    items = [_corpus_item(settings)]
    if settings.index.repo:
        items.append(_file_item("ベクトル索引", settings.index.repo, settings.index.file, settings))
    items.append(_file_item("埋め込みモデル", settings.embedding.model, "config.json", settings, repo_type="model"))
    return items


def _corpus_item(settings: Settings) -> DataItem:
    corpus = settings.corpus
    folder = local_repo_dir(corpus.repo, settings)
    if folder is None:
        name = corpus.repo.replace("/", "___")
        folder = settings.resolved_cache_dir / "datasets" / name / corpus.config
    files = list(folder.rglob("*.arrow")) + list(folder.rglob("*.parquet")) if folder.is_dir() else []
    return DataItem("コーパス", f"{corpus.repo} ({corpus.config})", bool(files), sum(f.stat().st_size for f in files))


def _file_item(label: str, repo: str, filename: str, settings: Settings, repo_type: str = "dataset") -> DataItem:
    folder = local_repo_dir(repo, settings)
    if folder is not None:
        path = folder / filename
    else:
        cached = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(settings), repo_type=repo_type)
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.exists():
        return DataItem(label, repo, False, 0)
    root = path.parent if repo_type == "model" else path
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else root.stat().st_size
    return DataItem(label, repo, True, size)
