"""Corpus-builder benchmarks (issue 27): E5 passage embedding, BM25 from shards, dump parsing.

    python -m bench.index_build --out bench/results/index_build.json [--commit SHA]
    python -m bench.index_build --quick --out /tmp/index_build.json   # a CPU check, under a minute

1. ``e5``: E5-large's exact shape (XLM-R large: 24 layers, 1024 hidden, 16 heads, 4096
   FFN, vocabulary 250,002) with random weights in fp16, through the builder's encoder
   (:class:`pipeline.build.encode.PassageEncoder`: length-bucketed batches): passages/s on
   one GPU, eager and ``torch.compile``'d, and on two GPUs (one process each) when two are
   visible. Passage lengths follow the c400 distribution (:data:`C400_CHAR_QUANTILES`);
   tokens = characters x ``--tokens-per-char`` (an estimate for XLM-R's SentencePiece on
   Japanese) plus the prefix and special tokens, or the real tokenizer with
   ``--model-folder`` (E5's own folder, real weights). Beside the rate: FLOPs per passage
   and the compute limit at ``--peak-tflops``.
2. ``bm25``: the builder's bm25 stage (:mod:`pipeline.build.bm25`) over N synthetic
   passages (real JSQuAD paragraphs chunked as c400, under random kanji/katakana titles
   so that the vocabulary grows with the corpus) on every core: seconds, and the peak
   of the resident memory of all its processes together (RSS summed, and PSS, which
   counts shared pages once), and of the disk its work files and output use (beside the
   corpus).
3. ``parse``: a synthetic CirrusSearch dump (real paragraphs in wikitext with links,
   templates, references, lists and tables) through the builder's ``chunk_batch`` in this
   one process (passages/s per core), the same dump through the passages stage on every
   core, and the driver's dump reader alone (MB/s).

``e5`` needs torch and transformers only; ``bm25`` and ``parse`` also fugashi,
unidic-lite, bm25s and pydantic (the product's tokenizer and corpus code). A part whose
imports are missing is skipped and says so. Results are written after each part.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import multiprocessing
import os
import platform
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.common import machine

ROOT = Path(__file__).resolve().parents[1]
DEMO_PARQUET = ROOT / "pipeline" / "data" / "jsquad-valid-v1.3" / "default" / "train-00000-of-00001.parquet"
JAWIKI_ROWS = 5_555_583
#: Characters of c400 passages at every 5th percentile: the builder's chunker over
#: synthetic pages of the bundled JSQuAD paragraphs (mean 266 characters). Regenerate with
#: ``--print-quantiles`` (tests check that it still matches). The hub's corpus averages
#: about 230 (3,868,482,519 bytes of Arrow for 5,555,583 rows, ~70 bytes of them ids, title
#: and section, ~2.7 bytes a character), so these passages are, if anything, long.
C400_CHAR_QUANTILES = (7, 68, 96, 122, 148, 170, 199, 226, 251, 278, 300, 319, 334, 346, 356, 365, 372, 380, 387, 394,
                       400)  # fmt: skip
HUB_MEAN_CHARS = 230
TITLE_CHARS = 6
#: ``passage: `` and XLM-R's <s> and </s>.
PREFIX_AND_SPECIAL_TOKENS = 5
XLMR_LARGE = {"vocab_size": 250002, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096}  # fmt: skip
XLMR_TINY = {"vocab_size": 250002, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 512}  # fmt: skip


class Report:
    """The result file, rewritten after every part."""

    def __init__(self, path: Path | None, commit: str | None) -> None:
        self.path = path
        where = machine()
        self.data: dict = {"benchmark": "index_build", "gpu": "none", "commit": commit or where["commit"],
                           "date": where["date"], "machine": where}  # fmt: skip

    def add(self, values: dict) -> None:
        self.data.update(values)
        print(json.dumps(values, ensure_ascii=False), flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --- synthetic text -------------------------------------------------------------------------------


def demo_paragraphs() -> list[str]:
    return pq.ParquetFile(DEMO_PARQUET).read(columns=["text"]).column("text").to_pylist()


def synthetic_sections(rng: random.Random, paragraphs: list[str]) -> list[tuple[str, list[str]]]:
    """One page: 1 to 6 sections of 1 to 4 real paragraphs."""
    return [(f"節{i}", [rng.choice(paragraphs) for _ in range(rng.randint(1, 4))]) for i in range(rng.randint(1, 6))]


def c400_lengths(pages: int = 4000, seed: int = 0) -> np.ndarray:
    """Passage lengths from the builder's chunker over synthetic pages."""
    from pipeline.build.chunking import passages

    rng, paragraphs = random.Random(seed), demo_paragraphs()
    return np.array([len(text) for _ in range(pages) for _, text in passages(synthetic_sections(rng, paragraphs))])


