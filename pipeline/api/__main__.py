"""`python -m pipeline.api [--host 127.0.0.1] [--port 8000]`: the RAG API under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from pipeline.api.app import create_app
from pipeline.core.errors import RagError
from pipeline.settings.sources import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.api", description="Serve the RAG API.")
    parser.add_argument("--host", help="default: api.host (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: api.port (8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except RagError as exc:
        print(f"error: {exc.en}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.api.host,
        port=args.port or settings.api.port,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
