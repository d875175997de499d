"""CPU time a request spends before its retrieval, with and without the shortcuts that
spare it: the request's settings validated once per combination of values (timed here
when the combination comes again, as one client's requests do), and the question's token
count skipped where its bytes after the tokenizer's normalizer and pre-tokenizer prove
that it fits the encoder.

    python -m bench.request_cpu [--questions 2000] [--out bench/results/request_cpu.json]

On a GPU host a burst's questions wait for each other's CPU time under the GIL (the
burst probe of ``bench.gpu_host``: ~2 ms a question on an H100 host), so each
microsecond here is paid once per question in the burst. Side by side in one process, on
JSQuAD's questions. The encoder's tokenizer is MiniLM's (the only model on this machine),
not E5's (XLM-R's SentencePiece with NFKC), whose cost these figures do not tell.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.api_load import questions
from bench.common import machine, percentiles_ms, write_result


def timed(call, items) -> dict:
    """Thread CPU time per call of ``call`` on each item (after one warm pass)."""
    for item in items[:50]:
        call(item)
    samples = []
    for item in items:
        started = time.thread_time()
        call(item)
        samples.append(time.thread_time() - started)
    return percentiles_ms(samples)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from pipeline.api.service import ApiService
    from pipeline.retrieval.dense.encoder import load_embedding
    from pipeline.settings.sources import load_settings, with_session_values

    asked = questions(args.questions)
    settings = load_settings(environ={}, path="/nonexistent.toml", overrides={"profile": "jawiki"})
    service = ApiService(settings)
    # What a client of the GPU host's benchmark sends with each question.
    values = [{"generation.max_new_tokens": 256, "retrieval.top_k": 5}] * len(asked)
    model = load_embedding(settings, allow_download=False).model
    result = {
        "benchmark": "request_cpu",
        "machine": machine(),
        "questions": len(asked),
        "tokenizer": type(model._model.tokenizer).__name__,
        "settings_validated_each_time": timed(lambda v: with_session_values(settings, v), values),
        "settings_validated_once": timed(lambda v: service.request_settings({}, v), values),
        "token_count_each_time": timed(model.query_token_count, asked),
        "token_count_where_it_could_exceed": timed(model.query_tokens_past_limit, asked),
    }
    service.close()
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