def sample_lengths(count: int, rng: np.random.Generator) -> np.ndarray:
    """Characters per passage drawn from :data:`C400_CHAR_QUANTILES`."""
    return np.interp(rng.random(count), np.linspace(0, 1, len(C400_CHAR_QUANTILES)), C400_CHAR_QUANTILES).astype(int)


# --- 1. E5 ----------------------------------------------------------------------------------------


def xlmr(shape: dict, device: str, seed: int = 0):
    """XLM-R (E5's architecture) with random weights, fp16 on a GPU, SDPA attention."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(**shape, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                              pad_token_id=1)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = XLMRobertaModel(config, add_pooling_layer=False)
    return model.to(torch.float16 if device.startswith("cuda") else torch.float32).eval()


def synthetic_ids(char_lengths: np.ndarray, tokens_per_char: float, seed: int) -> list[list[int]]:
    """Token ids of passages of these lengths (title, line break, text), as E5 would see them."""
    rng = np.random.default_rng(seed)
    text_tokens = np.ceil((TITLE_CHARS + 1 + char_lengths) * tokens_per_char).astype(int)
    counts = np.minimum(text_tokens + PREFIX_AND_SPECIAL_TOKENS, 512)
    return [[0, *rng.integers(5, 250000, n - 2).tolist(), 2] for n in counts]


def real_ids(folder: Path, char_lengths: np.ndarray, seed: int) -> list[list[int]]:
    """The real tokenizer's ids of passages of these lengths, cut from the JSQuAD text."""
    from transformers import AutoTokenizer

    text = "".join(demo_paragraphs())
    starts = np.random.default_rng(seed).integers(0, len(text) - 400, len(char_lengths))
    texts = [f"passage: 記事{i}\n{text[s : s + n]}" for i, (s, n) in enumerate(zip(starts, char_lengths, strict=True))]
    return AutoTokenizer.from_pretrained(str(folder))(texts, truncation=True, max_length=512)["input_ids"]


def passage_ids(args: argparse.Namespace, char_lengths: np.ndarray, seed: int) -> list[list[int]]:
    if args.model_folder:
        return real_ids(args.model_folder, char_lengths, seed)
    return synthetic_ids(char_lengths, args.tokens_per_char, seed)


