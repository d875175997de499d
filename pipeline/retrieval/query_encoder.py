"""A query encoder for the GPU: fp16, SDPA attention, and CUDA graphs via torch.compile.

E5 is an XLM-R encoder whose sentence vector is the mean of its token states, normalised.
One short question is far too little work to keep an H100 busy: eager PyTorch spends its
time launching kernels (about 9 ms for E5-large). Captured as CUDA graphs
(``torch.compile(mode="reduce-overhead")``) the same forward pass replays in about 2 ms.
A graph fixes the input shape, so questions are padded to a few bucket lengths (masked
out of attention and pooling, so the vector does not change) and each bucket's graph is
captured once. Only torch and transformers are needed here.

The graphs and their static input buffers belong to the thread that captured them, and
every replay overwrites those buffers: two threads replaying at once corrupt each other's
inputs. On the H100 host, concurrent API requests did exactly that (an index out of
bounds in the compiled embedding lookup). Two encoders capturing at once on threads of
their own failed too (cuBLAS could not create its handle mid-capture, and the thread
stayed "recording" after). So every compiled encoder of the process captures and replays
on one shared thread; callers queue for it (one question takes ~2 ms). Should a capture
fail anyway, the encoder says so in the log and runs eagerly from then on: slower, same
vectors.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BUCKETS = (32, 64, 128, 256, 512)


class OneThread:
    """Runs every call on one thread of its own, in order."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        future: Future = Future()
        self._calls.put((function, args, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            function, args, future = self._calls.get()
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # the caller gets it
                future.set_exception(exc)


@functools.cache
def graph_thread() -> OneThread:
    """The process's one thread for CUDA-graph capture and replay."""
    return OneThread("cuda-graphs")


class PaddedEncoder:
    """Mean-pooled, unit-length embeddings with inputs padded to bucket lengths."""

    def __init__(self, model, tokenizer, max_length: int, device: str, compiled: bool) -> None:
        import torch

        self._torch = torch
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.compiled = compiled
        self.forward = torch.compile(self.model, mode="reduce-overhead", dynamic=False) if compiled else self.model
        self.buckets = (*(b for b in BUCKETS if b < max_length), max_length)
        #: Where compiled graphs are captured and replayed (see the module's docstring).
        self._graph_thread = graph_thread() if compiled else None

    @classmethod
    def from_folder(cls, folder: Path, device: str, max_length: int, compiled: bool) -> PaddedEncoder:
        import torch
        from transformers import AutoModel, AutoTokenizer

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = AutoModel.from_pretrained(str(folder), dtype=dtype, attn_implementation="sdpa")
        return cls(model, AutoTokenizer.from_pretrained(str(folder)), max_length, device, compiled)

    def bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def embed_ids(self, input_ids, attention_mask):
        """Unit vectors for already padded token ids (a torch tensor on the device)."""
        torch = self._torch
        with torch.inference_mode():
            states = self.forward(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._on_graph_thread(self._encode, texts)

    def _on_graph_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._graph_thread is None:
            return function(*args)
        try:
            return self._graph_thread.run(function, *args)
        except RuntimeError as exc:  # a failed capture: eager from now on, on the caller's thread
            logger.warning("CUDA graphs of the query encoder failed (%s); encoding eagerly", exc)
            self.forward, self._graph_thread, self.compiled = self.model, None, False
            return function(*args)

    def _encode(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        width = self.bucket(tokens["input_ids"].shape[1])
        pad = width - tokens["input_ids"].shape[1]
        torch = self._torch
        input_ids = torch.nn.functional.pad(tokens["input_ids"], (0, pad), value=self.tokenizer.pad_token_id or 0)
        attention_mask = torch.nn.functional.pad(tokens["attention_mask"], (0, pad), value=0)
        vectors = self.embed_ids(input_ids.to(self.device), attention_mask.to(self.device))
        return vectors.cpu().numpy()

    def warm_up(self, buckets: tuple[int, ...] = (32, 64)) -> None:
        """Capture the graphs of the usual question lengths now rather than at the first question."""
        self._on_graph_thread(self._warm_up, buckets)

    def _warm_up(self, buckets: tuple[int, ...]) -> None:
        torch = self._torch
        for width in buckets:
            if width in self.buckets:
                ids = torch.ones((1, width), dtype=torch.long, device=self.device)
                for _ in range(3):
                    self.embed_ids(ids, torch.ones_like(ids))
