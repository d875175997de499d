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

from pipeline.assets.hub import fetch_model
from pipeline.core.errors import RagError
from pipeline.retrieval.bm25 import BM25Index
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.backends import open_searcher
from pipeline.retrieval.dense.encoder import load_embedding
from pipeline.settings.sources import load_settings

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
