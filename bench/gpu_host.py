"""The whole product on a GPU host, as a user runs it, measured beside vLLM alone.

    python -m bench.gpu_host prepare ROOT --jsquad PATH --dummy-llm-script PATH
    python -m bench.gpu_host measure ROOT --out OUT.json [--configs bf16,fp8,tp2] [--users 1,8,32,64]
    python -m bench.gpu_host diagnose-kv ROOT --out OUT.json

``prepare`` writes a hub mirror laid out like the real repos, at full size but without
the hub: 5,555,583 passages in the wikipedia-utils layout (text drawn from JSQuAD
sentences, so prompts have the real length), 5,555,583 random unit fp16 vectors as
numbered ``.npz`` files under ``embs/…/multilingual-e5-large-passage``, an E5-large-shaped
encoder (XLM-R large, random weights) at ``intfloat/multilingual-e5-large``, and
ELYZA-13B's exact shape at ``elyza/ELYZA-japanese-Llama-2-13b-instruct`` (config and
tokenizer from ``make_dummy_llama13b.py``; served with ``--load-format dummy``).

``measure`` serves ``pipeline.api`` (the app's own FastAPI app under uvicorn) with the
``jawiki`` profile, the ``exact`` backend and the ``local`` LLM backend, so the vLLM
child, E5 and the 10.6 GiB vector matrix share GPU 0. For each engine configuration it
measures, in the same run, the product through the OpenAI endpoint (streaming; TTFT =
question sent → first answer token) and vLLM alone (the prompts the product builds for
the same questions, by its own code, sent straight to the engine's /v1/completions),
each from an emptied prefix cache, at 1, 8, 32 and 64 concurrent users (``--users``)
whose first requests leave together; in the configurations named by ``--textbook``, also
the textbook LlamaIndex pipeline of ``bench.textbook``. Each level keeps every request's
timeline (when it was sent, its TTFT and the product's steps, from which its arrival at
the engine follows) and the share of prompt tokens the engine found in its prefix cache,
and, where py-spy is installed, where the API process's threads spent their time during
the product's level (``cpu_profile``). The engine runs with ``VLLM_SERVER_DEV_MODE=1``
for the cache's reset (on loopback, in this benchmark only). A new configuration is
applied the way the settings page applies it: the supervisor restarts the engine. While
the first engine runs it checks the start-up failure diagnosis against the real engine
(a second engine, too little free memory); ``diagnose-kv`` checks the other one (too
little KV cache for the context length) on a card of its own. Results are written after
every step, with the stage the run is in.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import cpu_seconds, machine

CONFIG = "passages-c400-jawiki-20230403"
CORPUS_REPO = "singletongue/wikipedia-utils"
INDEX_REPO = "hotchpotch/wikipedia-passages-jawiki-embeddings"
EMBEDDINGS_DIR = f"embs/{CONFIG}/multilingual-e5-large-passage"
E5_REPO = "intfloat/multilingual-e5-large"
LLM_REPO = "elyza/ELYZA-japanese-Llama-2-13b-instruct"
ROWS = 5_555_583
DIMENSION = 1024
#: "cpu" with fewer --rows only to check this script on a machine without a GPU.
DEVICE = "cuda"
#: Rows per .npz file (the hub's files are numbered chunks in corpus order).
ROWS_PER_FILE = 100_000
ANSWER_TOKENS = 256
#: The numbers of concurrent users measured (measure's --users: fewer where device time is short).
USERS = (1, 8, 32, 64)
#: Requests per user at each level: enough samples for a median, in little device time.
#: Two runs of one commit on one H100 (2026-12-06, 2 rounds at 8 users) put the product's
#: p50 at x1.18 and x0.92 of vLLM alone's: 16 requests were too few at 8 users.
ROUNDS = {1: 8, 8: 4, 32: 3, 64: 2}
CONFIGS = {
    "bf16": {},
    "fp8": {"llm.quantization": "fp8", "llm.kv_cache_dtype": "fp8"},
    "tp2": {"llm.tensor_parallel_size": 2},
}


# -- prepare -------------------------------------------------------------------------------


def jsquad_texts(jsquad: Path) -> tuple[list[str], list[str]]:
    """(paragraph sentences regrouped into ~230-character passages, questions)."""
    from pipeline.evaluation.squad import read_squad
    from pipeline.text.sentences import sentence_spans

    corpus = read_squad([jsquad], [True])
    sentences = [p["text"][a:b] for p in corpus.passages for a, b in sentence_spans(p["text"])]
    rng = np.random.default_rng(0)
    passages = []
    for _ in range(20_000):
        text = ""
        while len(text) < 230:
            text += sentences[int(rng.integers(len(sentences)))]
        passages.append(text)
    return passages, [q.text for q in corpus.questions]


def write_corpus(mirror: Path, pool: list[str], rows: int, shard_rows: int = 500_000) -> None:
    import pyarrow as pa

    from pipeline.retrieval.corpus import PASSAGE_SCHEMA, write_corpus_repo

    texts = pa.array(pool)
    rng = np.random.default_rng(1)

    def shard(start: int, rows: int) -> pa.Table:
        ids = np.arange(start, start + rows)
        return pa.table({
            "id": ids, "pageid": ids // 30 + 1, "revid": ids // 30 + 90_000_000,
            "title": pa.array([f"記事{p}" for p in (ids // 30).tolist()]),
            "section": pa.array(["__LEAD__" if i % 30 == 0 else "概要" for i in ids.tolist()]),
            "text": texts.take(pa.array(rng.integers(0, len(pool), rows))),
        }, schema=PASSAGE_SCHEMA)  # fmt: skip

    shards = (shard(start, min(shard_rows, rows - start)) for start in range(0, rows, shard_rows))
    write_corpus_repo(mirror / CORPUS_REPO, CONFIG, shards)


def write_vectors(mirror: Path, total: int) -> None:
    """Random unit vectors, made on the GPU, saved as float16 ``embs`` arrays."""
    import torch

    folder = mirror / INDEX_REPO / EMBEDDINGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    for number, start in enumerate(range(0, total, ROWS_PER_FILE)):
        rows = min(ROWS_PER_FILE, total - start)
        vectors = torch.randn((rows, DIMENSION), device=DEVICE, generator=generator)
        vectors = torch.nn.functional.normalize(vectors, dim=1).half().cpu().numpy()
        np.savez(folder / f"{number}.npz", embs=vectors)


def write_encoder(mirror: Path, tokenizer_dir: Path) -> None:
    """XLM-R large in E5's layout (sentence-transformers, mean pooling), random weights;
    its tokenizer is the dummy LLM's (E5's is not available offline: only the shapes of
    the weights matter here)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder = mirror / E5_REPO
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1,
                              pad_token_id=1)  # fmt: skip
    with torch.device(DEVICE):
        model = XLMRobertaModel(config, add_pooling_layer=False).half()
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    files = {
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                  "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                                  "model_max_length": 512},
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                         {"idx": 2, "name": "2", "path": "2_Normalize",
                          "type": "sentence_transformers.models.Normalize"}],
        "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": 1024, "pooling_mode_mean_tokens": True},
    }  # fmt: skip
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")


