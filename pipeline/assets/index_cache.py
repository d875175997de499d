"""Indexes built from the corpus, cached under ``<cache_dir>/indexes/<kind>/<key>``.

The key hashes everything the index depends on (corpus fingerprint, model, tokenizer
version), so a changed corpus or model gets a new entry instead of a stale one. An
entry is built in a temporary folder and renamed into place only when complete, so an
interrupted build never leaves something that is later taken as whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import DataUnavailableError


def cache_key(*parts: object) -> str:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:20]


def cache_path(root: Path, kind: str, key: str) -> Path:
    return root / "indexes" / kind / key


def cached_dir(root: Path, kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """The folder ``root/indexes/kind/key``, running ``build(tmp_folder)`` first if absent.
    A cache that cannot be written (disk full, read-only) is a DataUnavailableError."""
    target = cache_path(root, kind, key)
    if target.is_dir():
        return target
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
        build(staging)
        os.replace(staging, target)
    except OSError as exc:
        if not target.is_dir():  # else another process finished the same entry first: use theirs
            raise DataUnavailableError(
                en=f"cannot write the cache at {target.parent} ({exc.strerror or exc}): free some disk space "
                "or set RAG_CACHE_DIR to a writable disk",
                ja=f"キャッシュ {target.parent} に書き込めません（{exc.strerror or exc}）。"
                "ディスクの空き容量を確保するか、RAG_CACHE_DIR に書き込める場所を指定してください。",
            ) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target
