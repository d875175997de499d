"""Administering RAG API replicas: the ``/admin/`` routes over real HTTP with their own
token, the client the settings page uses in API mode, and the page itself (AppTest)
saving into the replica rather than into the UI host's settings file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from pipeline.serving.admin import Actor, AdminRefusedError
from pipeline.serving.admin_client import AdminApiClient
from pipeline.settings.sources import load_settings
from tests.conftest import ROOT, ApiServer

ADMIN_TOKEN = "admin-token-5678"
USER_TOKEN = "user-token-1234"
ALICE = Actor("alice@example.com", admin=True)


@pytest.fixture(scope="module")
def replica(standin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replica")
    api = ApiServer(folder, RAG_LLM_BASE_URL=standin.base_url, RAG_API_TOKEN=USER_TOKEN,
                    RAG_API_ADMIN_TOKEN=ADMIN_TOKEN, RAG_SETTINGS_FILE=str(folder / "replica.toml"))  # fmt: skip
    yield api, folder
    api.stop()


def test_admin_routes_need_the_admin_token(replica, standin, tmp_path):
    api, _ = replica
    assert httpx.get(f"{api.url}/admin/state").status_code == 401
    user = httpx.get(f"{api.url}/admin/state", headers={"Authorization": f"Bearer {USER_TOKEN}"})
    assert user.status_code == 401  # the users' token is not the admin's
    assert httpx.get(f"{api.url}/admin/state", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    off = ApiServer(tmp_path, RAG_LLM_BASE_URL=standin.base_url)  # no admin token configured: no administration
    try:
        refused = httpx.get(f"{off.url}/admin/state", headers={"Authorization": "Bearer anything"})
        assert refused.status_code == 403 and "api.admin_token" in refused.json()["ja"]
    finally:
        off.stop()


def test_the_client_saves_into_the_replica_which_reloads_and_refuses_operator_fields(replica, isolated_env):
    api, folder = replica
    client = AdminApiClient(api.url, ADMIN_TOKEN, load_settings())
    before = client.state()
    assert before.settings["llm"]["timeout_s"] == 60.0 and before.backend == "remote"
    outcome = client.save(ALICE, {"llm.timeout_s": 25.0})
    assert outcome.written == {"llm.timeout_s": 25.0} and outcome.reload.retrieval == [] and not outcome.reload.llm
    assert tomllib.loads((folder / "replica.toml").read_text(encoding="utf-8")) == {"llm": {"timeout_s": 25.0}}
    assert client.state().settings["llm"]["timeout_s"] == 25.0  # the replica runs with it now
    with pytest.raises(AdminRefusedError) as caught:
        client.save(ALICE, {"llm.base_url": "http://evil.example/v1"})
    assert "llm.base_url は運用者だけが設定できます" in caught.value.ja
    with pytest.raises(AdminRefusedError):  # the UI's own guard: the replica trusts the token
        client.save(Actor("anonymous:1", admin=False), {"llm.timeout_s": 10.0})
    log = Path(isolated_env["RAG_CACHE_DIR"]) / "logs" / "audit.log"
    assert json.loads(log.read_text(encoding="utf-8").splitlines()[-1])["action"].startswith("refused: save")
    replica_log = folder / "logs" / "audit.log"
    entries = [json.loads(line) for line in replica_log.read_text(encoding="utf-8").splitlines()]
    assert entries[0]["user"] == "alice@example.com (API admin token)" and entries[0]["written"] == {
        "llm.timeout_s": 25.0
    }
    client.reset(ALICE)
    assert client.state().settings["llm"]["timeout_s"] == 60.0


def test_the_settings_page_in_api_mode_administers_the_replica(replica, isolated_env, fresh_app_process, monkeypatch):
    api, folder = replica
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RAG_API_URL", api.url)
    monkeypatch.setenv("RAG_API_TOKEN", USER_TOKEN)
    monkeypatch.setenv("RAG_API_ADMIN_TOKEN", ADMIN_TOKEN)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("pages/settings.py").run()
    assert not at.exception
    assert any(str(folder / "replica.toml") in c.value for c in at.caption)  # the replica's file, shown
    at.number_input(key="setting:llm.timeout_s").set_value(40.0)
    next(b for b in at.button if b.label == "保存").click().run()
    assert not at.exception and not at.error
    assert tomllib.loads((folder / "replica.toml").read_text(encoding="utf-8")) == {"llm": {"timeout_s": 40.0}}
    assert not Path(isolated_env["RAG_SETTINGS_FILE"]).exists()  # the UI host's own file is untouched
    AdminApiClient(api.url, ADMIN_TOKEN, load_settings()).reset(ALICE)
