"""Build a corpus the product can serve, from a newer jawiki dump or a passages dataset.

    python -m pipeline.build --dump jawiki-20251201-cirrussearch-content.json.gz --out /data/hub
    python -m pipeline.build --passages /data/wikipedia-utils/passages-c400-jawiki-20230403 --out /data/hub
    python -m pipeline.build --dump ... --out /shared/hub --ray-address auto   # on a Ray cluster

Stages (``--stages``, comma-separated, default all, in this order):

  passages  the dump's pages chunked as passages-c400 (paragraphs by section, sentences
            packed up to 400 characters), in parallel over all cores; or a passages
            dataset copied; written as parquet shards in the wikipedia-utils schema
  embed     passage vectors (``passage: `` + title + text, fp16, unit length) with --model,
            one process per GPU, length-bucketed batches; one .npz per shard
  faiss     IndexIVFPQ(IndexFlatL2(d), d, 2048, 256, 8) over the vectors (smaller for small
            corpora), k-means on the GPU when faiss-gpu sees one
  bm25      the product's BM25 index (MeCab words + character bigrams), tokenised by
            shards in parallel and merged; identical to the one the product builds
  install   the BM25 index linked into the product's cache (RAG_CACHE_DIR), where the
            product looks for it

Every stage works in shards; a shard finished is never redone after an interruption:
run the same command again. Progress lines give rates and the ETA. At the end, the
``RAG_*`` settings that serve the build are printed (and kept in its manifest.json).
Exit codes: 0 done, 1 error, 3 stopped after --limit-shards shards (run again to go on).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

from pipeline.build.builder import STAGES, Builder, BuildOptions, open_runner
from pipeline.build.progress import StoppedEarly
from pipeline.core.errors import RagError
from pipeline.settings.model import CorpusSettings, IndexSettings
from pipeline.settings.sources import load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.build",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("input (one of)").add_mutually_exclusive_group()
    source.add_argument(
        "--dump", type=Path, help="a CirrusSearch content dump (jawiki-YYYYMMDD-cirrussearch-content.json.gz)"
    )
    source.add_argument("--passages", type=Path, help="parquet file(s) in the wikipedia-utils passage schema")
    parser.add_argument("--out", type=Path, required=True, help="the folder laid out like the hub (RAG_HUB_MIRROR)")
    parser.add_argument("--config", help="corpus config name (default passages-c400-<wiki>-<date> from the dump)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    model = parser.add_argument_group("embedding model (defaults: the product's settings)")
    model.add_argument(
        "--model", help="hub id or local folder, fetched as the product fetches it (RAG_HUB_MIRROR works)"
    )
    model.add_argument("--passage-prefix", help="text before each passage (E5: 'passage: ')")
    model.add_argument("--max-length", type=int, help="tokens per passage")
    model.add_argument(
        "--batch-tokens", type=int, help="padded tokens per batch (default 65536 on a GPU, 8192 on the CPU)"
    )
    model.add_argument("--compile", action="store_true", help="torch.compile the encoder (fused kernels)")
    layout = parser.add_argument_group("layout and sharding")
    layout.add_argument("--corpus-repo", default=CorpusSettings().repo, help="default: %(default)s")
    layout.add_argument("--index-repo", default=IndexSettings().repo, help="default: %(default)s")
    layout.add_argument(
        "--shard-size", type=int, default=100_000, help="passages per corpus shard (default %(default)s)"
    )
    layout.add_argument(
        "--pages-per-batch", type=int, default=1000, help="dump pages per parse task (default %(default)s)"
    )
    layout.add_argument(
        "--nlist", type=int, default=2048, help="IVF lists (default %(default)s, fewer for small corpora)"
    )
    layout.add_argument("--pq-m", type=int, default=256, help="PQ sub-quantizers (default %(default)s)")
    layout.add_argument("--train-size", type=int, default=262_144, help="vectors sampled to train IVF-PQ")
    run = parser.add_argument_group("where it runs")
    run.add_argument("--workers", type=int, help="CPU worker processes (default: all cores, or the Ray cluster's CPUs)")
    run.add_argument("--gpus", type=int, help="GPUs to use on this host (default: all visible; 0: the CPU)")
    run.add_argument("--ray", action="store_true", help="run the stages on a local Ray instance (needs ray[data])")
    run.add_argument("--ray-address", help="join this Ray cluster (e.g. auto, or host:6379); --out must be shared")
    run.add_argument("--limit-shards", type=int, help="stop each stage after this many shards (a sample build)")
    parser.add_argument("--json", action="store_true", help="print the manifest as one JSON line at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if unknown := sorted(set(stages) - set(STAGES)):
        parser.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        embedding = settings.embedding
        from_settings = {  # the embedding settings, unless the command line says otherwise
            "model": args.model or embedding.model,
            "passage_prefix": embedding.passage_prefix if args.passage_prefix is None else args.passage_prefix,
            "max_length": args.max_length or embedding.max_length,
        }
        asked = {f.name: getattr(args, f.name) for f in fields(BuildOptions) if f.name not in from_settings}
        options = BuildOptions(**asked | {"stages": stages} | from_settings)
        runner = open_runner(options)
        try:
            manifest = Builder(options, settings, runner).run()
        finally:
            runner.close()
    except StoppedEarly as stopped:
        print(f"stopped in {stopped} after --limit-shards {args.limit_shards}; run again to continue", file=sys.stderr)
        return 3
    except RagError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 1
    print("serve it with:")
    for name, value in manifest.get("settings", {}).items():
        print(f"  export {name}={json.dumps(value, ensure_ascii=False)}")
    if args.json:
        print(json.dumps(manifest, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