def flops_per_passage(lengths: list[int], shape: dict) -> float:
    """Forward FLOPs of an encoder on passages of these token counts, no padding: the
    matrix products of every layer (2 x 12 h^2 per token) and attention (2 x 2 L h)."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * shape["intermediate_size"]) * layers
    tokens = np.asarray(lengths, dtype=np.float64)
    return float(np.mean(tokens * per_token + 4 * tokens * tokens * hidden * layers))


def _encoder(device: str, shape: dict, folder: str | None, batch_tokens: int, compile: bool):
    from pipeline.build.encode import PassageEncoder
    from pipeline.retrieval.dense.gpu_encoder import PaddedEncoder

    if folder:
        return PassageEncoder.from_folder(Path(folder), device, 512, batch_tokens, compile)
    return PassageEncoder(PaddedEncoder(xlmr(shape, device), None, 512, device, "eager"), 1, batch_tokens, compile)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed_encode(encoder, ids: list[list[int]], device: str) -> float:
    encoder.encode_ids(ids[: max(len(ids) // 20, 8)])  # warm-up: kernels, allocator, compilation
    _sync(device)
    started = time.perf_counter()
    encoder.encode_ids(ids)
    _sync(device)
    return time.perf_counter() - started


def _gpu_worker(rank: int, ids: list[list[int]], options: dict, barrier, results) -> None:
    device = f"cuda:{rank}"
    import torch

    torch.cuda.set_device(device)
    encoder = _encoder(device, **options)
    encoder.encode_ids(ids[: max(len(ids) // 20, 8)])
    _sync(device)
    barrier.wait()
    started = time.perf_counter()
    encoder.encode_ids(ids)
    _sync(device)
    results.put((rank, time.perf_counter() - started))


def two_gpus(ids: list[list[int]], options: dict) -> float:
    """Both halves at once, one process per GPU: seconds until the slower one is done."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    half = len(ids) // 2
    workers = [context.Process(target=_gpu_worker, args=(rank, part, options, barrier, results))
               for rank, part in enumerate((ids[:half], ids[half:]))]  # fmt: skip
    for worker in workers:
        worker.start()
    seconds = max(results.get()[1] for _ in workers)
    for worker in workers:
        worker.join()
    return seconds


def part_e5(args: argparse.Namespace, report: Report) -> None:
    import torch

    cuda = torch.cuda.is_available() and not args.quick
    device = "cuda:0" if cuda else "cpu"
    shape = XLMR_LARGE if cuda else XLMR_TINY
    count = args.e5_passages or (50_000 if cuda else 64)
    chars = sample_lengths(count, np.random.default_rng(0))
    ids = passage_ids(args, chars, 0)
    tokens_from = (
        f"the tokenizer of {args.model_folder}" if args.model_folder else f"{args.tokens_per_char} per character"
    )
    lengths = [len(row) for row in ids]
    flops = flops_per_passage(lengths, shape)
    limit = args.peak_tflops * 1e12 / flops
    model = "real weights" if args.model_folder else "E5-large shape, random weights" if cuda else "tiny XLM-R (CPU)"
    result: dict = {"model": model, "device": torch.cuda.get_device_name(0) if cuda else "cpu", "passages": count,
                    "mean_chars": round(float(chars.mean()), 1), "tokens_from": tokens_from,
                    "mean_tokens": round(float(np.mean(lengths)), 1), "batch_tokens": args.batch_tokens,
                    "gflops_per_passage": round(flops / 1e9, 1), "peak_tflops": args.peak_tflops,
                    "compute_limit_passages_per_s": round(limit)}  # fmt: skip
    if cuda:
        report.data["gpu"] = torch.cuda.get_device_name(0)
    options = {"shape": shape, "folder": str(args.model_folder) if args.model_folder else None,
               "batch_tokens": args.batch_tokens}  # fmt: skip
    rates = {}
    for name, compile in (("eager", False), ("compiled", True)):
        if (compile and not cuda) or name not in args.e5_encoders.split(","):
            continue
        encoder = _encoder(device, **options, compile=compile)
        seconds = timed_encode(encoder, ids, device)
        rate = rates[name] = count / seconds
        result[name] = {"seconds": round(seconds, 2), "passages_per_s": round(rate),
                        "tokens_per_s": round(sum(lengths) / seconds), "achieved_tflops": round(rate * flops / 1e12),
                        "share_of_compute_limit": round(rate / limit, 3)}  # fmt: skip
        del encoder
        if cuda:
            torch.cuda.empty_cache()
    best = max(rates, key=rates.get)
    # The same tokens per second on passages of the hub corpus's mean length.
    per_char = (np.mean(lengths) - PREFIX_AND_SPECIAL_TOKENS) / (chars.mean() + TITLE_CHARS + 1)
    hub_tokens = PREFIX_AND_SPECIAL_TOKENS + (HUB_MEAN_CHARS + TITLE_CHARS + 1) * per_char
    values = {"e5": result, "e5_passages_per_s": round(rates[best]), "e5_encoder": best,
              "e5_passages_per_s_at_hub_mean_length": round(rates[best] * np.mean(lengths) / hub_tokens)}  # fmt: skip
    if cuda and torch.cuda.device_count() >= 2:
        pair = passage_ids(args, sample_lengths(2 * count, np.random.default_rng(1)), 1)
        seconds = two_gpus(pair, {**options, "compile": best == "compiled"})
        values["e5_passages_per_s_2gpu"] = round(2 * count / seconds)
        result["two_gpus"] = {"passages": 2 * count, "seconds": round(seconds, 2),
                              "scaling": round(2 * count / seconds / rates[best], 2)}  # fmt: skip
    report.add(values)


