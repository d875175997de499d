"""Every dependency in the requirements files is used: imported by the code, or run as a
program (each such one named here with where it runs). A listed package that nothing uses
is an install cost and an attack surface for nothing."""

import re
from importlib import metadata

from tests.conftest import ROOT

REQUIREMENT_FILES = ["requirements-base.txt", "requirements.txt", "requirements-gpu.txt", "requirements-dev.txt"]
#: Packages used without an import in this repository, and where.
PROGRAMS = {
    "vllm": "`vllm serve`, started by pipeline/generation/supervisor.py",
    "gunicorn": "the seed's server command (tests/test_api.py, docs/deployment.md)",
    "unidic-lite": "the MeCab dictionary fugashi loads",
    "ruff": "the linter (pyproject.toml)",
    "schemathesis": "the `st` command (tests/test_api_schema.py)",
    "authlib": "imported by Streamlit's st.login for OIDC (ui/auth.py)",
}
CODE_FOLDERS = ["pipeline", "ui", "pages", "tests", "bench", "scripts"]


def requirement_names() -> list[str]:
    names = []
    for filename in REQUIREMENT_FILES:
        for line in (ROOT / filename).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-r"):
                names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def import_names(distribution: str) -> set[str]:
    """The top-level modules a distribution provides (by its metadata when installed)."""
    installed = {
        module for module, owners in metadata.packages_distributions().items()
        if distribution in {owner.lower() for owner in owners}
    }  # fmt: skip
    if distribution.startswith("llama-index-"):  # llama-index-llms-openai-like: llama_index.llms.openai_like
        kind, *name = distribution.removeprefix("llama-index-").split("-")
        return {".".join(["llama_index", kind, *(["_".join(name)] if name else [])])}
    return installed or {distribution.replace("-", "_").removesuffix("_gpu").removesuffix("_cpu")}


def test_every_requirement_is_imported_or_run():
    sources = [ROOT / "streamlit_app.py", *(p for folder in CODE_FOLDERS for p in (ROOT / folder).rglob("*.py"))]
    code = "\n".join(path.read_text(encoding="utf-8") for path in sources)
    unused = []
    for name in requirement_names():
        if name in PROGRAMS:
            continue
        modules = import_names(name)
        if not any(re.search(rf"^\s*(from|import) {re.escape(m)}\b", code, re.MULTILINE) for m in modules):
            unused.append((name, sorted(modules)))
    assert unused == []
