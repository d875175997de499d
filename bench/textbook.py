"""The textbook pipeline: what a user would build from LlamaIndex's own documentation
instead of this product, measured by ``bench.gpu_host`` on the same vLLM engine.

    python -m bench.textbook MIRROR --engine-url URL --model NAME --questions FILE
                             [--rows 200000] [--top-k 5] [--users 1,8,32,64] [--out OUT.json]

Built as the documentation's pages on the Faiss vector store, Hugging Face embeddings,
``OpenAILike`` and streaming show it, over the product's own hub mirror:

- ``FaissVectorStore`` over a ``faiss.IndexFlatIP`` of the same E5 passage vectors (the
  ``embs/`` files), filled by ``VectorStoreIndex.insert_nodes`` with the passages as
  ``TextNode`` objects that carry those vectors, so nothing is re-embedded;
- ``HuggingFaceEmbedding`` of the same E5 folder with ``query_instruction="query: "``;
- ``OpenAILike`` to the same engine, on the completions API (ELYZA has no chat template),
  with the product's answer length;
- ``index.as_query_engine(streaming=True, similarity_top_k=<the product's top_k>)`` with
  its default prompt;
- ``Settings.tokenizer`` set to the LLM's own tokenizer, as the documentation's page on
  local models does (left unset, LlamaIndex reaches for tiktoken's GPT encoding, which
  the offline GPU host could not download: the textbook failed there, 2026-12-05).

Where it is kinder than a real deployment, on purpose, so that the product's lead is not
flattered: only the first ``--rows`` passages (a flat float32 index of all 5.5M would take
22.8 GB of RAM and a docstore of 5.5M nodes many minutes to build; fewer rows make its
search faster), and questions asked in this process, with no HTTP server in front of it.
TTFT is question → first non-empty streamed text, as ``bench.gpu_host`` measures the
product; the users are threads, as a Streamlit app or a FastAPI server runs the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import machine
from bench.gpu_host import ANSWER_TOKENS, CONFIG, CORPUS_REPO, E5_REPO, EMBEDDINGS_DIR, INDEX_REPO, ROUNDS, run_users

#: Passages handed to ``insert_nodes`` at a time: their float lists are the memory peak.
BATCH_ROWS = 10_000


def passage_batches(mirror: Path, embeddings: str, rows: int) -> Iterator[tuple[list[dict], np.ndarray]]:
    """The first ``rows`` passages of the mirror's corpus with their vectors, in batches
    (row i of the numbered ``embs`` files is passage i, as in the hub repos)."""
    from pipeline.retrieval.corpus import read_passages

    files = sorted((mirror / INDEX_REPO / embeddings).glob("*.npz"), key=lambda file: int(file.stem))
    vectors = np.zeros((0, 0), dtype=np.float16)
    for file in files:
        part = np.load(file)["embs"]
        vectors = part if not len(vectors) else np.concatenate([vectors, part])
        if len(vectors) >= rows:
            break
    done = 0
    for shard in sorted((mirror / CORPUS_REPO / CONFIG).glob("train-*.parquet")):
        table = read_passages(shard).slice(0, rows - done)
        for start in range(0, table.num_rows, BATCH_ROWS):
            batch = table.slice(start, BATCH_ROWS).to_pylist()
            yield batch, vectors[done : done + len(batch)].astype(np.float32)
            done += len(batch)
        if done >= rows:
            return


def build_engine(args: argparse.Namespace):
    """The streaming query engine, and how long each part took to build."""
    import faiss
    from llama_index.core import Settings, StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.llms.openai_like import OpenAILike
    from llama_index.vector_stores.faiss import FaissVectorStore
    from transformers import AutoTokenizer

    Settings.tokenizer = AutoTokenizer.from_pretrained(args.mirror / (args.tokenizer or args.model))
    timings = {}
    started = time.perf_counter()
    embed_model = HuggingFaceEmbedding(
        model_name=str(args.mirror / args.encoder),
        query_instruction="query: ",
        text_instruction="passage: ",
        device=args.device,
    )
    timings["embedding_model_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    dimension = len(embed_model.get_query_embedding("次元"))
    storage = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss_index=faiss.IndexFlatIP(dimension)))
    index = VectorStoreIndex([], storage_context=storage, embed_model=embed_model)
    indexed = 0
    for passages, vectors in passage_batches(args.mirror, args.embeddings, args.rows):
        indexed += len(passages)
        index.insert_nodes(
            [
                TextNode(
                    text=passage["text"],
                    metadata={"title": passage["title"], "row": passage["id"]},
                    excluded_llm_metadata_keys=["row"],  # the passage's row, for the tests; not the model's
                    embedding=vector.tolist(),
                )
                for passage, vector in zip(passages, vectors, strict=True)
            ]
        )
    timings["index_s"], timings["rows_indexed"] = round(time.perf_counter() - started, 1), indexed
    llm = OpenAILike(
        api_base=f"{args.engine_url}/v1", api_key="unused", model=args.model, is_chat_model=False,
        context_window=4096, max_tokens=ANSWER_TOKENS, timeout=600,
    )  # fmt: skip
    return index.as_query_engine(llm=llm, streaming=True, similarity_top_k=args.top_k), timings


def ask(engine, question: str) -> dict:
    """One question, streamed: the same keys as ``bench.gpu_host.stream_request``. Each
    streamed piece is one event of the engine's stream, that is one token."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    for text in engine.query(question).response_gen:
        if text:
            last = time.perf_counter()
            first = first or last
            tokens += 1
    decode = (last - first) if first and last else 0.0
    return {
        "ttft_ms": (first - started) * 1000 if first else None,
        "tokens": tokens,
        "decode_s": decode,
        "tok_s": (tokens - 1) / decode if decode > 0 and tokens > 1 else None,
        "steps": {},
    }


