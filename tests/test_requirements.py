"""Every dependency in the requirements files is used: imported by the code, or run as a
program (each such one named here with where it runs). A listed package that nothing uses
is an install cost and an attack surface for nothing."""

import re
from importlib import metadata

from tests.conftest import ROOT

REQUIREMENT_FILES = [
    "requirements-base.txt",
    "requirements.txt",
    "requirements-gpu.txt",
    "requirements-dev.txt",
    "requirements-bench.txt",
]
#: Packages used without an import in this repository, and where.
PROGRAMS = {
    "vllm": "`vllm serve`, started by pipeline/generation/supervisor.py",
    "gunicorn": "the seed's server command (tests/test_api.py, docs/deployment.md)",
    "unidic-lite": "the MeCab dictionary fugashi loads",
    "ruff": "the linter (pyproject.toml)",
    "schemathesis": "the `st` command (tests/test_api_schema.py)",
    "authlib": "imported by Streamlit's st.login for OIDC (ui/auth.py)",
    "uv": "resolves the GPU host's lock (this file, scripts/gpu_host_wheels.py)",
    "py-spy": "samples the API's threads in the GPU host's measurements (bench/gpu_host.py)",
}
CODE_FOLDERS = ["pipeline", "ui", "pages", "tests", "bench", "scripts"]


def requirement_names() -> list[str]:
    names = []
    for filename in REQUIREMENT_FILES:
        for line in (ROOT / filename).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def import_names(distribution: str) -> set[str]:
    """The top-level modules a distribution provides (by its metadata when installed)."""
    installed = {
        module for module, owners in metadata.packages_distributions().items()
        if distribution in {owner.lower() for owner in owners}
    }  # fmt: skip
    if distribution.startswith("llama-index-"):  # llama-index-llms-openai-like: llama_index.llms.openai_like
        rest = distribution.removeprefix("llama-index-")
        kind = "vector-stores" if rest.startswith("vector-stores") else rest.split("-")[0]
        name = rest.removeprefix(kind).strip("-").replace("-", "_")
        return {".".join(["llama_index", kind.replace("-", "_"), *([name] if name else [])])}
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


def test_the_gpu_hosts_lock_is_current_and_resolves():
    """constraints-gpu.txt is what requirements-gpu.txt resolves to for Python 3.12 on
    manylinux x86-64 (vLLM 0.26.0, torch 2.11.0, transformers 5.17.0): one consistent set,
    asked of PyPI (uv reads the packages' metadata, downloads no wheels)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import pytest

    pytest.importorskip("uv", reason="uv asks PyPI (requirements-dev.txt installs it; the offline GPU host lacks both)")
    with tempfile.TemporaryDirectory() as scratch:
        resolved = Path(scratch) / "lock.txt"
        run = subprocess.run(
            [sys.executable, "-m", "uv", "pip", "compile", "requirements-gpu.txt", "--python-version", "3.12",
             "--python-platform", "x86_64-manylinux_2_28", "--no-python-downloads", "--no-header", "-q",
             "-o", str(resolved)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        pins = {line for line in resolved.read_text(encoding="utf-8").splitlines() if "==" in line}
    locked = {line for line in (ROOT / "constraints-gpu.txt").read_text(encoding="utf-8").splitlines() if "==" in line}
    assert pins == locked
    assert {"vllm==0.26.0", "torch==2.11.0", "transformers==5.17.0", "huggingface-hub==1.33.0"} <= pins
