"""The build: its options, and the stages run in order on one runner.

A stage whose outputs a finished earlier run recorded in the manifest is skipped; one
that was interrupted resumes from the shards it finished. A stage limited by
``limit_shards`` raises :class:`~pipeline.build.progress.StoppedEarly` when it has done
that many.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.assets.hub import fetch_model
from pipeline.build.bm25 import build_bm25
from pipeline.build.chunking import MAX_PASSAGE_CHARS
from pipeline.build.embed import embed
from pipeline.build.files import discard
from pipeline.build.install import install_bm25, product_settings
from pipeline.build.layout import BuildLayout, dump_date, model_folder_name
from pipeline.build.manifest import Manifest
from pipeline.build.passages import passages_from_dataset, passages_from_dump
from pipeline.build.runner import LocalRunner, RayRunner, Runner
from pipeline.core.errors import DataUnavailableError, RagError
from pipeline.retrieval.dense.vector_files import embedding_files, npz_shape
from pipeline.settings.model import IndexSettings, Settings

logger = logging.getLogger("pipeline.build")

STAGES = ("passages", "embed", "faiss", "bm25", "install")
#: The folders under the build's work folder that each stage resumes from, discarded only
#: once the manifest records the stage, so that a build stopped in between resumes from them.
WORK_FOLDERS = {"passages": "pages", "embed": "embed", "bm25": "bm25"}


@dataclass
class BuildOptions:
    """What ``python -m pipeline.build`` was asked (its ``--help`` explains each)."""

    out: Path
    model: str
    passage_prefix: str
    max_length: int
    corpus_repo: str
    index_repo: str
    dump: Path | None = None
    passages: Path | None = None
    config: str | None = None
    stages: tuple[str, ...] = STAGES
    shard_size: int = 100_000
    pages_per_batch: int = 1000
    workers: int | None = None
    gpus: int | None = None
    batch_tokens: int | None = None
    compile: bool = False
    nlist: int = 2048
    pq_m: int = 256
    train_size: int = 262_144
    ray: bool = False
    ray_address: str | None = None
    limit_shards: int | None = None


def config_name(options: BuildOptions) -> str:
    """``passages-c400-jawiki-20251201`` for a dump; a passages dataset's own config name."""
    if options.config:
        return options.config
    if options.dump is not None:
        date, wiki = dump_date(options.dump), options.dump.name.split("-", 1)[0]
        if date:
            return f"passages-c{MAX_PASSAGE_CHARS}-{wiki}-{date}"
    elif options.passages is not None and options.passages.is_dir() and options.passages.name.startswith("passages-"):
        return options.passages.name
    raise RagError(
        en="name the corpus config with --config (it cannot be told from the input's name)",
        ja="--config でコーパスの構成名を指定してください（入力の名前から決められません）。",
    )


def open_runner(options: BuildOptions) -> Runner:
    if options.ray or options.ray_address:
        return RayRunner(options.ray_address, options.workers)
    return LocalRunner(options.workers, options.gpus)


