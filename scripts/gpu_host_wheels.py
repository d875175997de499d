"""The product's wheels for a GPU host without network, in parts that travel.

    python scripts/gpu_host_wheels.py OUT [--beside FILE ...] [--part-mib 58]

What the product needs there (requirements-base.txt and faiss-cpu), and what its benchmarks
need beyond it (requirements-bench.txt), is pinned by
constraints-gpu.txt, the lock of requirements-gpu.txt (vLLM 0.26.0, torch 2.11.0,
transformers 5.17.0: what was measured), for CPython 3.12 on manylinux x86-64. What the
host already has is left out: deploy/gpu-host/host-packages.txt (the lent H200's image)
and each ``--beside`` list (e.g. ../shared/gpu-host/vllm-0.26.0-wheels.txt when the vLLM
bundle is installed too: one version of each package, or the install stops; the set is then
incomplete without that bundle, which must be installed first). unidic-lite,
which ships no wheel, is built here. The result is OUT/product-wheels.tar split into
OUT/part-NN of PART_MIB MiB, with OUT/SHA256. On the host, the parts in one folder:

    cat part-* > product-wheels.tar && sha256sum -c SHA256 && tar -xf product-wheels.tar -C /tmp
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/py/site-packages /tmp/wheels/*.whl

Refreshing the lock after a requirements change (network to PyPI; uv is in
requirements-dev.txt):

    uv pip compile requirements-gpu.txt --python-version 3.12 \\
        --python-platform x86_64-manylinux_2_28 --no-python-downloads --no-header --no-annotate -o new.txt
    head -3 constraints-gpu.txt > header.txt && cat header.txt new.txt > constraints-gpu.txt
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints-gpu.txt"
HOST_PACKAGES = ROOT / "deploy" / "gpu-host" / "host-packages.txt"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (35, 34, 31, 28, 27, 26, 24, 17)] + ["manylinux2014_x86_64"]
#: Packages that publish only a source distribution: built here into a wheel.
SOURCE_ONLY = {"unidic-lite"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names_in(path: Path) -> set[str]:
    """Package names of a requirements-style list (``name==version`` or bare names)."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]))
    return names


def product_pins() -> list[str]:
    """``name==version`` of everything the product needs on a GPU host, from the lock."""
    with tempfile.TemporaryDirectory() as scratch:
        wanted = Path(scratch) / "product.in"
        wanted.write_text(
            f"-r {ROOT / 'requirements-base.txt'}\n-r {ROOT / 'requirements-bench.txt'}\nfaiss-cpu>=1.15,<2\n",
            encoding="utf-8",
        )
        pinned = Path(scratch) / "product.txt"
        subprocess.run(
            [sys.executable, "-m", "uv", "pip", "compile", str(wanted), "-c", str(LOCK), "--python-version", "3.12",
             "--python-platform", "x86_64-manylinux_2_28", "--no-python-downloads", "--no-header",
             "--no-annotate", "-q", "-o", str(pinned)],
            check=True,
        )  # fmt: skip
        return [line.strip() for line in pinned.read_text(encoding="utf-8").splitlines() if "==" in line]


def download(pins: list[str], folder: Path) -> None:
    binary = [pin for pin in pins if canonical(pin.split("==")[0]) not in SOURCE_ONLY]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.12", "--implementation", "cp", *platforms, "-d", str(folder), *binary],
        check=True,
    )  # fmt: skip
    built = [pin for pin in pins if canonical(pin.split("==")[0]) in SOURCE_ONLY]
    if built:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), *built], check=True)


def split(folder: Path, out: Path, part_mib: int) -> list[Path]:
    """folder as OUT/product-wheels.tar in parts, with the tar's SHA256."""
    tar = out / "product-wheels.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(folder.parent), folder.name], check=True)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    (out / "SHA256").write_text(f"{digest}  product-wheels.tar\n", encoding="utf-8")
    subprocess.run(["split", "-b", f"{part_mib}m", "-d", str(tar), str(out / "part-")], check=True)
    tar.unlink()
    return sorted(out.glob("part-*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_host_wheels.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an empty folder for the parts")
    parser.add_argument("--beside", type=Path, action="append", default=[],
                        help="a list of packages installed there too (repeatable)")  # fmt: skip
    parser.add_argument("--part-mib", type=int, default=58, help="size of each part (a device call carries 64 MiB)")
    args = parser.parse_args(argv)
    there = names_in(HOST_PACKAGES).union(*(names_in(path) for path in args.beside))
    pins = [pin for pin in product_pins() if canonical(pin.split("==")[0]) not in there]
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / "wheels"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    download(pins, folder)
    (args.out / "wheels.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")
    parts = split(folder, args.out, args.part_mib)
    shutil.rmtree(folder)
    size = sum(part.stat().st_size for part in parts) / 2**20
    print(f"{len(pins)} wheels, {size:.0f} MiB in {len(parts)} parts under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
