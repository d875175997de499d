"""A Japanese BM25 index over the passage store (bm25s, sparse matrices, memory-mapped):
MeCab words and character bigrams (:mod:`pipeline.text.terms`), k1 1.2, b 0.75."""

from __future__ import annotations

import logging
from pathlib import Path

import bm25s
import numpy as np
from bm25s.tokenization import Tokenized

from pipeline.assets.index_cache import cache_key, cache_path, cached_dir
from pipeline.core.timing import step
from pipeline.retrieval.corpus import PassageStore
from pipeline.text.terms import TERMS_VERSION, SearchTerms

logger = logging.getLogger(__name__)

CACHE_KIND = "bm25"


def _key(passages: PassageStore) -> str:
    return cache_key(passages.fingerprint, TERMS_VERSION, bm25s.__version__)


def new_model() -> bm25s.BM25:
    """An empty bm25s model with this index's parameters (k1 1.2, b 0.75)."""
    return bm25s.BM25(k1=1.2, b=0.75)


def cache_folder(passages: PassageStore, cache_root: Path) -> Path:
    """Where :meth:`BM25Index.cached` and :meth:`BM25Index.existing` look for this
    corpus's index (the corpus builder installs its index there)."""
    return cache_path(cache_root, CACHE_KIND, _key(passages))


class BM25Index:
    """Ranks corpus rows for a question by BM25 over title + text."""

    def __init__(self, model: bm25s.BM25, terms: SearchTerms) -> None:
        self._model = model
        self._terms = terms
        self._known = set(model.vocab_dict)

    @classmethod
    def build(cls, passages: PassageStore, terms: SearchTerms) -> BM25Index:
        """Tokenise every passage; word ids are assigned on the fly to keep memory flat."""
        vocab: dict[str, int] = {}
        ids: list[list[int]] = []
        for documents in passages.iter_documents():
            for document in documents:
                ids.append([vocab.setdefault(word, len(vocab)) for word in terms(document)])
        model = new_model()
        model.index(Tokenized(ids=ids, vocab=vocab), show_progress=False)
        return cls(model, terms)

    @classmethod
    def cached(cls, passages: PassageStore, cache_root: Path) -> BM25Index:
        """Load the index of this corpus from the cache, building it there first if needed."""
        terms = SearchTerms()

        def build(folder: Path) -> None:
            logger.info("building the BM25 index of %s (%d passages)", passages.name, len(passages))
            cls.build(passages, terms)._model.save(folder, show_progress=False)

        folder = cached_dir(cache_root, CACHE_KIND, _key(passages), build)
        return cls(bm25s.BM25.load(folder, mmap=True, show_progress=False), terms)

    @classmethod
    def existing(cls, passages: PassageStore, cache_root: Path) -> BM25Index | None:
        """The cached index of this corpus, or None if it was never built."""
        folder = cache_folder(passages, cache_root)
        if not folder.is_dir():
            return None
        return cls(bm25s.BM25.load(folder, mmap=True, show_progress=False), SearchTerms())

    def search(self, query: str, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores, best first; empty when no query word occurs in the corpus."""
        words = [w for w in self._terms(query) if w in self._known]
        if not words:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        with step("search"):
            scores = self._model.get_scores(words)
            k = min(top_k, scores.shape[0])
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            top = top[scores[top] > 0]
        return top.astype(np.int64), scores[top].astype(np.float32)