def prepare(root: Path, jsquad: Path, dummy_llm_script: Path, rows: int) -> dict:
    mirror = root / "mirror"
    timings = {}
    started = time.perf_counter()
    llm = mirror / LLM_REPO
    subprocess.run([sys.executable, str(dummy_llm_script), str(llm), str(jsquad)], check=True, capture_output=True)
    pool, questions = jsquad_texts(jsquad)
    (root / "questions.json").write_text(json.dumps(questions, ensure_ascii=False), encoding="utf-8")
    timings["llm_and_texts_s"] = round(time.perf_counter() - started, 1)
    for name, step in (("corpus_s", lambda: write_corpus(mirror, pool, rows)),
                       ("vectors_s", lambda: write_vectors(mirror, rows)),
                       ("encoder_s", lambda: write_encoder(mirror, llm))):  # fmt: skip
        started = time.perf_counter()
        step()
        timings[name] = round(time.perf_counter() - started, 1)
    return timings


# -- load generation (a separate process, so that clients and server share no GIL) ------


def stream_request(client, kind: str, url: str, payload: dict) -> dict:
    """One streamed request: TTFT (first non-empty answer text), tokens and decode time;
    for the product also its own step timings (retrieval, prompt, the engine's TTFT as the
    product saw it), to split what it adds to the engine's TTFT. ``client`` is the user's
    own ``httpx.Client``: a new one per request would time its TLS set-up (~25 ms) too."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    steps: dict[str, float] = {}
    path = "/v1/chat/completions" if kind == "product" else "/v1/completions"
    with client.stream("POST", url + path, json=payload, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            text = (choices[0].get("delta", {}).get("content") if kind == "product" else choices[0].get("text")) \
                if choices else None  # fmt: skip
            if text:
                last = time.perf_counter()
                first = first or last
            if kind == "product" and choices and choices[0].get("finish_reason"):
                steps = event["rag"]["timings"]
                tokens = int(steps.get("completion_tokens", 0))
            if kind == "alone" and event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    decode = (last - first) if first and last else 0.0
    return {"ttft_ms": (first - started) * 1000 if first else None, "tokens": tokens, "decode_s": decode,
            "tok_s": (tokens - 1) / decode if decode > 0 and tokens > 1 else None, "steps": steps}  # fmt: skip


def run_users(items: list, users: int, send: Callable[[Any, Any], dict], session: Callable[[], Any]) -> dict:
    """``users`` concurrent users, each with its own ``session()`` (an HTTP client, or the
    textbook's engine) sending its share of ``items`` one after another with ``send``,
    which returns what :func:`stream_request` returns; their TTFT, rates and steps.

    Every user opens its session before the clock starts, and the first requests leave
    together: on an H100 (2026-12-05) users that opened their httpx clients one thread
    after another sent their first requests over 0.25–0.45 s at 32 users and 0.5–1.1 s at
    64, so a level measured a ramp whose slope was the load generator's, not a burst.

    A request that fails is counted (``failed``, ``first_failure``) and its user goes on:
    on an H100 (2026-12-06) 40 of the textbook's 64 requests at 64 users failed, each
    ending its user's thread, and the level reported the 24 left as if they were all."""
    results: list[dict] = []
    lock = threading.Lock()
    clock: list[float] = []
    opened_all = threading.Barrier(users + 1, action=lambda: clock.append(time.perf_counter()))

    def user(mine: list) -> None:
        passed = False
        try:
            with session() as opened:
                opened_all.wait(timeout=300)
                passed = True
                for round_number, item in enumerate(mine, start=1):
                    sent = time.perf_counter()
                    try:
                        result = send(opened, item)
                    except Exception as exc:  # counted; the user goes on with its next item
                        result = {"failure": repr(exc)}
                    result["sent_ms"], result["round"] = (sent - clock[0]) * 1000, round_number
                    with lock:
                        results.append(result)
        except BaseException:
            if not passed:  # the others, and the caller, stop waiting for this user
                opened_all.abort()
            raise

    threads = [threading.Thread(target=user, args=(items[i::users],)) for i in range(users)]
    for thread in threads:
        thread.start()
    try:
        opened_all.wait(timeout=300)  # BrokenBarrierError where a user could not open its session
    except BaseException:
        opened_all.abort()  # an interrupted caller: no user waits on for the others
        raise
    finally:
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - clock[0]
    rounds = by_round(results)
    failures = [r["failure"] for r in results if "failure" in r]
    results = [r for r in results if "failure" not in r]
    ttfts = [r["ttft_ms"] for r in results if r["ttft_ms"] is not None]
    rates = [r["tok_s"] for r in results if r["tok_s"] is not None]
    step_names = sorted({name for r in results for name in r["steps"]} - {"completion_tokens", "tokens_per_s"})
    steps = {name: round(statistics.median(r["steps"][name] for r in results if name in r["steps"]), 2)
             for name in step_names}  # fmt: skip
    return {
        "requests": len(results),
        **({"failed": len(failures), "first_failure": failures[0][-500:]} if failures else {}),
        "ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else None,
        "ttft_p90_ms": round(float(np.percentile(ttfts, 90)), 1) if ttfts else None,
        "ttft_p99_ms": round(float(np.percentile(ttfts, 99)), 1) if ttfts else None,
        "tok_s_per_stream_p50": round(statistics.median(rates), 1) if rates else None,
        "total_tok_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "tokens_per_request_p50": statistics.median(r["tokens"] for r in results),
        "wall_s": round(wall, 2),
        **({"product_steps_p50_ms": steps} if steps else {}),
        "by_round": rounds,
        "timeline": timeline(results),
    }


def by_round(results: list[dict]) -> list[dict]:
    """Each round's requests (every user's n-th), how many of them failed, the TTFT p50
    of the others and over how long all were sent. Only the first round leaves together
    for every variant: a user sends its next request when its answer ends, so the later
    rounds arrive as spread out as the variant's own answers ended. On an H100
    (2026-12-06, 8 users) the textbook's second round was sent over 205-260 ms, the
    product's and vLLM alone's over 11-23 ms, and the textbook's p50 over both rounds was
    the product's or better while its first round's was 1.6-1.8 times the product's: here
    the variants are compared on equal arrivals."""
    rounds: dict[int, list[dict]] = {}
    for result in results:
        rounds.setdefault(result["round"], []).append(result)
    summary = []
    for number, members in sorted(rounds.items()):
        answered = [r for r in members if "failure" not in r]
        ttfts = [r["ttft_ms"] for r in answered if r["ttft_ms"] is not None]
        sent = [r["sent_ms"] for r in members]
        summary.append({"round": number, "requests": len(answered), "failed": len(members) - len(answered),
                        "ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else None,
                        "sent_over_ms": round(max(sent) - min(sent), 1)})  # fmt: skip
    return summary


#: The product's steps kept per request in a level's timeline (ms).
TIMELINE_STEPS = ("queue", "embed", "search", "prepare", "handoff", "ttft", "relay")


def timeline(results: list[dict]) -> list[dict]:
    """Each request of a level in the order sent: when it was sent (ms from the level's
    start), its TTFT and the product's own steps, which say when it reached the engine;
    the medians alone hid whether a burst's questions reached it together."""
    return [
        {"sent_ms": round(r["sent_ms"], 1), "ttft_ms": r["ttft_ms"] and round(r["ttft_ms"], 1),
         **{name: round(r["steps"][name], 1) for name in TIMELINE_STEPS if name in r["steps"]}}
        for r in sorted(results, key=lambda r: r["sent_ms"])
    ]  # fmt: skip


def run_load(kind: str, url: str, payloads: list[dict], users: int) -> dict:
    """HTTP users of the product or of vLLM alone, each keeping one client as an OpenAI
    SDK client does."""
    import httpx

    return run_users(payloads, users, lambda client, payload: stream_request(client, kind, url, payload), httpx.Client)


def load_main(args: argparse.Namespace) -> None:
    payloads = json.loads(Path(args.payloads).read_text(encoding="utf-8"))
    print(json.dumps(run_load(args.kind, args.url, payloads, args.users)))


def measured_load(kind: str, url: str, payloads: list[dict], users: int, scratch: Path) -> dict:
    scratch.write_text(json.dumps(payloads, ensure_ascii=False), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "bench.gpu_host", "load", "--kind", kind, "--url", url,
                          "--users", str(users), "--payloads", str(scratch)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(run.stdout.strip().splitlines()[-1])


# -- where the API's time goes ---------------------------------------------------------------

#: Stack tops that are waits: py-spy takes a thread blocked in them for one that runs.
WAITS = ("EpollSelector.select", "Condition.wait", "Event.wait", "Lock.acquire", "Queue.get", "SyncStream.read",
         "_wait_for_tstate_lock", "socket.recv")  # fmt: skip


@contextmanager
def sampled_stacks(pid: int, raw: Path) -> Iterator[dict]:
    """py-spy sampling the thread of ``pid`` that holds the GIL (200 a second, without
    pausing it) while the block runs; the yielded dict then holds :func:`stacks_summary`,
    or why there is none. On the H100 the API process used 0.36 cores at 32 users, CUDA's
    spin-waits included, and a burst's requests waited for each other's CPU time under its
    GIL: this says whose time that was. Sampling every thread instead counts the threads
    that wait for the GIL where they wait (a self-pipe write took 19 % of such samples on
    the dev machine and 4.5 % of the GIL's)."""
    found: dict = {}
    # on PATH, or beside this interpreter (a virtual environment's scripts, not activated)
    program = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if program is None:
        found["error"] = "py-spy is not installed"
        yield found
        return
    command = [program, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(raw),
               "--nonblocking", "--gil"]  # fmt: skip
    raw.unlink(missing_ok=True)
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield found
    finally:
        spy.send_signal(signal.SIGINT)  # it writes what it sampled, then exits
        try:
            _, errors = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, errors = spy.communicate()
        if raw.exists():
            found.update(stacks_summary(raw.read_text(encoding="utf-8")))
        else:
            found["error"] = f"py-spy wrote nothing: {errors.strip()[-500:]}"


def stacks_summary(raw: str, top: int = 30) -> dict:
    """py-spy's raw stacks (``frame;frame;… count`` a line), waits left out: the share of
    samples in which each function ran, itself or below (``inclusive``: once a stack), and
    at the stack's top (``own``)."""
    inclusive: Counter = Counter()
    own: Counter = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(WAITS):
            continue
        samples += int(count)
        own[frames[-1]] += int(count)
        for function in {frame.split(" (", 1)[0] for frame in frames}:
            inclusive[function] += int(count)

    def shares(counts: Counter) -> list[dict]:
        return [{"function": name, "share": round(n / samples, 4)} for name, n in counts.most_common(top)]

    return {"samples": samples, "inclusive": shares(inclusive), "own": shares(own)} if samples else {"samples": 0}


# -- measure -------------------------------------------------------------------------------


class Product:
    """``pipeline.api`` (the app's FastAPI app) under uvicorn in this process: the engine
    can then be restarted with new settings through the same supervisor the app uses."""

    def __init__(self, settings, port: int) -> None:
        import uvicorn

        from pipeline.api.app import create_app

        self.app = create_app(settings)
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    @property
    def rag(self):
        return self.app.state.api.rag

    @property
    def runtime(self):
        return self.app.state.api.runtime

    def wait_loaded(self, timeout_s: float = 1800) -> None:
        deadline = time.monotonic() + timeout_s
        while self.app.state.api.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.5)
        if self.rag is None:
            raise RuntimeError(f"the API did not load: {self.app.state.api.error}")

    def stop(self) -> None:
        self.runtime.close()
        self.server.should_exit = True
        self.thread.join(30)


def nvidia_smi(*query: str) -> list[str]:
    """nvidia-smi's CSV lines for ``query`` ([] without nvidia-smi)."""
    try:
        run = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader"], capture_output=True, text=True)
    except FileNotFoundError:
        return []
    return run.stdout.strip().splitlines()


def gpu_snapshot() -> list[str]:
    """nvidia-smi's memory line per GPU ([] without one)."""
    return nvidia_smi("--query-gpu=index,name,memory.used,memory.total")


def mps_daemon() -> bool:
    """Whether an NVIDIA MPS control daemon runs for this process's pipe directory (its
    pid file there names a live process): CUDA processes started now share the card
    through it."""
    pid_file = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")) / "nvidia-cuda-mps-control.pid"
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except PermissionError:  # alive, another user's (root's) daemon
        return True
    except (OSError, ValueError):
        return False
    return True


def gpu_processes() -> list[str]:
    """One line per process holding GPU memory, with its command line where this process
    can read it: on the H200 (2026-12-05) ~9.5 GiB were in use by no process of the run
    that should have held any, and the card's total could not say whose. The PIDs are
    nvidia-smi's; in a container they can be the host's, and the command line then "?"."""
    holders = []
    for line in nvidia_smi("--query-compute-apps=pid,used_memory"):
        pid = line.split(",")[0].strip()
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        except (OSError, ValueError):
            command = "?"
        holders.append(f"{line}, {command.strip()}")
    return holders


def alone_payloads(rag, settings, questions: list[str]) -> list[dict]:
    """vLLM-alone requests: the prompt the product builds for each question (its own code),
    with the sampling values the product sends."""
    from pipeline.generation.budget import fit_request
    from pipeline.generation.llm import request_kwargs
    from pipeline.generation.prompt_formats import PromptFormat

    payloads = []
    for question in questions:
        sources = rag.retrieval.search(question, settings).hits
        fitted = fit_request(question, sources, [], settings, PromptFormat("llama2", rag.token_counter))
        kwargs = request_kwargs(settings, ANSWER_TOKENS)
        payloads.append({"model": settings.llm.model, "prompt": fitted.prompt, "stream": True,
                         "stream_options": {"include_usage": True}, **{k: v for k, v in kwargs.items()
                                                                        if k != "extra_body"},
                         **kwargs["extra_body"]})  # fmt: skip
    return payloads


def product_payloads(questions: list[str]) -> list[dict]:
    return [{"model": "jawiki-rag", "stream": True, "messages": [{"role": "user", "content": q}],
             "rag_settings": {"generation.max_new_tokens": ANSWER_TOKENS}} for q in questions]  # fmt: skip


def measure_config(
    product: Product,
    settings,
    questions: Iterator[str],
    scratch: Path,
    result: dict,
    save: Callable[[], None],
    textbook: bool = False,
    last: bool = False,
) -> None:
    """Product and vLLM alone at each number of users, the same engine, one after the
    other (each first every other level), into ``result`` (saved after each level), then
    with ``textbook`` the textbook LlamaIndex pipeline (bench.textbook) at each level on
    the same engine. In the ``last`` configuration, the product's retrieval lets go of
    the card before the textbook runs, which then has the card as the product had it,
    beside the engine alone (in an earlier one the product still holds it, and
    ``gpu_before_textbook`` says so): on an H100 (2026-12-06, 05:53) the API process
    still held its encoder, index and cached blocks, and 28 of the textbook's 64
    requests at 32 users and 43 of 64 at 64 failed for want of GPU memory.

    Product and vLLM alone ask the level's same new questions, so vLLM alone gets the
    prompts the product builds, each from an emptied prefix cache
    (:func:`reset_prefix_cache`) into which one untimed request for another question, on
    the variant's own path, then puts the system prompt back: the one that runs later no
    longer finds what the other's prompts left there (FP8 at one user on an H100,
    2026-12-05 17:09, with new questions each: 29 % of the prompt tokens hit for the
    variant that ran first, 52 % and 45 % for the two after it). What the cache found
    within a level is recorded."""
    engine_url = product.rag.backend.base_url.removesuffix("/v1")

    def batch(count: int) -> list[str]:
        return [next(questions) for _ in range(count)]

    measured_load("product", product.url, product_payloads(batch(2)), 1, scratch)  # warm-up
    measured_load("alone", engine_url, alone_payloads(product.rag, settings, batch(2)), 1, scratch)
    result.update(product={}, vllm_alone={})
    result["prompt_tokens_p50"] = statistics.median(
        product.rag.token_counter.count(p["prompt"]) for p in alone_payloads(product.rag, settings, batch(5))
    )

    def level(key: str, users: int, asked: list[str], alone: list[dict], warm: str) -> dict:
        """One level of one of the two, from an emptied prefix cache that then holds the
        prompt of the question ``warm``: the system prompt, as a serving host always has it
        cached. That first request goes through the variant's own path, untimed: the first
        measured after a reset was the slower in the engine's TTFT at one user (H100,
        2026-12-05 18:36: by 3 ms in FP8, 10 in bf16)."""
        reset = reset_prefix_cache(engine_url)
        if key == "vllm_alone":
            warmed = first_token(engine_url, alone_payloads(product.rag, settings, [warm])[0])
            emptied = {"prefix_cache_reset": reset, "warmed": warmed}
            return engine_level("alone", engine_url, alone, users, scratch, engine_url) | emptied
        emptied = {"prefix_cache_reset": reset, "warmed": product_first_token(product.url, warm)}
        cpu_before, started = cpu_seconds(os.getpid()), time.perf_counter()
        with sampled_stacks(os.getpid(), scratch.with_name(f"stacks_{users}.txt")) as stacks:
            measured = engine_level("product", product.url, product_payloads(asked), users, scratch, engine_url)
        # This process is the API (uvicorn in a thread): its cores busy over the level.
        busy = (cpu_seconds(os.getpid()) - cpu_before) / (time.perf_counter() - started)
        return measured | {"api_process_cores": round(busy, 2), "cpu_profile": stacks} | emptied

    for index, users in enumerate(USERS):
        asked = batch(users * ROUNDS[users])
        alone = alone_payloads(product.rag, settings, asked)  # their retrieval here, outside the clock
        warm = next(questions)
        for key in ("vllm_alone", "product")[:: 1 if index % 2 == 0 else -1]:
            result[key][f"users_{users}"] = level(key, users, asked, alone, warm)
            save()
    if textbook:
        asked = batch(3 + sum(users * ROUNDS[users] for users in USERS))
        if last:
            product.rag.retrieval.release(["embedding", "vectors", "reranker"])
        result["gpu_before_textbook"] = {"product_retrieval_released": last, "gpu": gpu_snapshot()}
        try:
            result["textbook"] = measured_textbook(product, settings, engine_url, asked, scratch)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:  # its own, not the engine's
            result["textbook"] = {"error": f"{exc}\n{exc.stderr or ''}"[-3000:]}
        save()


def engine_level(kind: str, url: str, payloads: list[dict], users: int, scratch: Path, engine_url: str) -> dict:
    """:func:`measured_load`, with the share of prompt tokens that the engine found in its
    prefix cache over the level: beyond the system prompt, questions that retrieved the
    same passages share them (often, with synthetic vectors and a random E5)."""
    before = engine_prefix_cache(engine_url)
    level = measured_load(kind, url, payloads, users, scratch)
    after = engine_prefix_cache(engine_url)
    if before and after and after["queried"] > before["queried"]:
        share = (after["hit"] - before["hit"]) / (after["queried"] - before["queried"])
        level["prefix_cache_hit_share"] = round(share, 3)
    return level


def unstreamed(payload: dict) -> dict:
    """A streamed completion request, not streamed: without ``stream_options``, which vLLM
    refuses on a request that does not stream."""
    return {key: value for key, value in payload.items() if key != "stream_options"} | {"stream": False}


def answered(url: str, payload: dict) -> bool:
    """Whether ``payload`` posted to ``url`` was answered (200)."""
    import httpx

    try:
        return httpx.post(url, json=payload, timeout=120).status_code == 200
    except httpx.HTTPError:
        return False


def first_token(engine_url: str, payload: dict) -> bool:
    """``payload`` (a vLLM-alone request) answered with one token, not streamed; whether
    the engine answered."""
    return answered(f"{engine_url}/v1/completions", unstreamed(payload) | {"max_tokens": 1})


def product_first_token(url: str, question: str) -> bool:
    """``question`` answered by the product with one token, not streamed; whether it
    answered."""
    one_token = {"stream": False, "rag_settings": {"generation.max_new_tokens": 1}}
    return answered(f"{url}/v1/chat/completions", product_payloads([question])[0] | one_token)


def reset_prefix_cache(engine_url: str) -> bool:
    """Empties the engine's prefix cache (vLLM's ``POST /reset_prefix_cache``, served when
    the engine runs with ``VLLM_SERVER_DEV_MODE=1``, as :func:`measure` starts it); False
    where the engine has no such endpoint or says it still holds blocks. vLLM 0.26 answers
    ``{"success": bool}``; earlier versions an empty 200 once done."""
    import httpx

    try:
        response = httpx.post(f"{engine_url}/reset_prefix_cache", timeout=30)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    try:
        return bool(response.json().get("success", True))
    except ValueError:
        return True


def engine_prefix_cache(engine_url: str) -> dict[str, float] | None:
    """The engine's prefix-cache counters from its /metrics (None where it has none)."""
    import httpx

    try:
        response = httpx.get(f"{engine_url}/metrics", timeout=10)
        return prefix_cache_tokens(response.text) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):  # unreachable, or a page that is not an exposition
        return None


