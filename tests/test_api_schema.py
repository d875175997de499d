"""Schemathesis (its CLI, as a user would run it) against the API's own OpenAPI schema:
every operation, generated valid and invalid requests, and no answer may be a 5xx."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ApiServer

pytestmark = pytest.mark.schemathesis

TOKEN = "schema-token"


def test_no_operation_answers_with_a_server_error(standin, tmp_path):
    api = ApiServer(tmp_path, RAG_LLM_BASE_URL=standin.base_url, RAG_API_TOKEN=TOKEN)
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    try:
        run = subprocess.run(
            [st, "run", f"{api.url}/openapi.json", "--checks", "not_a_server_error",
             "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", "25", "--workers", "1",
             "--request-timeout", "60", "--seed", "1"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        api.stop()
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    assert "7 selected / 7 total" in report and "Tested: 7" in report  # every operation was exercised
    generated = int(report.split(" generated, ")[0].split()[-1])
    assert generated > 100 and f"{generated} generated, {generated} passed" in report
