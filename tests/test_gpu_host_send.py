"""scripts/gpu_host_send.py: the calls it lists, run in order, put whole tars in place."""

import hashlib
import importlib.util
import json
import subprocess

import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("gpu_host_send", ROOT / "scripts" / "gpu_host_send.py")
gpu_host_send = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_host_send)


def tar_in_parts(folder, content: bytes, part_bytes: int):
    """What the wheel scripts write: part-NN of one tar, and its SHA256 under the tar's name."""
    folder.mkdir()
    for number, start in enumerate(range(0, len(content), part_bytes)):
        (folder / f"part-{number:02d}").write_bytes(content[start : start + part_bytes])
    (folder / "SHA256").write_text(f"{hashlib.sha256(content).hexdigest()}  bundle.tar\n")


def test_the_listed_calls_put_each_tar_and_the_extras_in_place(tmp_path):
    vllm, product = b"v" * 2500 + b"end of vllm", b"p" * 1000
    tar_in_parts(tmp_path / "vllm", vllm, 1000)
    tar_in_parts(tmp_path / "product", product, 1000)
    extra = tmp_path / "questions.json"
    extra.write_text("[]")
    stage_dir, parts = tmp_path / "send", tmp_path / "parts"
    gpu_host_send.main([str(stage_dir), f"vllm={tmp_path / 'vllm'}", f"product={tmp_path / 'product'}",
                        "--extra", str(extra), "--parts-dir", str(parts)])  # fmt: skip
    calls = [json.loads(line) for line in (stage_dir / "calls.jsonl").read_text().splitlines()]
    assert [call["carry"][0].rsplit("/", 1)[1] for call in calls] == [
        "00-vllm-part-00", "01-vllm-part-01", "02-vllm-part-02", "03-product-part-00"]  # fmt: skip
    for number, call in enumerate(calls):
        subprocess.run(["bash", "-c", call["command"]], check=True, cwd=tmp_path)
        # SHA256 only once the last part is there: its presence says the tar is whole
        assert (parts / "vllm" / "SHA256").exists() == (number >= 2)
    for name, content in (("vllm", vllm), ("product", product)):
        joined = b"".join(path.read_bytes() for path in sorted((parts / name).glob("part-*")))
        assert joined == content
        assert (parts / name / "SHA256").read_text().split()[0] == hashlib.sha256(joined).hexdigest()
    assert (parts / "questions.json").read_text() == "[]"
    assert extra.stat().st_nlink == 1  # copied: a write to the staged copy cannot reach the original


def test_a_part_too_large_for_one_call_is_refused(tmp_path, monkeypatch):
    tar_in_parts(tmp_path / "big", b"x" * 3000, 3000)
    monkeypatch.setattr(gpu_host_send, "MAX_FOLDER_BYTES", 2000)
    with pytest.raises(SystemExit, match="more than one call carries"):
        gpu_host_send.main([str(tmp_path / "send"), f"big={tmp_path / 'big'}"])


def test_a_folder_without_a_tar_in_parts_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no part-NN files and SHA256"):
        gpu_host_send.main([str(tmp_path / "send"), f"empty={tmp_path / 'empty'}"])
