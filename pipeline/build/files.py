"""Files written whole or not at all, and their checksums.

Every output of the build is written under a staging name in its own folder and renamed
into place when complete (``os.replace``, atomic on one file system). An interrupted
build therefore leaves either the finished file or a staging leftover that no reader
takes for one: staging names start with ``.`` and end in ``.partial``, which neither
``*.npz``, ``train-*.parquet`` nor the work folder's patterns match.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import RagError

STAGING_SUFFIX = ".partial"

logger = logging.getLogger("pipeline.build")


def staging_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{STAGING_SUFFIX}")


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A path to write ``target``'s content to (a file or a folder); moved to ``target``
    when the block ends without an error, removed otherwise. An existing ``target`` is
    replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    remove(staging)
    try:
        yield staging
        if staging.is_dir() and target.exists():
            remove(target)
        os.replace(staging, target)
    finally:
        remove(staging)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link (no space taken), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def discard(folder: Path) -> None:
    """A work folder nothing needs any more: renamed to its staging name first, so that an
    interrupted deletion leaves nothing a later run takes for work."""
    remove(staging_path(folder))  # an earlier deletion's, interrupted: in the way of the rename
    if folder.exists():
        os.replace(folder, staging_path(folder))
    remove(staging_path(folder))


def remove_leftovers(folder: Path) -> None:
    """Staging files of interrupted runs (never finished outputs)."""
    for leftover in folder.glob(f".*{STAGING_SUFFIX}") if folder.is_dir() else ():
        remove(leftover)


#: A step's name in both languages, for messages: ("the BM25 merge", "BM25 の統合").
Step = tuple[str, str]


def require_free_space(folder: Path, needed: int, step: Step) -> None:
    """Stop before a step that will write about ``needed`` more bytes under ``folder`` than
    the disk has, instead of failing when the disk is full, after all the work before it."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise _disk_full(folder, needed, free, step)


def reserve(path: Path, size: int, step: Step) -> None:
    """Give ``path`` its ``size`` bytes on disk now. Worker processes fill it through
    memory maps, and a memory-mapped write to a sparse file on a full disk kills its
    process with SIGBUS, which a process pool reports only as "terminated abruptly". Where
    the file system cannot reserve space (no ``posix_fallocate``, or not supported) the
    free-space check alone stands."""
    needed = size - path.stat().st_blocks * 512
    require_free_space(path.parent, needed, step)
    try:
        with path.open("r+b") as file:
            os.posix_fallocate(file.fileno(), 0, size)
    except AttributeError:  # not on this platform (macOS)
        logger.warning("cannot reserve disk space for %s here; relying on the free-space check", path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(path.parent, needed, shutil.disk_usage(path.parent).free, step) from exc
        logger.warning("cannot reserve disk space for %s (%s); relying on the free-space check", path, exc)


def _disk_full(folder: Path, needed: int, free: int, step: Step) -> RagError:
    gib = f"{needed / 2**30:.1f} GiB", f"{free / 2**30:.1f} GiB"
    return RagError(
        en=f"{step[0]}: about {gib[0]} more is needed on the disk of {folder}, which has {gib[1]} free: "
        "free some space (finished shards are kept) and run the build again",
        ja=f"{step[1]}にはディスク（{folder}）の空きがあと約 {gib[0]} 必要ですが、{gib[1]} しかありません。"
        "空きを作ってからもう一度実行してください（終わったシャードはそのまま使います）。",
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(paths: list[Path], threads: int = 8) -> list[str]:
    """SHA-256 of many files at once (hashlib releases the GIL on large reads)."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(sha256, paths))


def require_params(folder: Path, params: dict) -> None:
    """Work files in ``folder`` are reused only by a run with the same ``params``; the
    first run records them."""
    path = folder / "params.json"
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != params:
            raise RagError(
                en=f"{folder} holds work of a build with other parameters ({before}, now {params}): "
                "delete it or run with the same ones",
                ja=f"{folder} には別の設定での作業途中のファイルがあります。削除するか、同じ設定で実行してください。",
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    with staged(path) as staging:
        staging.write_text(json.dumps(params, ensure_ascii=False), encoding="utf-8")
