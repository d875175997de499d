"""A query encoder for the GPU: fp16, SDPA attention, and CUDA graphs, recorded by hand
(``captured``, the default on a GPU) or by torch.compile (``compiled``).

E5 is an XLM-R encoder whose sentence vector is the mean of its token states, normalised.
One short question is far too little work to keep an H100 busy: eager PyTorch spends its
time launching kernels (about 9 ms for E5-large). Captured as CUDA graphs the same forward
pass replays in about 2 ms. Questions are padded to a few bucket lengths (masked out of
attention and pooling, so the vector does not change) and a batch to a few bucket sizes;
one graph is recorded per (batch, length) pair. ``compiled`` compiles the model once with
dynamic shapes (``torch.compile(mode="reduce-overhead")``) and records the usual lengths'
graphs (32 and 64 tokens) at warm-up, the others' at first use.

torch.compile's graphs and their static input buffers belong to the thread that captured
them, and every replay overwrites those buffers: two threads replaying at once corrupt
each other's inputs. On the H100 host, concurrent API requests did exactly that (an index
out of bounds in the compiled embedding lookup). So every encoder of the process captures
and replays on the one graph thread (:mod:`pipeline.core.cuda_graphs`). Questions that
wait for it are encoded together, in one replay: on the H100 host, 32 concurrent users
replaying one graph each queued 200-230 ms (p50) for E5 alone; joined, 59-89 ms. Should a
capture fail anyway, the encoder says so in the log and runs eagerly from then on:
slower, same vectors.

The ``captured`` mode records the same graphs by hand instead (``torch.cuda.CUDAGraph``
over the eager model, as vLLM captures its model runner's), pooling and normalisation
inside them. A replay is then a copy of the ids and the mask into the graph's static
buffers, one launch and one copy out: a handful of calls into torch, where the compiled
path's guards and cudagraph-tree checks make over a hundred (``torch.as_tensor`` 129 times
a search on the H100, its one-by-one profile). Each call gives up the GIL and takes it
back; at 32 users on the H100 the E5 step took 72.6 ms p50 inside the product against
12.1 ms for the same 32 questions in one call, its thread waiting behind the burst's
other requests for every one of those calls. transformers builds the attention mask
without its host-side all-ones check while a stream captures, so the recorded graph is
the one for any padding. Side by side on one H100 (2026-12-06, docs/benchmarks.md) the
captured encoder took 1.95 and 3.44 ms for one question in one call (two readings)
against 3.05 and 7.18 compiled, 9.6 and 12.5 against 11.4 and 16.7 for 32, and inside the
product at 32 users its step took 38.8 ms p50 against 56.1.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from concurrent.futures import Future
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.core.cuda_graphs import (
    CAPTURE_LOCK,
    graph_thread,
    leave_failed_capture,
    record_graph,
    serve_waiting,
    warm_up,
)

logger = logging.getLogger(__name__)

#: How the encoder runs: the model as it is, compiled into CUDA graphs by torch.compile,
#: or its graphs captured by hand (see the module's docstring).
EncoderMode = Literal["eager", "compiled", "captured"]

BUCKETS = (32, 64, 128, 256, 512)
#: Batch sizes with a graph of their own; a batch is padded up to the next one.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


def _position_limit(model, tokenizer) -> int:
    """The longest input the model has positions for: the config's
    ``max_position_embeddings``, less the padding offset of RoBERTa-style positions (E5 is
    XLM-R: 514 positions, the first two never used, so 512 tokens), and no more than the
    tokenizer's ``model_max_length``. Longer inputs would index past the position table
    (on CUDA a device-side assert, which leaves the process's CUDA context unusable; the
    captured mode records every width up to ``max_length`` at load)."""
    positions = int(getattr(model.config, "max_position_embeddings", 512))
    padding_index = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    if padding_index is not None:  # positions counted from padding_idx + 1
        positions -= padding_index + 1
    stated = getattr(tokenizer, "model_max_length", None)
    return min(positions, stated) if isinstance(stated, int) else positions


def _round_up(value: int, sizes: tuple[int, ...]) -> int:
    """The smallest of ``sizes`` (ascending) that holds ``value``."""
    return next(size for size in sizes if size >= value)


class PaddedEncoder:
    """Mean-pooled, unit-length embeddings with inputs padded to bucket lengths."""

    def __init__(self, model, tokenizer, max_length: int, device: str, mode: EncoderMode) -> None:
        import torch

        if mode == "captured" and not device.startswith("cuda"):
            raise ValueError(f"captured CUDA graphs need a CUDA device, not {device!r}")
        self._torch = torch
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.max_length = min(max_length, _position_limit(model, tokenizer))
        self.device = device
        self.mode: EncoderMode = mode
        compiled = mode == "compiled"
        self.forward = torch.compile(self.model, mode="reduce-overhead", dynamic=True) if compiled else self.model
        self.buckets = (*(b for b in BUCKETS if b < self.max_length), self.max_length)
        if compiled:  # one graph per (batch, length) pair is the plan: no warning at the ninth
            import torch._inductor.config

            graphs = len(BATCH_BUCKETS) * len(self.buckets)
            torch._inductor.config.triton.cudagraph_dynamic_shape_warn_limit = graphs
        #: Where graphs are captured and replayed (see the module's docstring).
        self._graph_thread = graph_thread() if self.uses_graphs else None
        #: The graphs captured by hand, by (batch, length), sharing one memory pool and
        #: one stream, on which they are captured and replayed (:class:`CapturedForward`).
        self._captured: dict[tuple[int, int], CapturedForward] = {}
        captured = mode == "captured"
        self._pool = torch.cuda.graph_pool_handle() if captured else None
        self._stream = torch.cuda.Stream(device) if captured else None
        #: Questions waiting for the graph thread, as (texts, future of their vectors).
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def uses_graphs(self) -> bool:
        """Whether questions go through CUDA graphs (padded to a batch size with a graph)."""
        return self.mode != "eager"

    @classmethod
    def from_folder(cls, folder: Path, device: str, max_length: int, mode: EncoderMode) -> PaddedEncoder:
        import torch
        from transformers import AutoModel, AutoTokenizer

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = AutoModel.from_pretrained(str(folder), dtype=dtype, attn_implementation="sdpa")
        return cls(model, AutoTokenizer.from_pretrained(str(folder)), max_length, device, mode)

    def bucket(self, length: int) -> int:
        return _round_up(length, self.buckets)

    def embed_ids(self, input_ids, attention_mask):
        """Unit vectors for already padded token ids (a torch tensor on the device). In the
        captured mode, the graph's own output: copy it before the next replay."""
        if self.mode == "captured":  # the graph enters inference mode itself, once a replay
            return self._captured_forward(tuple(input_ids.shape))(input_ids, attention_mask)
        with self._torch.inference_mode():
            return self.pooled(input_ids, attention_mask)

    def pooled(self, input_ids, attention_mask):
        """The mean of the token states over the mask, unit length, in fp32."""
        torch = self._torch
        states = self.forward(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def _captured_forward(self, shape: tuple[int, int]) -> CapturedForward:
        """The graph of this (batch, length); :meth:`warm_up` captures them all."""
        graph = self._captured.get(shape)
        if graph is None:
            graph = self._captured[shape] = CapturedForward(self, shape, self._pool, self._stream)
        return graph

    def encode(self, texts: list[str]) -> np.ndarray:
        thread = self._graph_thread  # read once: a failed capture may clear it meanwhile
        if thread is None:
            return self._encode(texts)
        vectors: Future = Future()
        self._waiting.put((texts, vectors))
        thread.submit(self._encode_waiting)
        return vectors.result()

    def _encode_waiting(self) -> None:
        """On the graph thread: every question waiting by now, up to the largest batch,
        in one replay."""
        serve_waiting(self._waiting, BATCH_BUCKETS[-1], len, self._encode_requests)

    def _encode_requests(self, requests: list[list[str]]) -> list[np.ndarray]:
        vectors = self.encode_batch([text for texts in requests for text in texts])
        ends = np.cumsum([len(texts) for texts in requests])
        return np.split(vectors, ends[:-1])

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """Where the encoder runs: on the graph thread, unless eager. torch.compile records a
        length's graphs at its first use (warm-up records 32 and 64 tokens' only), so
        compiled encoding holds the capture lock; captured graphs take it themselves, at
        load."""
        try:
            with CAPTURE_LOCK if self.mode == "compiled" else contextlib.nullcontext():
                return self._encode(texts)
        except RuntimeError as exc:  # a failed capture: eager from now on
            self._give_up_graphs(exc)
            return self._encode(texts)

    def _give_up_graphs(self, exc: RuntimeError) -> None:
        """Eager from now on. The mode first: a question that finds no graph thread must
        find the eager mode too. A capture that failed in ``capture_end`` leaves this thread
        on the capture stream (torch restores the stream after it): back to the default."""
        logger.warning("CUDA graphs of the query encoder failed (%s); encoding eagerly", exc)
        captured, self.mode = self.mode == "captured", "eager"
        self.forward, self._graph_thread = self.model, None
        self._captured.clear()
        if captured:
            leave_failed_capture(self.device)

    def _encode(self, texts: list[str]) -> np.ndarray:
        largest = BATCH_BUCKETS[-1]
        if len(texts) > largest:
            return np.concatenate([self._encode(texts[i : i + largest]) for i in range(0, len(texts), largest)])
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        rows, length = tokens["input_ids"].shape
        width = self.bucket(length)
        mode = self.mode  # read once: a failed capture may change it meanwhile
        extra_rows = _round_up(rows, BATCH_BUCKETS) - rows if mode != "eager" else 0  # a graph's size
        torch = self._torch
        input_ids = torch.nn.functional.pad(
            tokens["input_ids"], (0, width - length, 0, extra_rows), value=self.tokenizer.pad_token_id or 0
        )
        attention_mask = torch.nn.functional.pad(tokens["attention_mask"], (0, width - length, 0, extra_rows), value=0)
        attention_mask[rows:, 0] = 1  # filler rows attend to one pad token: no row is masked out entirely
        if mode != "captured":  # a captured graph copies them into its own buffers
            input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        # Captured graphs replay on their own stream, the copy out after them (CapturedForward).
        with torch.cuda.stream(self._stream) if mode == "captured" else contextlib.nullcontext():
            vectors = self.embed_ids(input_ids, attention_mask)
            return vectors[:rows].cpu().numpy()

    def warm_up(self, buckets: tuple[int, ...] = (32, 64)) -> None:
        """Compile, and record the graphs of the usual question lengths for every batch size,
        now rather than at the first questions. Captured by hand, every length's: a capture
        synchronises the whole device and empties the allocator's cache, which must not
        happen beside requests, and its failure is best met at load time; largest first,
        so that the shared pool is sized by the first."""
        if self._graph_thread is not None:
            self._graph_thread.run(self._warm_up_or_give_up, buckets)

    def _warm_up_or_give_up(self, buckets: tuple[int, ...]) -> None:
        """On the graph thread, where a failed capture leaves its stream behind; holding
        the capture lock (torch.compile records its graphs inside the warm-up)."""
        try:
            with CAPTURE_LOCK:
                self._warm_up(buckets)
        except RuntimeError as exc:
            self._give_up_graphs(exc)

    def _warm_up(self, buckets: tuple[int, ...]) -> None:
        torch = self._torch
        if self.mode == "captured":
            for width in sorted(self.buckets, reverse=True):
                for rows in sorted(BATCH_BUCKETS, reverse=True):
                    self._captured_forward((rows, width))
            return
        for width in (b for b in buckets if b in self.buckets):
            for rows in BATCH_BUCKETS:
                ids = torch.ones((rows, width), dtype=torch.long, device=self.device)
                for _ in range(3):  # cudagraph trees: a warm-up run, the recording, a replay
                    self.embed_ids(ids, torch.ones_like(ids))


class CapturedForward:
    """One (batch, length) of :meth:`PaddedEncoder.pooled` recorded as a CUDA graph by hand:
    static input buffers on the device, the pooled vectors as its static output.

    Recorded by :func:`~pipeline.core.cuda_graphs.record_graph`, with padding in the
    warm-up mask so that transformers takes the path it takes while capturing (a full mask
    skips building the mask outside a capture). Every graph of an encoder shares one
    memory pool and one stream (each stream has its own cuBLAS workspace, 32 MiB on an
    H100): they replay one at a time, on the graph thread, and each output is copied
    before the next.

    They replay on the stream they were captured on, the caller's copy out on it too, not
    on PyTorch's default stream: that one stream serves every thread of the process in
    order, so a question's replay and copy out would wait for whatever another thread
    queued there before them (the int8 scan, on the batching searcher's thread), and the
    scan for E5. On streams of their own the two overlap on the card."""

    def __init__(self, encoder: PaddedEncoder, shape: tuple[int, int], pool, stream) -> None:
        torch = encoder._torch
        self._torch = torch
        with torch.inference_mode():
            self.input_ids = torch.zeros(shape, dtype=torch.long, device=encoder.device)
            self.attention_mask = torch.zeros(shape, dtype=torch.long, device=encoder.device)
            self.attention_mask[:, 0] = 1

        def step():
            return encoder.pooled(self.input_ids, self.attention_mask)

        warm_up(step, stream)
        self.graph, self.vectors = record_graph(step, pool, stream)

    def __call__(self, input_ids, attention_mask):
        with self._torch.inference_mode():  # the buffers are inference tensors
            self.input_ids.copy_(input_ids)
            self.attention_mask.copy_(attention_mask)
            self.graph.replay()
            return self.vectors