class Builder:
    """Runs the selected stages of one build into ``options.out``."""

    def __init__(self, options: BuildOptions, settings: Settings, runner: Runner) -> None:
        self.options, self.settings, self.runner = options, settings, runner
        self.layout = BuildLayout(
            options.out, config_name(options), options.corpus_repo, options.index_repo, model_folder_name(options.model)
        )
        self.manifest = Manifest(self.layout)

    def host(self) -> dict:
        return {"cpus": os.cpu_count(), **self.runner.describe()}

    def run(self) -> dict:
        stages = {
            "passages": self.passages,
            "embed": self.embed,
            "faiss": self.faiss,
            "bm25": self.bm25,
            "install": self.install,
        }
        for name in STAGES:
            if name not in self.options.stages:
                continue
            if self.manifest.done(name) and name != "install":
                logger.info("%s: done by an earlier run (see %s)", name, self.layout.manifest_path)
            else:
                record, files = stages[name]()
                self.manifest.record_stage(name, record, files, self.host())
            if name in WORK_FOLDERS:
                discard(self.layout.work_dir / WORK_FOLDERS[name])
        return self.manifest.data

    def _require(self, stage: str) -> None:
        """Stop unless ``stage`` (which this one reads) is done."""
        if not self.manifest.done(stage):
            raise DataUnavailableError(
                en=f"the {stage} stage has not run for {self.layout.config} in {self.layout.out}: run it first",
                ja=f"{self.layout.out} の {self.layout.config} では {stage} の段階がまだです。先に実行してください。",
            )

    def passages(self) -> tuple[dict, list[Path]]:
        options, layout = self.options, self.layout
        if options.dump is not None:
            record = passages_from_dump(
                layout, options.dump, self.runner, options.pages_per_batch, options.shard_size, options.limit_shards
            )
            date = dump_date(options.dump)
        elif options.passages is not None:
            record = passages_from_dataset(layout, options.passages, options.shard_size)
            date = (re.findall(r"\d{8}", layout.config) or [None])[-1]
        else:
            raise RagError(
                en="give the input: --dump FILE or --passages PATH",
                ja="入力（--dump ファイル または --passages パス）を指定してください。",
            )
        shards = layout.corpus_shards()
        counts = {**record.pop("counts"), "shards": len(shards)}
        self.manifest.update(
            dump_date=f"{date[:4]}-{date[4:6]}-{date[6:]}" if date else None,
            source=record.pop("source"),
            counts=counts,
            chunking={
                "method": "passages-c400 (wikipedia-utils make_passages, sentence units, section boundary)",
                "max_chars": MAX_PASSAGE_CHARS,
                "doc": "docs/build.md",
            }
            if options.dump
            else None,
        )
        logger.info(
            "passages: %s passages in %d shards at %s", f"{counts['passages']:,}", len(shards), layout.corpus_dir
        )
        return {"counts": counts, **record}, [*shards, layout.corpus_repo_dir / "README.md"]

    def embed(self) -> tuple[dict, list[Path]]:
        self._require("passages")
        options = self.options
        folder = fetch_model(options.model, self.settings, allow_download=True)
        record = embed(
            self.layout,
            self.runner,
            {
                "folder": str(folder),
                "prefix": options.passage_prefix,
                "max_length": options.max_length,
                "batch_tokens": options.batch_tokens,
                "compile": options.compile,
            },
            options.limit_shards,
        )
        files = self._embedding_files()
        self.manifest.update(
            model={
                "repo": options.model,
                "name": self.layout.model_name,
                "dimension": npz_shape(files[0])[0][1],
                "passage_prefix": options.passage_prefix,
                "max_length": options.max_length,
                "dtype": "float16",
                "embeddings_dir": self.layout.embeddings_dir,
            }
        )
        return record, files

    def _embedding_files(self) -> list[Path]:
        """The vectors as the product finds them (numeric order)."""
        index = IndexSettings(repo=self.options.index_repo, embeddings_dir=self.layout.embeddings_dir)
        settings = product_settings(self.layout, self.settings).model_copy(update={"index": index})
        return embedding_files(settings, allow_download=False)

    def faiss(self) -> tuple[dict, list[Path]]:
        from pipeline.build.ivfpq import build_index, index_shape

        self._require("embed")
        files = self._embedding_files()
        rows, dimension = self.manifest.data["counts"]["passages"], npz_shape(files[0])[0][1]
        nlist, m, bits = index_shape(rows, dimension, self.options.nlist, self.options.pq_m)
        relative = self.layout.index_file(nlist, m, bits)
        target = self.layout.out / self.options.index_repo / relative
        record = build_index(files, target, nlist, m, bits, self.options.train_size)
        self.manifest.update(faiss={"file": relative, **record})
        return record, [target]

    def bm25(self) -> tuple[dict, list[Path]]:
        self._require("passages")
        record = build_bm25(self.layout, self.runner, self.options.limit_shards)
        self.manifest.update(
            bm25={
                "folder": self.layout.relative(self.layout.bm25_dir),
                **{k: v for k, v in record.items() if k != "steps"},
            }
        )
        return record, sorted(p for p in self.layout.bm25_dir.iterdir() if p.is_file())

    def install(self) -> tuple[dict, list[Path]]:
        self._require("bm25")
        record = install_bm25(self.layout, self.settings)
        self.manifest.data["bm25"]["installed"] = record
        return record, []