# --- 2. BM25 --------------------------------------------------------------------------------------


def synthetic_title(rng: random.Random) -> str:
    """2 to 6 random kanji and katakana: every page brings new bigrams, as real titles do,
    so that the vocabulary grows with the corpus (the paragraphs alone repeat)."""
    return "".join(chr(rng.choice((rng.randint(0x4E00, 0x9FA5), rng.randint(0x30A1, 0x30F6))))
                   for _ in range(rng.randint(2, 6)))  # fmt: skip


def write_synthetic_shard(item: dict) -> dict:
    """``item["rows"]`` c400 passages of synthetic pages (seeded by the shard) as parquet."""
    import pyarrow as pa

    from pipeline.build.chunking import passages
    from pipeline.retrieval.corpus import PASSAGE_SCHEMA

    rng, paragraphs = random.Random(item["shard"]), demo_paragraphs()
    rows: list[dict] = []
    page = item["shard"] * 10**6
    while len(rows) < item["rows"]:
        page += 1
        title = synthetic_title(rng)
        for section, text in passages(synthetic_sections(rng, paragraphs)):
            rows.append({"id": item["first_id"] + len(rows), "pageid": page, "revid": page, "title": title,
                         "section": section, "text": text})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows[: item["rows"]], schema=PASSAGE_SCHEMA), item["target"])
    return {"shard": item["shard"]}


def _tree(root: int) -> list[int]:
    """``root`` and every process under it."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(parents.get(pid, []))
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process, in KiB; zeros once it is gone."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))  # fmt: skip
        pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                   if line.startswith("Pss:"))  # fmt: skip
    except (OSError, StopIteration):
        return 0, 0
    return rss, pss


def _disk_bytes(folder: Path) -> int:
    """The blocks allocated to the files under ``folder`` (sparse files count what is written)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
    return total


class TreeMemory:
    """The peak of the memory of this process and all its children together, and of the
    disk used under ``folder``, sampled."""

    def __init__(self, folder: Path, every_s: float = 0.25) -> None:
        self.folder = folder
        self.peak_rss = self.peak_pss = self.peak_processes = self.peak_disk = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every_s,), daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            pids = _tree(os.getpid())
            sizes = [_memory_kib(pid) for pid in pids]
            self.peak_rss = max(self.peak_rss, sum(rss for rss, _ in sizes))
            self.peak_pss = max(self.peak_pss, sum(pss for _, pss in sizes))
            self.peak_processes = max(self.peak_processes, len(pids))
            self.peak_disk = max(self.peak_disk, _disk_bytes(self.folder))


