"""Stage tars in parts for a lent GPU machine: one folder, one call each.

    python scripts/gpu_host_send.py STAGE NAME=DIR [NAME=DIR ...] [--extra FILE ...]

Each DIR holds one tar in parts (``part-NN`` and ``SHA256``, as scripts/gpu_host_wheels.py
and ../shared/gpu-host/build-vllm-bundle.sh write them). STAGE, a git-ignored folder
inside the repository (e.g. ``.gpu/send``), gets a folder per part in sending order,
``NN-NAME-part-XX``, hard-linked where the file system allows (the extras are copied). A
tar's SHA256 travels with its last part, so ``/tmp/parts/NAME/SHA256`` on the machine says
that the whole tar is there (bench/gpu_host_run.sh reads it so); the ``--extra`` files
travel with the last folder, into ``/tmp/parts/``. STAGE/calls.jsonl has, per folder,
the ``carry`` and the ``command`` of its call. Send them back to back: the machine goes back 30 s after a call
ends, and the parts already sent go with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What one call may carry is 64 MiB with the working tree; this leaves the tree 4 MiB.
MAX_FOLDER_BYTES = 60 * 2**20


def _place(source: Path, folder: Path, link: bool = True) -> None:
    """``source`` into ``folder``: hard-linked (a part, ours), or copied (an extra file, which
    may be shared data: a link would let a write to the staged copy change the original)."""
    folder.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, folder / source.name)
            return
        except OSError:  # another file system
            pass
    shutil.copy2(source, folder / source.name)


def stage(stage_dir: Path, bundles: dict[str, Path], extras: list[Path], parts_dir: str = "/tmp/parts") -> list[dict]:
    """The folders and calls.jsonl under ``stage_dir``; the calls, in sending order."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    relative = stage_dir.resolve().relative_to(ROOT) if stage_dir.resolve().is_relative_to(ROOT) else stage_dir
    calls: list[dict] = []
    for name, source in bundles.items():
        parts = sorted(source.glob("part-*"))
        if not parts or not (source / "SHA256").is_file():
            raise SystemExit(f"{source}: no part-NN files and SHA256 (a tar in parts) there")
        for number, part in enumerate(parts):
            folder = stage_dir / f"{len(calls):02d}-{name}-{part.name}"
            carried = relative / folder.name
            _place(part, folder)
            target = shlex.quote(f"{parts_dir}/{name}")
            command = f"mkdir -p {target} && cp {shlex.quote(str(carried))}/part-* {target}/"
            if number == len(parts) - 1:  # SHA256 last: its presence says the tar is whole
                _place(source / "SHA256", folder)
                command += f" && cp {shlex.quote(str(carried / 'SHA256'))} {target}/"
            calls.append({"folder": folder, "carry": [str(carried)], "command": command})
    if extras:
        last = calls[-1]
        for extra in extras:
            _place(extra, last["folder"] / "extra", link=False)
        last["command"] += f" && cp {shlex.quote(str(relative / last['folder'].name / 'extra'))}/* {parts_dir}/"
    for call in calls:
        size = sum(path.stat().st_size for path in call["folder"].rglob("*") if path.is_file())
        if size > MAX_FOLDER_BYTES:
            mib = size / 2**20
            raise SystemExit(f"{call['folder']}: {mib:.1f} MiB, more than one call carries (make smaller parts)")
    lines = [json.dumps({"carry": call["carry"], "command": call["command"]}) for call in calls]
    (stage_dir / "calls.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_host_send.py", description=__doc__.splitlines()[0])
    parser.add_argument("stage", type=Path)
    parser.add_argument("bundles", nargs="+", metavar="NAME=DIR", help="e.g. vllm=.gpu/vllm product=.gpu/product")
    parser.add_argument("--extra", type=Path, action="append", default=[], help="a file for /tmp/parts/ itself")
    parser.add_argument("--parts-dir", default="/tmp/parts", help="where the parts go on the machine")
    args = parser.parse_args(argv)
    bundles = {}
    for spec in args.bundles:
        name, _, folder = spec.partition("=")
        if not name or not folder:
            parser.error(f"{spec!r}: NAME=DIR")
        bundles[name] = Path(folder)
    calls = stage(args.stage, bundles, args.extra, args.parts_dir)
    print(f"{len(calls)} calls in {args.stage / 'calls.jsonl'}", file=sys.stderr)


if __name__ == "__main__":
    main()