def prefix_cache_tokens(exposition: str) -> dict[str, float] | None:
    """Prompt tokens vLLM looked up in its prefix cache and found there, summed over its
    engines (``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits``, counters)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {"vllm:prefix_cache_queries": "queried", "vllm:prefix_cache_hits": "hit"}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            key = names.get(sample.name.removesuffix("_total"))
            if key is not None:
                found[key] = found.get(key, 0.0) + sample.value
    return found if len(found) == len(names) else None


def measured_textbook(product: Product, settings, engine_url: str, questions: list[str], scratch: Path) -> dict:
    """bench.textbook in a process of its own against the product's engine; its prompt's
    length counted by the product's own counter, beside ``prompt_tokens_p50``."""
    scratch.write_text(json.dumps(questions, ensure_ascii=False), encoding="utf-8")
    out = scratch.with_name("textbook.json")
    subprocess.run([sys.executable, "-m", "bench.textbook", str(scratch.parent / "mirror"), "--engine-url", engine_url,
                    "--model", settings.llm.model, "--questions", str(scratch), "--top-k",
                    str(settings.retrieval.top_k), "--users", ",".join(map(str, USERS)), "--device", DEVICE,
                    "--out", str(out)], capture_output=True, text=True, check=True, timeout=1800)  # fmt: skip
    result = json.loads(out.read_text(encoding="utf-8"))
    result["prompt_tokens"] = product.rag.token_counter.count(result.pop("sample_prompt"))
    return result


