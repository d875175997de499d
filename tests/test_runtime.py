"""One owner per process: the runtime reloads only what a saved setting touches, lets go
of what it replaces, and stops the engine on every way out: closing, Ctrl-C and SIGTERM
of `python -m pipeline.api`, of `python -m pipeline.ask` (and, in test_browser.py, of
`streamlit run`). The engine is the stand-in `vllm serve`, started as a real child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline.core.errors import RagError
from pipeline.retrieval.dense.searchers import SearcherClosedError
from pipeline.serving.admin import Actor, AdminRefusedError, LocalAdmin
from pipeline.serving.runtime import RagRuntime
from pipeline.settings.sources import load_settings, with_values
from tests.conftest import (
    EMBEDDINGS_DIR,
    HERMETIC_ENV,
    IVFPQ_FILE,
    MODEL_REPO,
    ROOT,
    engine_marker,
    free_port,
    processes_with,
    wait_for,
)

ADMIN = Actor("alice@example.com", admin=True)
OTHER_MODEL = "elyza/ELYZA-japanese-Llama-2-7b-instruct"


@pytest.fixture
def jawiki_env(isolated_env, hub_mirror, monkeypatch):
    """The jawiki profile over the hub-shaped mirror (MiniLM as its model), the local
    backend running the stand-in engine, a settings file of its own."""
    command, marker = engine_marker()
    env = {
        "RAG_PROFILE": "jawiki", "RAG_HUB_MIRROR": str(hub_mirror), "RAG_EMBEDDING_MODEL": MODEL_REPO,
        "RAG_EMBEDDING_QUERY_PREFIX": "", "RAG_EMBEDDING_PASSAGE_PREFIX": "", "RAG_EMBEDDING_MAX_LENGTH": "256",
        "RAG_INDEX_FILE": IVFPQ_FILE, "RAG_INDEX_EMBEDDINGS_DIR": EMBEDDINGS_DIR, "RAG_LLM_BACKEND": "local",
        "RAG_LLM_SERVE_COMMAND": command, "RAG_LLM_ALLOWED_MODELS": OTHER_MODEL,
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**isolated_env, **env, "marker": marker}


def test_three_saves_in_a_row_reload_only_what_each_touches(jawiki_env):
    with RagRuntime(load_settings()) as runtime:
        admin = LocalAdmin(runtime)
        first = runtime.service
        assert admin.wait_engine(60, lambda line: None).state == "ready"
        engine_pid = runtime.supervisor.status().pid
        loaded = dict(runtime.loads)
        assert loaded == {"corpus": 1, "bm25": 1, "embedding": 1, "vectors": 1, "llm": 1}

        timeout = admin.save(ADMIN, {"llm.timeout_s": 30.0})
        assert timeout.reload.changed == ["llm.timeout_s"] and timeout.reload.retrieval == []
        assert not timeout.reload.llm and timeout.reload.engine == "unchanged"
        assert dict(runtime.loads) == loaded and runtime.service.retrieval is first.retrieval
        assert runtime.service.settings.llm.timeout_s == 30.0 and runtime.supervisor.status().pid == engine_pid

        vectors = first.retrieval.vector_index.vector_store.client
        passages, bm25, embedding = first.retrieval.passages, first.retrieval.bm25, first.retrieval.embedding
        exact = admin.save(ADMIN, {"index.backend": "exact"})
        assert exact.reload.retrieval == ["vectors"] and exact.reload.engine == "unchanged"
        assert runtime.loads["vectors"] == 2 and runtime.loads["corpus"] == runtime.loads["bm25"] == 1
        assert runtime.loads["embedding"] == 1 and vectors.index is None  # the replaced index was let go
        new = runtime.service.retrieval
        assert new.passages is passages and new.bm25 is bm25 and new.embedding is embedding  # taken over
        assert "exact" in new.status().vector_search and first.retrieval.closed
        assert runtime.service.search("日本で梅雨がないのは", runtime.settings).hits

        model = admin.save(ADMIN, {"llm.model": OTHER_MODEL})
        assert model.reload.engine == "restarting" and model.reload.llm and model.reload.retrieval == []
        assert admin.wait_engine(60, lambda line: None).state == "ready"
        assert runtime.supervisor.status().pid != engine_pid and runtime.loads["engine"] == 1
        assert runtime.loads["vectors"] == 2
        answer = runtime.service.answer("日本で梅雨がないのは北海道とどこか。").consume()
        assert answer.mode == "full" and answer.complete  # the restarted engine answers, not search-only
    assert processes_with(jawiki_env["marker"]) == []


def test_another_query_encoder_reloads_the_encoder_and_the_vectors_and_lets_the_old_go(jawiki_env, monkeypatch):
    """The operator's change that bench.reload_memory makes on the GPU host, over the same
    profile and backend: the exact matrix is loaded again, the one it replaces let go."""
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    monkeypatch.setenv("RAG_INDEX_BACKEND", "exact")
    with RagRuntime(load_settings()) as runtime:
        first = runtime.service.retrieval
        vectors = first.vector_index.vector_store.client
        report = runtime.reload(with_values(runtime.settings, {"embedding.query_encoder": "padded"}))
        assert report.changed == ["embedding.query_encoder"] and report.retrieval == ["embedding", "vectors"]
        # the replaced matrix was let go: its worker thread stopped, the matrix dropped
        assert vectors.inner.matrix is None and not vectors._worker.is_alive() and first.closed
        new = runtime.service.retrieval
        assert new.passages is first.passages and new.bm25 is first.bm25 and new.embedding is not first.embedding
        assert runtime.loads["vectors"] == 2 and runtime.loads["corpus"] == runtime.loads["bm25"] == 1
        assert runtime.service.search("日本で梅雨がないのは", runtime.settings).hits


def test_a_settings_file_gets_only_what_was_saved_and_the_audit_log_says_it(jawiki_env, monkeypatch):
    monkeypatch.setenv("RAG_ADMIN_USERS", "alice@example.com")
    monkeypatch.setenv("RAG_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    with RagRuntime(load_settings()) as runtime:
        admin = LocalAdmin(runtime)
        outcome = admin.save(ADMIN, {"llm.timeout_s": 45.0, "retrieval.top_k": 7, "profile": "jawiki"})
        assert outcome.written == {"llm.timeout_s": 45.0, "retrieval.top_k": 7}  # profile: unchanged, not written
    text = Path(jawiki_env["RAG_SETTINGS_FILE"]).read_text(encoding="utf-8")
    assert text == "[llm]\ntimeout_s = 45.0\n\n[retrieval]\ntop_k = 7\n"
    log = Path(jawiki_env["RAG_CACHE_DIR"]) / "logs" / "audit.log"
    [entry] = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert entry["action"] == "save server settings" and entry["user"] == "alice@example.com"
    assert entry["written"] == {"llm.timeout_s": 45.0, "retrieval.top_k": 7} and entry["removed"] == []


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ({"llm.base_url": "http://evil.example/v1"}, "llm.base_url"),
        ({"llm.extra_args": "--trust-remote-code"}, "llm.extra_args"),
        ({"llm.serve_command": "sh -c 'touch /tmp/owned'"}, "llm.serve_command"),
        ({"llm.model": "someone/remote-code-model"}, "llm.model"),
        ({"admin.users": ["mallory@example.com"]}, "admin.users"),
        ({"llm": {"backend": "local", "serve_command": "sh -c 'touch /tmp/owned'"}}, "llm"),  # a whole section
        ({"no.such": 1}, "no.such"),
    ],
)
def test_an_admin_cannot_set_what_only_the_operator_may(isolated_env, values, refused):
    settings_file = Path(isolated_env["RAG_SETTINGS_FILE"])
    with RagRuntime(load_settings()) as runtime, pytest.raises(AdminRefusedError) as caught:
        LocalAdmin(runtime).save(ADMIN, values)
    assert refused in caught.value.ja and not settings_file.exists()
    log = Path(isolated_env["RAG_CACHE_DIR"]) / "logs" / "audit.log"
    [entry] = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert entry["action"] == "refused: save server settings" and entry["fields"] == [refused]


def test_a_non_admin_is_refused_and_the_attempt_audited(isolated_env):
    with RagRuntime(load_settings()) as runtime:
        admin = LocalAdmin(runtime)
        for attempt in (lambda who: admin.save(who, {"llm.timeout_s": 5.0}), admin.reset, admin.restart_engine,
                        admin.start_download):  # fmt: skip
            with pytest.raises(AdminRefusedError):
                attempt(Actor("anonymous:1234", admin=False))
    log = Path(isolated_env["RAG_CACHE_DIR"]) / "logs" / "audit.log"
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [e["action"] for e in entries] == [
        "refused: save server settings",
        "refused: reset server settings",
        "refused: restart the engine",
        "refused: start the jawiki download",
    ]
    assert {e["user"] for e in entries} == {"anonymous:1234"} and not Path(isolated_env["RAG_SETTINGS_FILE"]).exists()


def test_closing_lets_go_of_the_vectors_and_a_search_waiting_for_them_is_told(jawiki_env, monkeypatch):
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    monkeypatch.setenv("RAG_INDEX_BACKEND", "exact")
    runtime = RagRuntime(load_settings())
    searcher = runtime.service.retrieval.vector_index.vector_store.client
    assert searcher.search(np.zeros((1, searcher.d), dtype=np.float32), 3)[1].shape == (1, 3)
    runtime.close()
    assert searcher.inner.matrix is None and not searcher._worker.is_alive()
    with pytest.raises(SearcherClosedError) as caught:
        searcher.search(np.zeros((1, searcher.d), dtype=np.float32), 3)
    assert "ベクトル索引を入れ替えた" in caught.value.ja


def api_with_engine(tmp_path: Path, command: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAG_")},
        "RAG_CACHE_DIR": str(tmp_path / "cache"), "RAG_SETTINGS_FILE": str(tmp_path / "none.toml"),
        "RAG_SECRETS_FILE": str(tmp_path / "none-secrets.toml"), "RAG_EMBEDDING_ALLOW_FALLBACK": "false",
        "RAG_LLM_BACKEND": "local", "RAG_LLM_SERVE_COMMAND": command,
    }  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "pipeline.api", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_api_stopped_by_a_signal_leaves_no_engine(tmp_path, stop):
    command, marker = engine_marker()
    api, url = api_with_engine(tmp_path, command)
    try:

        def engine_ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).json()["llm"]["reachable"]
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                return False

        wait_for(engine_ready, 120)
        assert processes_with(marker)  # the engine runs, in a process group of its own
        api.send_signal(stop)
        api.wait(30)
        wait_for(lambda: not processes_with(marker), 30)
    finally:
        if api.poll() is None:
            api.kill()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ask_stopped_by_a_signal_leaves_no_engine(tmp_path, stop):
    command, marker = engine_marker()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAG_")}, **HERMETIC_ENV,
           "RAG_CACHE_DIR": str(tmp_path), "RAG_SETTINGS_FILE": str(tmp_path / "none.toml"),
           "RAG_LLM_BACKEND": "local", "RAG_LLM_SERVE_COMMAND": f"{command} --startup-delay 600"}  # fmt: skip
    # SIGINT as a terminal's Ctrl-C finds it: at its default disposition. A test runner
    # started as a background job (`cmd &` without job control: the GPU host's run script)
    # passes SIGINT on ignored, and Python then installs no KeyboardInterrupt at all.
    ask = subprocess.Popen([sys.executable, "-m", "pipeline.ask", "梅雨とは"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    said: list[str] = []
    threading.Thread(target=lambda: said.extend(ask.stderr), daemon=True).start()
    try:
        # Signalled once it waits for the engine (which it says on stderr), not while it
        # may still be loading in C.
        wait_for(lambda: processes_with(marker) and any("KV cache size" in line for line in said), 120)
        ask.send_signal(stop)
        assert ask.wait(30) != 0
        wait_for(lambda: not processes_with(marker), 30)
    finally:
        if ask.poll() is None:
            ask.kill()


def test_settings_that_cannot_load_are_neither_saved_nor_left_half_applied(isolated_env):
    with RagRuntime(load_settings()) as runtime:
        before = runtime.service.search("日本で梅雨がないのは", runtime.settings)
        with pytest.raises(RagError) as caught:  # the jawiki corpus is not on this machine
            LocalAdmin(runtime).save(ADMIN, {"profile": "jawiki"})
        assert "コーパス" in caught.value.ja
        assert runtime.settings.profile == "demo" and runtime.failed[0].profile == "jawiki"
        after = runtime.service.search("日本で梅雨がないのは", runtime.settings)  # still serving, as before
        assert [hit.row for hit in after.hits] == [hit.row for hit in before.hits]
    assert not Path(isolated_env["RAG_SETTINGS_FILE"]).exists()
    log = Path(isolated_env["RAG_CACHE_DIR"]) / "logs" / "audit.log"
    [entry] = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert entry["action"] == "failed: save server settings" and "corpus" in entry["reason"]


def test_a_save_over_an_unreadable_settings_file_keeps_it_as_a_backup(isolated_env):
    settings_file = Path(isolated_env["RAG_SETTINGS_FILE"])
    settings_file.write_text("this is = = not toml", encoding="utf-8")
    with RagRuntime(load_settings(os.devnull)) as runtime:
        outcome = LocalAdmin(runtime).save(ADMIN, {"llm.timeout_s": 20.0})
    assert outcome.backup and Path(outcome.backup).read_text(encoding="utf-8") == "this is = = not toml"
    assert settings_file.read_text(encoding="utf-8") == "[llm]\ntimeout_s = 20.0\n"
