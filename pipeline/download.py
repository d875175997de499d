"""Download (or verify) everything a profile needs, with progress bars.

    python -m pipeline.download                    # what the configured profile needs
    RAG_PROFILE=jawiki python -m pipeline.download  # the full jawiki corpus, index and E5
    python -m pipeline.download --bm25              # also build the BM25 index (slow at 5.5M)

Downloads resume where they stopped and land in ``$RAG_CACHE_DIR`` (or come from
``$RAG_HUB_MIRROR``). The same code paths load the data at run time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from pipeline.bm25 import BM25Index
from pipeline.config import load_settings
from pipeline.corpus import PassageStore
from pipeline.dense_index import open_dense_index
from pipeline.embeddings import load_embedding
from pipeline.errors import RagError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["demo", "jawiki"], help="default: RAG_PROFILE or the settings file")
    parser.add_argument("--bm25", action="store_true", help="also build the BM25 index of the corpus")
    parser.add_argument("--skip-dense", action="store_true", help="skip the embedding model and vector index")
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
            index = open_dense_index(settings, passages, embedding)
            print(f"vector index: {index.ntotal:,} vectors, dimension {index.d}")
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
