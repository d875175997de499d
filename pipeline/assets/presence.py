"""What a data profile needs and what of it is already on this machine (no network)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from pipeline.assets.hub import hub_cache_dir, local_repo_dir
from pipeline.core.schema import DataItem
from pipeline.settings.model import Settings


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
    location, size = f"{corpus.repo} ({corpus.config})", sum(f.stat().st_size for f in files)
    return DataItem(label_ja="コーパス", location=location, present=bool(files), size_bytes=size)


def _file_item(label: str, repo: str, filename: str, settings: Settings, repo_type: str = "dataset") -> DataItem:
    folder = local_repo_dir(repo, settings)
    if folder is not None:
        path = folder / filename
    else:
        cached = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(settings), repo_type=repo_type)
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.exists():
        return DataItem(label_ja=label, location=repo, present=False, size_bytes=0)
    root = path.parent if repo_type == "model" else path
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else root.stat().st_size
    return DataItem(label_ja=label, location=repo, present=True, size_bytes=size)
