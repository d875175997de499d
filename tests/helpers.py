"""Helpers several test modules share (fixtures are in conftest.py): the question most
tests ask, the AppTest and command-line ways of asking it, an engine over a retrieval
service, a chat-template model, the last JSON line of a command's output."""

from __future__ import annotations

import json
import subprocess
import sys

from streamlit.testing.v1 import AppTest

from pipeline.generation.llm import open_backend
from pipeline.generation.token_count import EstimatedTokenCounter
from pipeline.serving.local import LocalRag
from pipeline.settings.sources import load_settings
from tests.conftest import ROOT

QUESTION = "日本で梅雨がないのは北海道とどこか。"
#: A chat model's name, and a template of the usual shape: role markers as special tokens,
#: the assistant's turn opened.
CHAT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ask_app(at: AppTest, question: str) -> AppTest:
    """Type a question into the chat box of an AppTest and run."""
    at.chat_input[0].set_value(question).run()
    assert not at.exception, at.exception
    return at


def markdown_texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def ask_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m pipeline.ask` with these arguments, as a real child process."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.ask", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def settings_for(cache, base_url: str = "", **sections):
    overrides = {"cache_dir": str(cache), "llm": {"base_url": base_url, "timeout_s": 5}}
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(environ={}, path="/none.toml", overrides=overrides)


def engine_for(service, base_url: str = "", **sections) -> LocalRag:
    """The local service over ``service`` (a retrieval service) and the LLM at ``base_url``."""
    settings = settings_for(service.settings.cache_dir, base_url, **sections)
    return LocalRag(settings, service, open_backend(settings), EstimatedTokenCounter())


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])
