"""The raw passage vectors as one memory-mappable fp16 ``.npy`` file, for exact search.

The jawiki embeddings come as numbered ``.npz`` files (key ``embs``, float16, in corpus
row order) under ``embs/passages-c400-jawiki-20230403/multilingual-e5-large-passage/`` of
``hotchpotch/wikipedia-passages-jawiki-embeddings``; whatever their names, they are taken
in numeric order. They are downloaded through the same hub/mirror code as everything
else, checked (rows, dimension, dtype) and assembled once into the cache. Without a hub
repo (the demo) the matrix is computed with the embedding model instead.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format
from tqdm.auto import tqdm

from pipeline.assets.hub import fetch_model, local_repo_dir
from pipeline.assets.index_cache import cache_key, cached_dir
from pipeline.core.errors import DataUnavailableError, IndexMismatchError
from pipeline.retrieval.corpus import PassageStore
from pipeline.retrieval.dense.encoder import LoadedEmbedding
from pipeline.settings.model import Settings

logger = logging.getLogger(__name__)

MATRIX_FILE = "matrix.npy"
ARRAY_KEY = "embs"


def embedding_files(settings: Settings, allow_download: bool) -> list[Path]:
    """The ``.npz`` files of ``index.embeddings_dir``, in numeric order."""
    repo, folder = settings.index.repo, settings.index.embeddings_dir
    local = local_repo_dir(repo, settings)
    if local is None:
        local = fetch_model(
            repo, settings, allow_download=allow_download, patterns=[f"{folder}/*.npz"], repo_type="dataset"
        )
    files = sorted((local / folder).glob("*.npz"), key=_numeric_order)
    if not files:
        raise DataUnavailableError(
            en=f"no .npz embedding files in {local / folder}",
            ja=f"{local / folder} に埋め込みファイル（.npz）がありません。"
            "`python -m pipeline.download` で取得してください。",
        )
    return files


def _numeric_order(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def npz_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``embs`` array without reading its data."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{ARRAY_KEY}.npy") as member:
            major, _ = npy_format.read_magic(member)
            read_header = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(member)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise DataUnavailableError(
            en=f"{path} is not a readable .npz with an '{ARRAY_KEY}' array (partly downloaded?): {exc}",
            ja=f"{path} を読めません（ダウンロードが途中の可能性があります）。削除して取得し直してください。",
        ) from exc
    return shape, dtype


def assemble(files: list[Path], target: Path, rows: int, dimension: int) -> None:
    """Check the files against the corpus and model, then copy them into one fp16 .npy."""
    shapes = [npz_shape(path) for path in files]
    for path, (shape, dtype) in zip(files, shapes, strict=True):
        if len(shape) != 2 or shape[1] != dimension or dtype != np.float16:
            raise IndexMismatchError(
                en=f"{path} holds {dtype} {shape}; expected float16 (n, {dimension})",
                ja=f"{path} の形式（{dtype}、{shape}）が想定（float16、(n, {dimension})）と違います。",
            )
    total = sum(shape[0] for shape, _ in shapes)
    if total != rows:
        raise IndexMismatchError(
            en=f"the embedding files hold {total:,} vectors but the corpus has {rows:,} passages",
            ja=f"埋め込みファイルのベクトル数 {total:,} とコーパスのパッセージ数 {rows:,} が一致しません。",
        )
    matrix = npy_format.open_memmap(target, mode="w+", dtype=np.float16, shape=(total, dimension))
    start = 0
    for path in tqdm(files, desc="assembling passage vectors", unit="file"):
        with np.load(path) as archive:
            part = archive[ARRAY_KEY]
        matrix[start : start + len(part)] = part
        start += len(part)
    matrix.flush()


def matrix_path(settings: Settings, passages: PassageStore, embedding: LoadedEmbedding, allow_download: bool) -> Path:
    """The cached matrix of these passages' vectors, assembled or computed if needed."""
    root = settings.resolved_cache_dir
    if settings.index.repo:
        files = embedding_files(settings, allow_download)
        key = cache_key(passages.fingerprint, *((f.name, f.stat().st_size) for f in files))

        def build(folder: Path) -> None:
            assemble(files, folder / MATRIX_FILE, len(passages), embedding.model.dimension)

    else:
        key = cache_key(passages.fingerprint, embedding.fingerprint, embedding.model.text_instruction)

        def build(folder: Path) -> None:
            logger.info("embedding %d passages for exact search", len(passages))
            matrix = npy_format.open_memmap(
                folder / MATRIX_FILE, mode="w+", dtype=np.float16, shape=(len(passages), embedding.model.dimension)
            )
            start = 0
            for documents in passages.iter_documents(batch_size=256):
                vectors = np.asarray(embedding.model.get_text_embedding_batch(documents), dtype=np.float16)
                matrix[start : start + len(vectors)] = vectors
                start += len(vectors)
            matrix.flush()

    return cached_dir(root, "vectors", key, build) / MATRIX_FILE
