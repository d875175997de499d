"""Passage vectors at throughput: length-bucketed fp16 batches through the product's
encoder.

The query side of the product (:class:`~pipeline.retrieval.dense.gpu_encoder.PaddedEncoder`)
runs E5 in fp16 with SDPA attention and mean-pools the token states into unit vectors;
passages go through the same weights and pooling. What differs is the batching: a
shard's passages are tokenised at once, sorted by length, and cut into batches of up to
``batch_tokens`` padded tokens, each padded only to its own longest passage (rounded up
to a multiple of 8), so that little of the GPU's work is spent on padding. The vectors
stay on the device until the shard is done. Batches depend only on the shard's content,
so a shard gives the same vectors wherever it runs.

Imports numpy only; torch and transformers when an encoder is built (the GPU benchmark
runs this module on a host without the rest of the product's requirements).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.retrieval.dense.gpu_encoder import PaddedEncoder

#: Padded tokens per batch: about 2 GiB of activations for E5-large in fp16.
GPU_BATCH_TOKENS = 65536
CPU_BATCH_TOKENS = 8192
MAX_BATCH_ROWS = 1024


def padded(length: int) -> int:
    return -(-length // 8) * 8


def length_batches(lengths: Sequence[int], max_tokens: int, max_rows: int = MAX_BATCH_ROWS) -> list[np.ndarray]:
    """Row numbers grouped by length (shortest first): each batch holds at most
    ``max_tokens`` once padded to its longest row, and at least one row."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while (
            end < len(order)
            and end - start < max_rows
            and (end - start + 1) * padded(lengths[order[end]]) <= max_tokens
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def mean_pooled(folder: Path) -> bool:
    """Whether a sentence-transformers folder pools by mean (E5 and MiniLM do): the
    encoder assumes it."""
    config = folder / "1_Pooling" / "config.json"
    return not config.exists() or bool(json.loads(config.read_text(encoding="utf-8")).get("pooling_mode_mean_tokens"))


class PassageEncoder:
    """Token ids or texts -> unit vectors (fp16, one row per input, in input order)."""

    def __init__(self, encoder: PaddedEncoder, pad_id: int, batch_tokens: int, compile: bool = False) -> None:
        import torch

        self._torch = torch
        self.encoder = encoder
        self.pad_id = pad_id
        self.batch_tokens = batch_tokens
        self.dimension = int(encoder.model.config.hidden_size)
        if compile:  # fused kernels, no CUDA graphs: batch shapes vary too much for graphs
            encoder.forward = torch.compile(encoder.model, dynamic=True)

    @classmethod
    def from_folder(
        cls, folder: Path, device: str, max_length: int, batch_tokens: int | None = None, compile: bool = False
    ) -> PassageEncoder:
        if not mean_pooled(folder):
            raise ValueError(f"{folder} does not pool by mean; the passage encoder assumes it")
        encoder = PaddedEncoder.from_folder(folder, device, max_length, "eager")
        default = GPU_BATCH_TOKENS if device.startswith("cuda") else CPU_BATCH_TOKENS
        return cls(encoder, encoder.tokenizer.pad_token_id or 0, batch_tokens or default, compile)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        tokens = self.encoder.tokenizer(texts, truncation=True, max_length=self.encoder.max_length)
        return tokens["input_ids"]

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encode_ids(self.tokenize(texts))

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        torch = self._torch
        device = self.encoder.device
        lengths = [len(row) for row in ids]
        vectors = torch.empty((len(ids), self.dimension), dtype=torch.float16, device=device)
        for batch in length_batches(lengths, self.batch_tokens):
            width = padded(lengths[batch[-1]])
            input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                input_ids[row, : lengths[index]] = ids[index]
                mask[row, : lengths[index]] = 1
            input_ids_t, mask_t = torch.from_numpy(input_ids), torch.from_numpy(mask)
            if device.startswith("cuda"):
                input_ids_t, mask_t = input_ids_t.pin_memory(), mask_t.pin_memory()
            pooled = self.encoder.embed_ids(
                input_ids_t.to(device, non_blocking=True), mask_t.to(device, non_blocking=True)
            )
            vectors[torch.from_numpy(batch).to(device)] = pooled.to(torch.float16)
        return vectors.cpu().numpy()
