"""The build manifest, ``<corpus repo>/<config>/manifest.json``: what a built folder
holds, from what, and how it was made.

Keys: ``format``; ``config``; ``dump_date`` (``YYYY-MM-DD`` or null); ``source`` (the
dump's path, size and SHA-256, or the passages dataset's files); ``chunking``;
``counts`` (pages read and skipped, passages, shards, sentences dropped); ``model``
(repo, folder name, dimension, prefix, max length, dtype); ``faiss`` (file, shape,
training); ``bm25`` (folder, terms version, vocabulary, entries, where it was
installed); ``stages`` (per stage: finished at, seconds, shards computed and reused,
rates); ``files`` (path relative to the build folder -> bytes and SHA-256, for every
output file); ``settings`` (the ``RAG_*`` values that serve this build); ``tools``
(versions); ``host`` (where it ran). Updated after every stage, written atomically.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from pipeline.build.files import checksums, staged
from pipeline.build.layout import BuildLayout
from pipeline.retrieval.corpus import corpus_manifest
from pipeline.settings.model import CorpusSettings, IndexSettings, Settings

FORMAT = 1
TOOLS = (
    "numpy",
    "pyarrow",
    "faiss-cpu",
    "faiss-gpu",
    "torch",
    "transformers",
    "bm25s",
    "fugashi",
    "unidic-lite",
    "datasets",
    "ray",
)


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def manifest_for(settings: Settings) -> dict | None:
    """The manifest of the configured corpus, when it was built here (the status page)."""
    return corpus_manifest(settings)


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def product_settings_env(layout: BuildLayout, manifest: dict) -> dict[str, str]:
    """The ``RAG_*`` values that point the product at this build."""
    env = {"RAG_PROFILE": "jawiki", "RAG_HUB_MIRROR": str(layout.out.resolve()), "RAG_CORPUS_CONFIG": layout.config}
    if layout.corpus_repo != CorpusSettings().repo:
        env["RAG_CORPUS_REPO"] = layout.corpus_repo
    if layout.index_repo != IndexSettings().repo:
        env["RAG_INDEX_REPO"] = layout.index_repo
    if "model" in manifest:
        model = manifest["model"]
        env["RAG_EMBEDDING_MODEL"] = model["repo"]
        env["RAG_EMBEDDING_PASSAGE_PREFIX"] = model["passage_prefix"]
        env["RAG_EMBEDDING_MAX_LENGTH"] = str(model["max_length"])
        env["RAG_INDEX_EMBEDDINGS_DIR"] = layout.embeddings_dir
    if "faiss" in manifest:
        env["RAG_INDEX_FILE"] = manifest["faiss"]["file"]
    return env


class Manifest:
    """The manifest of one build, loaded from its folder if an earlier run wrote it."""

    def __init__(self, layout: BuildLayout) -> None:
        self.layout = layout
        self.data = read_manifest(layout.manifest_path) or {
            "format": FORMAT,
            "config": layout.config,
            "stages": {},
            "files": {},
        }

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def update(self, **values: dict | str | None) -> None:
        self.data.update(values)

    def record_stage(self, stage: str, record: dict, files: list[Path], host: dict) -> None:
        """A finished stage, the checksums of the files it wrote, and save."""
        record = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        self.data["stages"][stage] = record
        for path, digest in zip(files, checksums(files), strict=True):
            self.data["files"][self.layout.relative(path)] = {"bytes": path.stat().st_size, "sha256": digest}
        self.data["tools"] = tool_versions()
        self.data["host"] = host
        self.data["settings"] = product_settings_env(self.layout, self.data)
        self.save()

    def save(self) -> None:
        with staged(self.layout.manifest_path) as staging:
            staging.write_text(json.dumps(self.data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