#: Questions asked at once by :func:`retrieval_burst`, and its rounds of each.
BURST_SIZES = (1, 8, 32, 64)
BURST_ROUNDS = 3


def retrieval_burst(retrieval, settings, questions: Iterator[str]) -> dict:
    """A burst's retrieval in this process with the engine idle: ``size`` questions at once
    as requests retrieve them (a thread each, released together, each its own
    ``retrieval.search``), against as many other questions encoded in one call and
    searched in one call, the floor of a retrieval step that would take a burst at once.
    On an H100 (2026-12-05, 18:36) 28 of 32 questions that the product prepared before the
    engine had any took 65-178 ms, one alone 17 ms: this tells the product's own
    serialization from the card's sharing with the engine. A search that fails is counted,
    not fatal: the run's levels come after this.

    Two more readings tell where a burst's time goes: each request thread's own CPU time
    (``cpu_ms``: Python, and C code that runs on the thread), and one question's encoding
    and scan in the calling thread while 8 or 32 other threads each run
    :data:`BUSY_PYTHON_MS` of pure Python (``step_beside_busy_threads``): the GIL's share
    that the GPU steps' threads get in a burst. ``as_requests_switch_0_5ms`` repeats the
    burst with the interpreter's switch interval at 0.5 ms instead of 5."""
    from pipeline.settings.sources import with_retrieval

    settings = with_retrieval(settings, mode="dense")  # what the one call does: E5 and the scan
    searcher = retrieval.vector_index.vector_store.client
    top_k = settings.retrieval.top_k

    def as_requests(asked: list[str]) -> list[dict]:
        released = threading.Barrier(len(asked))
        done: list[dict] = [{} for _ in asked]

        def one(index: int) -> None:
            released.wait()
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                found = retrieval.search(asked[index], settings)
            except Exception as exc:  # counted in the result
                done[index] = {"error": repr(exc)}
                return
            done[index] = {"ms": (time.perf_counter() - started) * 1000.0,
                           "cpu_ms": (time.thread_time() - cpu_started) * 1000.0, **found.timings}  # fmt: skip

        threads = [threading.Thread(target=one, args=(index,)) for index in range(len(asked))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return done

    def in_one_call(asked: list[str]) -> dict:
        started = time.perf_counter()
        vectors = retrieval.embedding.model.encode_queries(asked)
        encoded = time.perf_counter()
        searcher.search(vectors, top_k)
        return {"embed": (encoded - started) * 1000.0, "search": (time.perf_counter() - encoded) * 1000.0}

    def beside_busy_threads(busy: int) -> float:
        """ms of one question's encoding and scan while ``busy`` threads run pure Python."""
        released = threading.Barrier(busy + 1)

        def busy_thread() -> None:
            released.wait()
            spin(spins)

        threads = [threading.Thread(target=busy_thread) for _ in range(busy)]
        for thread in threads:
            thread.start()
        released.wait()
        timed = in_one_call([next(questions)])
        for thread in threads:
            thread.join()
        return timed["embed"] + timed["search"]

    def p50(rows: list[dict], key: str) -> float:
        return round(statistics.median(row[key] for row in rows if key in row), 2)

    def summary(requests: list[list[dict]]) -> dict:
        each = [row for burst in requests for row in burst if "ms" in row]
        errors = [row["error"] for burst in requests for row in burst if "error" in row]
        if errors:
            return {"errors": len(errors), "first_error": errors[0]}
        return {"all_done_ms_p50": round(statistics.median(max(r["ms"] for r in b) for b in requests), 2),
                "request_ms_p50": p50(each, "ms"), "cpu_ms_p50": p50(each, "cpu_ms"),
                "burst_cpu_ms_p50": round(statistics.median(sum(r["cpu_ms"] for r in b) for b in requests), 2),
                **{f"{step}_ms_p50": p50(each, step) for step in ("embed", "search", "fetch")}}  # fmt: skip

    spins = busy_loop_count(BUSY_PYTHON_MS)
    result: dict = {"top_k": top_k, "rounds": BURST_ROUNDS, "retriever": retrieval.plan("梅雨", settings).mode}
    for size in BURST_SIZES:
        requests, calls, switched = [], [], []
        for _ in range(BURST_ROUNDS):
            requests.append(as_requests([next(questions) for _ in range(size)]))
            calls.append(in_one_call([next(questions) for _ in range(size)]))
            interval = sys.getswitchinterval()
            sys.setswitchinterval(0.0005)
            try:
                switched.append(as_requests([next(questions) for _ in range(size)]))
            finally:
                sys.setswitchinterval(interval)
        result[f"size_{size}"] = {
            "as_requests": summary(requests),
            "as_requests_switch_0_5ms": summary(switched),
            "in_one_call": {f"{step}_ms_p50": p50(calls, step) for step in ("embed", "search")},
        }
    result["one_by_one_profile"] = profiled(lambda: retrieval.search(next(questions), settings), PROFILED_SEARCHES)
    result["busy_python_ms"] = BUSY_PYTHON_MS
    result["step_beside_busy_threads"] = {
        f"threads_{busy}": round(statistics.median(beside_busy_threads(busy) for _ in range(BURST_ROUNDS)), 2)
        for busy in (0, 8, 32)
    }
    return result


#: Searches one after another that :func:`retrieval_burst` profiles.
PROFILED_SEARCHES = 32


def profiled(call: Callable[[], Any], times: int, top: int = 15) -> dict:
    """``call`` run ``times`` times under cProfile: the wall and CPU ms per call, and the
    ``top`` functions by their own time per call (where a request's CPU time goes). From
    Python 3.12 the profiler sees every thread (the GPU steps' too), so a function's own
    time can exceed its cumulative one, and waits show as own time."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    started, cpu_started = time.perf_counter(), time.thread_time()
    profile.enable()
    for _ in range(times):
        call()
    profile.disable()
    wall, cpu = (time.perf_counter() - started) * 1000.0 / times, (time.thread_time() - cpu_started) * 1000.0 / times
    # (file, line, name) -> (primitive calls, calls, own, cumulative, callers)
    rows = pstats.Stats(profile).stats.items()
    heaviest = sorted(rows, key=lambda row: row[1][2], reverse=True)[:top]
    functions = [{"function": f"{Path(where).name}:{line}({name})", "calls": stats[1] / times,
                  "own_ms": round(stats[2] * 1000.0 / times, 3), "cumulative_ms": round(stats[3] * 1000.0 / times, 3)}
                 for (where, line, name), stats in heaviest]  # fmt: skip
    return {"calls": times, "wall_ms": round(wall, 2), "cpu_ms": round(cpu, 2), "heaviest": functions}


#: Pure Python each busy thread of :func:`retrieval_burst` runs: a request's own
#: preparation on the dev machine's replica took ~2.3 ms.
BUSY_PYTHON_MS = 2.0


def spin(count: int) -> int:
    """Pure Python that holds the GIL: ``count`` additions."""
    total = 0
    for number in range(count):
        total += number
    return total


def busy_loop_count(milliseconds: float) -> int:
    """How many :func:`spin` additions take ``milliseconds`` on this machine alone."""
    started = time.perf_counter()
    spin(1_000_000)
    return max(1, int(milliseconds / 1000.0 / (time.perf_counter() - started) * 1_000_000))


def engine_samples(product: Product) -> dict:
    """What the real engine sends, for the stand-in to match: /v1/models, a stream's first
    and last events, and the errors for a too-long prompt, an unknown model and a chat
    request to a model without a chat template."""
    import httpx

    url = product.rag.backend.base_url
    model = product.rag.settings.llm.model
    samples = {"models": httpx.get(f"{url}/models").json()}
    body = {"model": model, "prompt": "<s>[INST] 梅雨とは [/INST]", "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}, "add_special_tokens": False}  # fmt: skip
    with httpx.stream("POST", f"{url}/completions", json=body, timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
    samples["stream_first"], samples["stream_last"] = lines[:2], lines[-3:]
    whole = unstreamed(body)
    too_long = httpx.post(f"{url}/completions", json={**whole, "prompt": "あ" * 5000}, timeout=120)
    samples["too_long"] = {"status": too_long.status_code, "body": too_long.text[:600]}
    unknown = httpx.post(f"{url}/completions", json={**whole, "model": "other"}, timeout=120)
    samples["unknown_model"] = {"status": unknown.status_code, "body": unknown.text[:600]}
    chat = {"model": model, "messages": [{"role": "user", "content": "梅雨とは"}], "max_tokens": 4}
    no_template = httpx.post(f"{url}/chat/completions", json=chat, timeout=120)  # ELYZA's config has no template
    samples["chat_without_template"] = {"status": no_template.status_code, "body": no_template.text[:600]}
    return samples


def diagnose_engine(name: str, settings, root: Path, env: dict[str, str] | None = None) -> dict:
    """Start a real engine that must fail, and keep what the product says about it. No
    memory plan: it would refuse these settings before vLLM could fail for real."""
    from pipeline.generation.supervisor import EngineSupervisor
    from pipeline.settings.sources import with_values

    supervisor = EngineSupervisor(root / "diagnosis" / name, env=env)
    started = time.perf_counter()
    supervisor.start(with_values(settings, {"llm.extra_args": settings.llm.extra_args + " --enforce-eager"}))
    status = supervisor.wait_ready(600)
    supervisor.stop()
    return {"state": status.state, "en": status.en, "ja": status.ja, "seconds": round(time.perf_counter() - started, 1),
            "log_tail": status.log_tail[-12:]}  # fmt: skip


def replica_settings(
    root: Path,
    index_backend: str,
    serve_command: str = "vllm serve",
    query_encoder: str = "auto",
    values: dict[str, str] | None = None,
):
    """The product's settings over the replica that :func:`prepare` wrote under ``root``,
    with ``values`` (dotted paths, as ``--set`` gives them) over them."""
    from pipeline.settings.sources import load_settings, with_values

    return with_values(load_settings(environ={}, path="/none.toml", overrides={
        "profile": "jawiki", "cache_dir": str(root / "cache"), "hub_mirror": str(root / "mirror"),
        "device": "auto" if DEVICE == "cuda" else "cpu", "index": {"backend": index_backend},
        "embedding": {"query_encoder": query_encoder},
        "llm": {"backend": "local", "extra_args": "--load-format dummy", "timeout_s": 600,
                "serve_command": serve_command},
        "api": {"max_concurrent_generations": 64},
    }), values or {})  # fmt: skip


def setting_values(pairs: list[str]) -> dict[str, str]:
    """``--set`` arguments (``index.scan_graphs=true``) as dotted paths and values, which
    the settings' own validation converts."""
    values = {}
    for pair in pairs:
        path, equals, value = pair.partition("=")
        if not equals or not path:
            raise SystemExit(f"--set wants KEY=VALUE (a dotted settings path), not {pair!r}")
        values[path] = value
    return values


def query_encoder_in_use(retrieval) -> str:
    """How questions are encoded: the padded encoder's mode (``captured`` falls back to
    ``eager`` where its capture failed), else sentence-transformers' own path."""
    encoder = retrieval.embedding.model._query_encoder if retrieval.embedding is not None else None
    if encoder is None:
        return "sentence-transformers"
    if not hasattr(encoder, "mode"):  # a GH_PROBE_BASELINE pipeline from before the modes
        return "compiled" if encoder.compiled else "eager"
    return encoder.mode


def probe(
    root: Path, out: Path, index_backend: str, query_encoder: str = "auto", values: dict[str, str] | None = None
) -> None:
    """The burst probe (:func:`retrieval_burst`) alone: retrieval loaded as ``measure``
    loads it, no engine, a few minutes of a lease. Run with another commit's ``pipeline``
    first on the path, one after the other on one card, it compares their retrieval side
    by side."""
    from pipeline.retrieval.loading import load_retrieval

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = replica_settings(root, index_backend, query_encoder=query_encoder, values=values)
    questions = json.loads((root / "questions.json").read_text(encoding="utf-8"))
    started = time.perf_counter()
    retrieval = load_retrieval(settings)
    measured_on = machine()
    report = {"benchmark": "gpu_host_probe", "commit": measured_on["commit"], "machine": measured_on,
              "gpu": gpu_snapshot(), "load_s": round(time.perf_counter() - started, 1),
              "vector_search": retrieval.status().vector_search,
              "query_encoder_asked": settings.embedding.query_encoder,  # --set may override --query-encoder
              "settings_asked": values or {}, "query_encoder": query_encoder_in_use(retrieval),
              "gpu_use_gib": vars(retrieval.gpu_use)}  # fmt: skip
    try:
        report["retrieval_burst"] = retrieval_burst(retrieval, settings, iter(questions[::-1]))
    except Exception as exc:  # said in the results, as measure says it
        report["retrieval_burst"] = {"error": repr(exc)}
    finally:
        out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        retrieval.close()


def measure(
    root: Path,
    out: Path,
    configs: list[str],
    serve_command: str,
    wait_for: Path | None = None,
    second_card_free: Path | None = None,
    textbook: frozenset[str] = frozenset({"fp8"}),
    index_backend: str = "exact",
    query_encoder: str = "auto",
    values: dict[str, str] | None = None,
) -> None:
    from pipeline.settings.sources import with_values

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the engine, a child of this process, then serves POST /reset_prefix_cache (reset_prefix_cache)
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    questions = json.loads((root / "questions.json").read_text(encoding="utf-8"))
    base = replica_settings(root, index_backend, serve_command, query_encoder, values)
    try:
        from vllm import __version__ as vllm_version
    except ImportError:
        vllm_version = "not installed (a check of this script with the stand-in)"
    measured_on = machine()
    report: dict = {"benchmark": "gpu_host_vllm", "commit": measured_on["commit"], "date": measured_on["date"],
                    "machine": measured_on, "vllm_version": vllm_version, "index_backend": index_backend,
                    "query_encoder_asked": base.embedding.query_encoder, "settings_asked": values or {},
                    "gpu": gpu_snapshot(), "mps": mps_daemon(),
                    "gpu_processes": gpu_processes(),
                    "answer_tokens": ANSWER_TOKENS, "rounds": ROUNDS}  # fmt: skip

    def save() -> None:
        out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")

    def stage(now: str) -> None:
        """Where the run is, saved at once: a run whose lease ends first still says how far
        it got (on 2026-12-05 one wrote nothing in 6 minutes of loading, and said nothing)."""
        report["stage"] = now
        save()

    stage("loading the API: retrieval, then the engine's start")
    started = time.perf_counter()
    product = Product(with_values(base, CONFIGS[configs[0]]), 8100)  # the first engine runs the first config
    product.wait_loaded()
    report["api_loaded_s"] = round(time.perf_counter() - started, 1)
    retrieval = product.rag.retrieval
    report["retrieval"] = {"load_s": retrieval.load_timings, "gpu_use_gib": vars(retrieval.gpu_use),
                           "status": retrieval.status().model_dump(),
                           "query_encoder": query_encoder_in_use(retrieval)}  # fmt: skip
    supervisor = product.rag.backend.supervisor
    scratch = root / "payloads.json"
    remaining = iter(questions[::-1])
    diagnosis: dict = {}
    report["diagnosis"] = diagnosis
    try:
        for index, name in enumerate(configs):
            settings = with_values(base, CONFIGS[name])
            restart = index > 0  # applied as the settings page applies it: the engine restarts
            if CONFIGS[name].get("llm.tensor_parallel_size", 1) > 1 and second_card_free is not None:
                supervisor.stop()  # while the second card finishes its own work
                while not second_card_free.exists():
                    time.sleep(2)
                restart = True
            started = time.perf_counter()
            if restart:  # as a save on the settings page applies it
                product.runtime.reload(settings)
            stage(f"API loaded; waiting for the {name} engine")
            status = supervisor.wait_ready(1200, progress=lambda line, name=name: stage(f"{name} engine: {line[-99:]}"))
            entry = {"engine_start_s": round(time.perf_counter() - started, 1), "state": status.state,
                     "utilization": status.utilization, "engine_memory": status.memory,
                     "gpu_with_engine": gpu_snapshot(), "gpu_processes": gpu_processes()}  # fmt: skip
            report[name] = entry
            save()
            if status.state != "ready":
                entry["error"] = {"en": status.en, "ja": status.ja, "log_tail": status.log_tail}
                save()
                continue
            if index == 0:
                report["engine_samples"] = engine_samples(product)
                if wait_for is not None:  # the test suite ran beside the loading; not beside measurements
                    stage(f"{name} engine ready; waiting for {wait_for.name}")
                    while not wait_for.exists():
                        time.sleep(2)
                stage("a burst's retrieval, the engine idle")
                try:
                    report["retrieval_burst"] = retrieval_burst(retrieval, settings, remaining)
                except Exception as exc:  # a probe's failure, said; the levels still run
                    report["retrieval_burst"] = {"error": repr(exc)}
                save()
                # Another engine while this one runs: too little free memory, as vLLM says
                # it. Before the levels: the last configuration's textbook lets the
                # product's retrieval go, which the plan would count as still held.
                stage("diagnosis: a second engine with too little free memory")
                plan = supervisor.planner(with_values(settings, {"llm.gpu_memory_utilization": 0.5}))
                diagnosis["plan_refusal"] = plan.refusal() if plan is not None and not plan.fits else None
                diagnosis["too_little_free"] = diagnose_engine(
                    "too_little_free", with_values(base, {"llm.gpu_memory_utilization": 0.5}), root
                )
                save()
            stage(f"measuring {name}")
            try:
                last = index == len(configs) - 1
                measure_config(product, settings, remaining, scratch, entry, save, name in textbook, last)
            except subprocess.CalledProcessError as exc:  # the engine died under load: say why, go on
                time.sleep(5)  # vLLM shuts down a few seconds after its engine core died
                status = supervisor.status()
                entry["error"] = {"load": exc.stderr[-1500:], "engine_en": status.en, "engine_ja": status.ja,
                                  "log_tail": status.log_tail}  # fmt: skip
                save()
                continue
            entry["gpu_after"] = gpu_snapshot()
            save()
    finally:
        product.stop()
    stage("done")


def diagnose_kv(root: Path, out: Path) -> None:
    """ELYZA-13B at a ``gpu_memory_utilization`` that leaves too little KV cache for
    ``max_model_len`` 4096 (the 24.3 GiB of weights and about 3 GiB more, of this card):
    what vLLM says, and what the product tells the user."""
    from pipeline.core.gpu import gpus
    from pipeline.settings.sources import load_settings

    utilization = round((24.3 + 3.0) / gpus()[0].total_gib, 2)
    settings = load_settings(environ={}, path="/none.toml", overrides={
        "profile": "jawiki", "cache_dir": str(root / "cache"), "hub_mirror": str(root / "mirror"),
        "llm": {"backend": "local", "extra_args": "--load-format dummy",
                "gpu_memory_utilization": utilization}})  # fmt: skip
    result = {"kv_too_small": {"utilization": utilization, **diagnose_engine("kv_too_small", settings, root)}}
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


def main() -> None:
    global DEVICE, USERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepared = commands.add_parser("prepare")
    prepared.add_argument("root", type=Path)
    prepared.add_argument("--jsquad", type=Path, required=True)
    prepared.add_argument("--dummy-llm-script", type=Path, required=True)
    prepared.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a check of this script")
    measured = commands.add_parser("measure")
    measured.add_argument("root", type=Path)
    measured.add_argument("--out", type=Path, required=True)
    measured.add_argument("--configs", default="bf16,fp8,tp2")
    measured.add_argument("--serve-command", default="vllm serve", help="another command: a check with the stand-in")
    measured.add_argument("--wait-for", type=Path, help="start measuring once this file exists (the tests are done)")
    measured.add_argument("--second-card-free", type=Path, help="tensor parallel starts once this file exists")
    measured.add_argument("--textbook", default="fp8", help="configurations that measure bench.textbook too")
    measured.add_argument("--index-backend", default="exact", help="the product's index.backend (exact, exact-int8)")
    measured.add_argument("--users", default=",".join(map(str, USERS)), help="the numbers of concurrent users")
    measured.add_argument("--query-encoder", default="auto", help="the product's embedding.query_encoder")
    measured.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another product setting")
    probed = commands.add_parser("probe")
    probed.add_argument("root", type=Path)
    probed.add_argument("--out", type=Path, required=True)
    probed.add_argument("--index-backend", default="exact", help="the product's index.backend (exact, exact-int8)")
    probed.add_argument("--query-encoder", default="auto", help="the product's embedding.query_encoder")
    probed.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another product setting")
    diagnosed = commands.add_parser("diagnose-kv")
    diagnosed.add_argument("root", type=Path)
    diagnosed.add_argument("--out", type=Path, required=True)
    loaded = commands.add_parser("load")
    loaded.add_argument("--kind", choices=["product", "alone"], required=True)
    loaded.add_argument("--url", required=True)
    loaded.add_argument("--users", type=int, required=True)
    loaded.add_argument("--payloads", required=True)
    args = parser.parse_args()
    DEVICE = args.device
    if args.command == "prepare":
        print(json.dumps(prepare(args.root, args.jsquad, args.dummy_llm_script, args.rows)))
    elif args.command == "measure":
        USERS = tuple(int(users) for users in args.users.split(","))
        if not set(USERS) <= ROUNDS.keys():
            parser.error(f"--users: each of {sorted(ROUNDS)}")
        measure(args.root, args.out, args.configs.split(","), args.serve_command, args.wait_for,
                args.second_card_free, frozenset(filter(None, args.textbook.split(","))),
                args.index_backend, args.query_encoder, setting_values(args.set))  # fmt: skip
    elif args.command == "probe":
        probe(args.root, args.out, args.index_backend, args.query_encoder, setting_values(args.set))
    elif args.command == "diagnose-kv":
        diagnose_kv(args.root, args.out)
    else:
        load_main(args)


if __name__ == "__main__":
    main()