def part_bm25(args: argparse.Namespace, report: Report, workdir: Path) -> None:
    from pipeline.build.bm25 import build_bm25
    from pipeline.build.layout import BuildLayout
    from pipeline.build.runner import LocalRunner

    count = args.bm25_passages or (2_000 if args.quick else 1_000_000)
    runner = LocalRunner(args.workers)
    # The builder's 100,000 a shard, or fewer so that every worker has two shards to do.
    shard_size = min(100_000, -(-count // (2 * runner.workers)))
    layout = BuildLayout(workdir / "bm25", "bench", "corpus", "index", "none")
    layout.corpus_dir.mkdir(parents=True)
    try:
        started = time.perf_counter()
        items = [{"shard": n, "rows": min(shard_size, count - start), "first_id": start,
                  "target": str(layout.corpus_dir / f"train-{n:05d}.parquet")}
                 for n, start in enumerate(range(0, count, shard_size))]  # fmt: skip
        list(runner.map(write_synthetic_shard, items))
        generated = time.perf_counter() - started
        runner.close()  # the build's own pool, from a cold start, is part of what is measured
        corpus_bytes = _disk_bytes(layout.corpus_dir)
        with TreeMemory(layout.out) as memory:
            started = time.perf_counter()
            record = build_bm25(layout, runner, None)
            seconds = time.perf_counter() - started
    finally:
        runner.close()
    steps = {name: step["seconds"] for name, step in record["steps"].items()}
    disk = memory.peak_disk - corpus_bytes
    report.add({
        "bm25_passages": count, "bm25_seconds": round(seconds, 1),
        "bm25_peak_rss_gib": round(memory.peak_rss / 2**20, 2),
        "bm25": {"workers": runner.workers, "shard_size": shard_size, "terms": record["terms"],
                 "entries": record["entries"], "step_seconds": steps, "vocabulary_seconds":
                 round(seconds - sum(steps.values()), 1), "peak_pss_gib": round(memory.peak_pss / 2**20, 2),
                 "peak_processes": memory.peak_processes, "peak_disk_gib": round(disk / 2**30, 2),
                 "peak_disk_bytes_per_entry": round(disk / record["entries"], 1),
                 "corpus_generation_seconds": round(generated, 1),
                 "projected_seconds_at_5555583": round(seconds * JAWIKI_ROWS / count)},
    })  # fmt: skip


# --- 3. parsing a dump ----------------------------------------------------------------------------


def page_wikitext(rng: random.Random, sections: list[tuple[str, list[str]]]) -> str:
    """A page of real paragraphs dressed in the markup of a jawiki article."""
    lines = ["{{Infobox 項目\n|名前 = 名前\n|画像 = [[ファイル:画像.jpg|thumb|説明]]\n"
             "|所在地 = {{flagicon|JPN}} [[日本]]\n}}"]  # fmt: skip
    for number, (title, paragraphs) in enumerate(sections):
        if number:
            lines.append(f"== {title} ==")
        for paragraph in paragraphs:
            cut = rng.randrange(len(paragraph))
            lines.append(f"{paragraph[:cut]}[[{paragraph[cut:cut + 2]}|{paragraph[cut:cut + 2]}]]{paragraph[cut + 2:]}"
                         f"<ref>{{{{Cite web|url=https://example.org/{number}|title=出典}}}}</ref>")  # fmt: skip
        lines.append("* 箇条書きの項目\n* [[関連する記事]]")
    lines.append('{| class="wikitable"\n! 年 !! 出来事\n|-\n| 2000 || 出来事\n|}')
    lines.append("== 脚注 ==\n{{Reflist}}\n[[Category:分類]]")
    return "\n\n".join(lines)


def write_dump(path: Path, pages: int, seed: int = 0) -> None:
    rng, paragraphs = random.Random(seed), demo_paragraphs()
    with gzip.open(path, "wt", encoding="utf-8") as dump:
        for page in range(1, pages + 1):
            wikitext = page_wikitext(rng, synthetic_sections(rng, paragraphs))
            document = {"version": page, "namespace": 0, "title": f"記事{page}", "page_id": page,
                        "timestamp": "2099-12-31T00:00:00Z", "source_text": wikitext, "text": wikitext,
                        "opening_text": wikitext[:200], "heading": ["節1"], "incoming_links": 1}  # fmt: skip
            dump.write(json.dumps({"index": {"_id": str(page)}}) + "\n")
            dump.write(json.dumps(document, ensure_ascii=False) + "\n")


def part_parse(args: argparse.Namespace, report: Report, workdir: Path) -> None:
    from pipeline.build.cirrus import DumpReader, chunk_batch
    from pipeline.build.layout import BuildLayout
    from pipeline.build.passages import chunk_dump
    from pipeline.build.runner import LocalRunner

    pages = args.parse_pages or (200 if args.quick else 20_000)
    dump = workdir / "jawiki-20991231-cirrussearch-content.json.gz"
    write_dump(dump, pages)
    reader = DumpReader(dump)
    started = time.perf_counter()
    raw = sum(len(lines) for _, lines in reader.batches(1000))
    read_s = time.perf_counter() - started
    (workdir / "one-core").mkdir()
    cpu, wall, passages = time.process_time(), time.perf_counter(), 0
    for number, lines in DumpReader(dump).batches(1000):
        target = str(workdir / "one-core" / f"{number}.parquet")
        passages += chunk_batch({"batch": number, "lines": lines, "target": target})["passages"]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    runner = LocalRunner(args.workers)
    try:
        started = time.perf_counter()
        chunk_dump(BuildLayout(workdir / "all-cores", "bench", "corpus", "index", "none"), dump, runner, 1000, None)
        all_cores = time.perf_counter() - started
    finally:
        runner.close()
    report.add({
        "parse_passages_per_s_per_core": round(passages / cpu),
        "parse": {"pages": pages, "passages": passages, "dump_mib": round(dump.stat().st_size / 2**20, 1),
                  "uncompressed_mib": round(raw / 2**20, 1), "one_core_cpu_seconds": round(cpu, 2),
                  "one_core_wall_seconds": round(wall, 2), "workers": runner.workers,
                  "all_cores_seconds": round(all_cores, 2), "all_cores_passages_per_s": round(passages / all_cores),
                  "reader_uncompressed_mib_per_s": round(raw / 2**20 / read_s, 1),
                  "reader_passages_per_s_bound": round(passages / read_s)},
    })  # fmt: skip


PARTS = ("e5", "bm25", "parse")
#: What each part imports beyond torch and numpy.
NEEDS = {"e5": ("transformers",), "bm25": ("fugashi", "unidic_lite", "bm25s", "pydantic"),
         "parse": ("fugashi", "unidic_lite", "pydantic")}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.index_build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON results (bench/results/index_build.json on the GPU host)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a tiny model on the CPU")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--commit", help="the commit measured (default: BENCH_COMMIT, else git rev-parse)")
    parser.add_argument("--e5-passages", type=int, help="passages per GPU (default 50,000)")
    parser.add_argument("--batch-tokens", type=int, default=65536, help="padded tokens per encoder batch")
    parser.add_argument("--e5-encoders", default="eager,compiled", help="which encoders to time (eager, compiled)")
    parser.add_argument("--tokens-per-char", type=float, default=0.6, help="XLM-R tokens per Japanese character")
    parser.add_argument("--model-folder", type=Path, help="E5's own folder: real weights and tokenizer")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the card's dense fp16/bf16 TFLOP/s")
    parser.add_argument("--bm25-passages", type=int, help="default 1,000,000 (5,555,583 for the full corpus)")
    parser.add_argument("--parse-pages", type=int, help="pages of the synthetic dump (default 20,000)")
    parser.add_argument("--workers", type=int, help="processes for bm25 and parse (default: all cores)")
    parser.add_argument("--print-quantiles", action="store_true", help="recompute C400_CHAR_QUANTILES and exit")
    args = parser.parse_args(argv)
    if args.print_quantiles:
        lengths = c400_lengths()
        print(tuple(int(q) for q in np.percentile(lengths, np.arange(0, 101, 5))), f"mean {lengths.mean():.1f}")
        return {}
    report = Report(args.out, args.commit)
    report.data["python"] = platform.python_version()
    with tempfile.TemporaryDirectory(prefix="bench-index-build-") as folder:
        for part in (p for p in args.parts.split(",") if p):
            missing = [name for name in NEEDS[part] if not _importable(name)]
            if missing:
                report.add({f"{part}_skipped": f"not installed here: {', '.join(missing)}"})
                continue
            workdir = Path(folder) / part
            workdir.mkdir()
            if part == "e5":
                part_e5(args, report)
            elif part == "bm25":
                part_bm25(args, report, workdir)
            else:
                part_parse(args, report, workdir)
    return report.data


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
