import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers import ask_cli

QUESTION = "日本で梅雨がないのは北海道とどこか。"


@pytest.fixture
def env(isolated_env):
    import os

    return {**os.environ, "RAG_EMBEDDING_ALLOW_FALLBACK": "false"}  # BM25 only: fast start


def test_answers_with_citations_through_the_llm_server(standin, env):
    run = ask_cli(QUESTION, "--llm-url", standin.base_url, "--json", env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) >= {"question", "answer", "sources", "timings", "mode"}
    assert result["mode"] == "demo" and result["question"] == QUESTION
    assert "[1]" in result["answer"] and result["answer"] in run.stdout
    assert {"n", "title", "section", "url", "score", "text"} <= set(result["sources"][0])
    assert result["sources"][0]["n"] == 1 and result["sources"][0]["url"].startswith("https://ja.wikipedia.org/")
    assert "出典:" in run.stdout and "[1] 梅雨" in run.stdout


def test_search_only_without_an_llm(env):
    run = ask_cli(QUESTION, "--json", "--top-k", "3", "--retriever", "bm25", env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["mode"] == "search-only" and len(result["sources"]) == 3
    assert "LLM が設定されていない" in run.stderr


def test_empty_question_exits_2_with_one_line(env):
    run = ask_cli("   ", env=env)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "empty" in run.stderr


def test_bytes_that_are_not_utf8_in_the_question_are_replaced_with_a_note(env):
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.ask", b"\xff\xe6\xa2\x85\xe9\x9b\xa8\xe3\x81\xa8\xe3\x81\xaf", "--json"],
        capture_output=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    assert json.loads(run.stdout.decode().strip().splitlines()[-1])["question"] == "\ufffd梅雨とは"
    assert "U+FFFD" in run.stderr.decode() and "Traceback" not in run.stderr.decode()