def sample_prompt(engine, question: str) -> str:
    """The prompt the textbook sends the engine for ``question``, as LlamaIndex's
    instrumentation reports it (the caller counts its tokens with the product's counter)."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.llm import LLMCompletionStartEvent

    prompts: list[str] = []

    class PromptSeen(BaseEventHandler):
        def handle(self, event, **kwargs) -> None:
            if isinstance(event, LLMCompletionStartEvent):
                prompts.append(event.prompt)

    dispatcher, seen = get_dispatcher(), PromptSeen()
    dispatcher.add_event_handler(seen)
    try:
        for _ in engine.query(question).response_gen:
            pass
    finally:  # not left to see every later event of the measurement
        dispatcher.event_handlers.remove(seen)
    return prompts[-1]


def measure(engine, questions: list[str], users: list[int]) -> dict:
    """Each number of users in turn, as many rounds as ``bench.gpu_host`` asks the product
    (``ROUNDS``), every question new."""
    remaining = iter(questions)
    for question in [next(remaining) for _ in range(2)]:  # warm-up, as the product gets
        ask(engine, question)
    result = {}
    for count in users:
        asked = [next(remaining) for _ in range(count * ROUNDS.get(count, 1))]
        result[f"users_{count}"] = run_users(asked, count, lambda session, question: ask(session, question),
                                             lambda: contextlib.nullcontext(engine))  # fmt: skip
    return result


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.textbook", description=__doc__.splitlines()[0])
    parser.add_argument("mirror", type=Path, help="a hub mirror as bench.gpu_host prepare writes it")
    parser.add_argument("--engine-url", required=True, help="the engine, without /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", type=Path, required=True, help="a JSON list of questions not asked before")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--users", default="1,8,32,64")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--encoder", default=E5_REPO, help="the query encoder's folder in the mirror")
    parser.add_argument("--tokenizer", help="the LLM tokenizer's folder in the mirror (default: --model's)")
    parser.add_argument("--embeddings", default=EMBEDDINGS_DIR, help="the passage vectors' folder in the index repo")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    engine, timings = build_engine(args)
    questions = json.loads(args.questions.read_text(encoding="utf-8"))
    result = {"benchmark": "textbook", "machine": machine(), "rows": args.rows, "top_k": args.top_k,
              "build": timings, "sample_prompt": sample_prompt(engine, questions.pop()),
              **measure(engine, questions, [int(n) for n in args.users.split(",")])}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
