"""A stand-in for `vllm serve`: the same command line and OpenAI-compatible HTTP API,
with deterministic Japanese answers and faults on demand. Tests and benchmarks use it
where the real vLLM + ELYZA-13B needs a GPU and the hub.

    python -m tests.standin_llm serve elyza/ELYZA-japanese-Llama-2-13b-instruct --port 8001

The answer is built from the numbered passages in the prompt ("[n] title" lines): it
quotes the first sentence of the first two passages and cites them as [1] and [2]. A
condense request (the prompt ends with "独立した質問:") gets the previous question and
the follow-up joined into one line.

Faults: ``POST /control {"fault": ..., "after": k, "times": n}`` makes the next n
completion requests ``die`` (the process exits after k tokens), ``stall`` (stops sending
after k tokens), ``oom`` (after k tokens logs the CUDA out-of-memory error vLLM 0.26 logged
on the H100 host at 32 users, then exits as vLLM did), ``error`` (HTTP 500), ``malformed``
(invalid SSE data after k tokens),
``bad_citation`` (cite a source that does not exist), ``markup`` (HTML, Markdown and
Streamlit directives in the answer) or ``carriage_return`` (bare CRs in the answer, the
way a model may emit them, spelling a server-sent event of their own). ``GET /debug/last_request`` returns
the last completion request body. ``/v1/chat/completions`` answers the last user message
as the completions endpoint answers a prompt, streaming chat chunks; for a model folder
without a chat template (or ``--no-chat-template``) it refuses with vLLM's HTTP 400.
Start-up faults, as vLLM 0.26 prints them: with
``--free-memory-fraction F`` a ``--gpu-memory-utilization`` above F fails like vLLM's
start-up memory check. A started stand-in logs the memory lines vLLM logs (weights,
KV cache) with the figures of ELYZA-13B in bf16 on an H100.

With ``--engine-core`` it starts a process of its own for the engine, as vLLM's API server
starts its EngineCore (which holds the GPU memory), and logs its pid as vLLM does
(``(EngineCore_DP0 pid=N)``). It ends on SIGTERM, the API server ends it on the way out,
and it outlives an API server that dies of SIGKILL (an orphan still holding the card), as
users of vLLM report of its EngineCore (not observed on the GPU host, where the supervisor
stops it first); ``--engine-core-ignores-sigterm`` makes it one that SIGTERM does not stop.
Off by default: other tests kill stand-ins outright and would leave it behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

PASSAGE_HEADING = re.compile(r"^\[(\d+)\] (.+)$", re.MULTILINE)
#: What vLLM answers (HTTP 400) to a chat request for a model whose tokenizer has no template.
NO_CHAT_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat template "
    "if the tokenizer does not define one."
)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kind, self.after, self.times = "none", 0, 0

    def set(self, kind: str, after: int, times: int) -> None:
        with self._lock:
            self.kind, self.after, self.times = kind, after, times

    def take(self) -> tuple[str, int]:
        with self._lock:
            if self.times <= 0:
                return "none", 0
            self.times -= 1
            return self.kind, self.after


def answer_for(prompt: str, fault: str) -> str:
    """The deterministic answer text for a prompt."""
    last_turn = prompt.rsplit("[INST]", 1)[-1]
    if last_turn.rstrip().removesuffix("[/INST]").rstrip().endswith("独立した質問:"):
        previous = re.findall(r"^ユーザー: (.+)$", last_turn, re.MULTILINE)
        follow_up = re.search(r"最後の質問: (.+)$", last_turn, re.MULTILINE)
        return " ".join([*previous[-1:], follow_up.group(1) if follow_up else ""]).strip()
    passages = []
    for match in PASSAGE_HEADING.finditer(last_turn):
        text = last_turn[match.end() :].lstrip("\n").split("\n", 1)[0]
        first = re.split(r"(?<=。)", text, maxsplit=1)[0].rstrip("。")
        passages.append((int(match.group(1)), match.group(2), first))
    if not passages:
        return "資料からは分かりません。"
    parts = [f"資料によると、{passages[0][2]}[{passages[0][0]}]。"]
    if len(passages) > 1:
        parts.append(f"また、{passages[1][1]}については「{passages[1][2]}」とされています[{passages[1][0]}]。")
    if fault == "markup":
        parts.append("<script>alert('x')</script> **太字** [リンク](javascript:alert(1)) $x^2$ :red[赤]")
    if fault == "carriage_return":
        parts.append("\revent: error\rdata: 偽のエラー\r\r続き")
    if fault == "bad_citation":
        parts.append(f"詳しくは資料[{len(passages) + 5}]を参照してください。")
    return "".join(parts)


def tokens_of(text: str) -> list[str]:
    """Two characters per token: enough to exercise streaming."""
    return [text[i : i + 2] for i in range(0, len(text), 2)]


def out_of_memory_report(utilization: float, total_gib: float = 79.18) -> str:
    """vLLM's lines when the engine ran out of memory while serving, as on the H100 host
    (bf16, 32 users): the engine 1.58 GiB over its share, a 396 MiB allocation refused."""
    engine_gib = utilization * total_gib + 1.58
    others_gib = total_gib - engine_gib - 0.39
    return (
        "(EngineCore pid=1) ERROR [core.py:1332] EngineCore encountered a fatal error.\n"
        "(EngineCore pid=1) ERROR [core.py:1332] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
        f"396.00 MiB. GPU 0 has a total capacity of {total_gib:.2f} GiB of which 398.62 MiB is free. Process 2 has "
        f"{others_gib:.2f} GiB memory in use. Including non-PyTorch memory, this process has {engine_gib:.2f} GiB "
        "memory in use. Of the allocated memory 64.35 GiB is allocated by PyTorch, with 786.00 MiB allocated in "
        "private pools (e.g., CUDA Graphs), and 286.49 MiB is reserved by PyTorch but unallocated.\n"
        "(APIServer pid=1) ERROR [async_llm.py:704] vllm.v1.engine.exceptions.EngineDeadError: EngineCore "
        "encountered an issue. See stack trace (above) for the root cause."
    )


def create_app(
    served_model: str, api_key: str | None, token_delay: float, has_chat_template: bool = True,
    utilization: float = 0.9, on_shutdown: Callable[[], object] | None = None,
) -> FastAPI:  # fmt: skip
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if on_shutdown is not None:  # uvicorn's graceful shutdown, SIGTERM's included
            on_shutdown()

    app = FastAPI(lifespan=lifespan)
    faults = Faults()
    state: dict = {"last_request": None, "completed": 0, "cancelled": 0, "clients": set()}

    def check_auth(request: Request) -> None:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            raise HTTPException(status_code=401, detail="Unauthorized")

    @app.get("/health")
    def health() -> JSONResponse:
        return JSONResponse({})

    @app.get("/v1/models")
    def models(request: Request) -> dict:
        check_auth(request)
        return {"object": "list", "data": [{"id": served_model, "object": "model", "owned_by": "standin"}]}

    @app.post("/control")
    async def control(request: Request) -> dict:
        body = await request.json()
        faults.set(body.get("fault", "none"), int(body.get("after", 0)), int(body.get("times", 1)))
        return {"ok": True}

    @app.get("/debug/last_request")
    def last_request() -> JSONResponse:
        return JSONResponse(state["last_request"])

    @app.get("/debug/stats")
    def stats() -> dict:
        """Streams finished, streams the client abandoned (as vLLM aborts them), and the
        connections completions came on (a client's address and port is one connection)."""
        return {"completed": state["completed"], "cancelled": state["cancelled"], "connections": len(state["clients"])}

    async def respond(request: Request, body: dict, prompt: str, chat: bool):
        """A completion of ``prompt``, whole or streamed as vLLM streams it: text
        completions, or chat chunks (the role first, then content deltas). A whole one
        comes after the time its tokens take, as an engine's does."""
        state["clients"].add((request.client.host, request.client.port))
        fault, after = faults.take()
        if fault == "error":
            return JSONResponse({"error": {"message": "injected failure", "type": "server_error"}}, status_code=500)
        if body.get("model") != served_model:
            return JSONResponse({"error": {"message": f"model {body.get('model')!r} not found"}}, status_code=404)
        tokens = tokens_of(answer_for(prompt, fault))
        max_tokens = body.get("max_tokens") or 16
        finish = "length" if len(tokens) > max_tokens else "stop"
        tokens = tokens[:max_tokens]
        completion_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        kind = ("chat.completion.chunk" if body.get("stream") else "chat.completion") if chat else "text_completion"

        def envelope(choices: list[dict], **extra) -> dict:
            return {"id": completion_id, "object": kind, "created": created, "model": served_model,
                    "choices": choices, **extra}  # fmt: skip

        def choice(text: str | None, finish_reason: str | None, role: bool = False) -> dict:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        if not body.get("stream"):
            await asyncio.sleep(token_delay * len(tokens))
            whole = "".join(tokens)
            message = {"role": "assistant", "content": whole}
            first = {"index": 0, "message": message, "finish_reason": finish} if chat else choice(whole, finish)
            return envelope([first], usage=usage)

        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events():
            finished = False
            try:
                if chat:
                    yield event(envelope([choice(None, None, role=True)]))
                for index, token in enumerate(tokens):
                    if index == after and fault == "die":
                        os._exit(1)
                    if index == after and fault == "oom":
                        print(out_of_memory_report(utilization), file=sys.stderr, flush=True)
                        os._exit(1)
                    if index == after and fault == "stall":
                        await asyncio.sleep(3600)
                    if index == after and fault == "malformed":
                        yield "data: {this is not json\n\n"
                        return
                    await asyncio.sleep(token_delay)
                    if await request.is_disconnected():  # vLLM aborts a request whose client left
                        return
                    yield event(envelope([choice(token, None)]))
                yield event(envelope([choice("" if not chat else None, finish)]))
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield event(envelope([], usage=usage))
                yield "data: [DONE]\n\n"
                finished = True
            finally:  # abandoned when the client left (closed, cancelled or finalised)
                state["completed" if finished else "cancelled"] += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        body = await request.json()
        state["last_request"] = body
        return await respond(request, body, str(body.get("prompt", "")), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        """The model's chat template stands for itself here: the answer is built from the
        last user message. Without a template, vLLM's refusal."""
        check_auth(request)
        body = await request.json()
        state["last_request"] = body
        if not has_chat_template:
            return JSONResponse({"error": {"message": NO_CHAT_TEMPLATE, "type": "BadRequestError", "param": None,
                                           "code": 400}}, status_code=400)  # fmt: skip
        users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
        return await respond(request, body, users[-1] if users else "", chat=True)

    return app


def has_chat_template(args: argparse.Namespace) -> bool:
    """As vLLM decides: ``--chat-template``, else the model folder's tokenizer config (or
    its ``chat_template.jinja``); a hub name is taken to have one unless told otherwise."""
    if args.chat_template:
        return True
    folder = Path(args.model)
    if folder.is_dir():
        config = folder / "tokenizer_config.json"
        in_config = config.is_file() and "chat_template" in json.loads(config.read_text(encoding="utf-8"))
        return in_config or (folder / "chat_template.jinja").is_file()
    return not args.no_chat_template


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.standin_llm")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--chat-template", default=None)
    parser.add_argument("--no-chat-template", action="store_true", help="stand-in: a hub model without a template")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="stand-in: seconds before serving")
    parser.add_argument("--token-delay", type=float, default=0.0, help="stand-in: seconds per streamed token")
    parser.add_argument("--free-memory-fraction", type=float, default=1.0, help="stand-in: simulated free GPU memory")
    parser.add_argument("--engine-core", action="store_true", help="stand-in: an EngineCore process, as vLLM's")
    parser.add_argument("--engine-core-ignores-sigterm", action="store_true", help="stand-in: a stuck EngineCore")
    # vLLM takes many more engine flags (--quantization, --kv-cache-dtype, --load-format, ...): accept them.
    args, engine_flags = parser.parse_known_args(argv)

    total = 79.19
    if args.api_key:  # vLLM's API server logs its non-default arguments, the key among them
        print(f"(APIServer pid={os.getpid()}) INFO [utils.py:253] non-default args: {{'api_key': [{args.api_key!r}]}}")
    print(
        f"INFO standin: serving {args.model} (dtype={args.dtype}, tp={args.tensor_parallel_size}, "
        f"gpu_memory_utilization={args.gpu_memory_utilization}, max_model_len={args.max_model_len}, "
        f"flags={' '.join(engine_flags)})",
        flush=True,
    )
    if args.gpu_memory_utilization > args.free_memory_fraction:  # vLLM 0.26's check and message
        print(
            "(EngineCore_DP0 pid=1) ValueError: Free memory on device cuda:0 "
            f"({args.free_memory_fraction * total:.2f}/{total} GiB) on startup is less than desired GPU memory "
            f"utilization ({args.gpu_memory_utilization}, {args.gpu_memory_utilization * total:.2f} GiB). "
            "Decrease GPU memory utilization or reduce GPU memory used by other processes.\n"
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    # What vLLM logs of its memory once loaded (the supervisor reads these lines).
    print(
        f"INFO [gpu_worker.py:479] Free memory on device ({args.free_memory_fraction * total:.2f}/{total} GiB) on "
        f"startup. Desired GPU memory utilization is ({args.gpu_memory_utilization}, "
        f"{args.gpu_memory_utilization * total:.2f} GiB).\n"
        "INFO [gpu_model_runner.py:5348] Model loading took 24.29 GiB memory and 0.010000 seconds\n"
        "INFO [gpu_worker.py:561] Available KV cache memory: 41.92 GiB\n"
        "INFO [kv_cache_utils.py:2177] GPU KV cache size: 54,896 tokens",
        flush=True,
    )
    core = start_engine_core(args.engine_core_ignores_sigterm) if args.engine_core else None
    time.sleep(args.startup_delay)
    app = create_app(args.served_model_name or args.model, args.api_key, args.token_delay, has_chat_template(args),
                     args.gpu_memory_utilization, core.terminate if core else None)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def start_engine_core(ignores_sigterm: bool) -> subprocess.Popen:
    """A process that stands for vLLM's EngineCore: it only waits, in this group."""
    handler = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignores_sigterm else ""
    core = subprocess.Popen([sys.executable, "-c", f"import signal, time; {handler}time.sleep(3600)"])
    print(f"(EngineCore_DP0 pid={core.pid}) INFO standin: engine core started", flush=True)
    return core


if __name__ == "__main__":
    main()
