"""Japanese word segmentation: MeCab (fugashi) with the UniDic-lite dictionary.

Text is NFKC-normalised and lower-cased (ＡＢＣ, ｱｲｳ and ABC meet), inflected words are
reduced to their written base form (書いた -> 書く), and particles, auxiliary verbs,
symbols, whitespace and pronouns (何, どこ, それ: question words and pointers, which say
nothing about a topic) are dropped. On JSQuAD written base forms are as good as UniDic
lemmas (which turn proper nouns into katakana readings: 北海道 -> ホッカイドウ) and better
than keeping every token. BM25 adds character bigrams to these words
(:mod:`pipeline.text.terms`).
"""

from __future__ import annotations

import queue
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import fugashi

from pipeline.core.unicode import well_formed

_SKIPPED_POS = frozenset({"助詞", "助動詞", "補助記号", "記号", "空白", "代名詞"})
#: The written base form's place among a UniDic node's features (fugashi's ``orthBase``).
_ORTH_BASE = 10

#: Idle MeCab taggers, shared by every tokenizer of the process.
_idle_taggers: queue.SimpleQueue[fugashi.Tagger] = queue.SimpleQueue()


class JapaneseTokenizer:
    """Callable text -> list of normalised words. Thread-safe.

    A MeCab tagger must not be used by two threads at once, and each one created costs
    about 5 MiB that fugashi never gives back, even when the tagger is dropped. A tagger
    per thread therefore leaked memory as the API server's worker threads came and went
    (the 30-minute soak grew by 14 GB); taggers are borrowed from a process-wide pool
    instead, which only grows to the largest number of simultaneous callers.
    """

    def __call__(self, text: str) -> list[str]:
        return content_words(normalize(text))


def normalize(text: str) -> str:
    """NFKC and lower case, lone surrogates replaced (MeCab takes UTF-8 only)."""
    return unicodedata.normalize("NFKC", well_formed(text)).lower()


class Word(NamedTuple):
    surface: str
    #: The written base form (書いた -> 書く), or the surface when UniDic has none.
    base: str
    pos1: str
    pos2: str


@contextmanager
def _borrowed_tagger() -> Iterator[fugashi.Tagger]:
    """A tagger from the process-wide pool (see :class:`JapaneseTokenizer`). Its nodes
    point into its lattice: read them before the block ends."""
    try:
        tagger = _idle_taggers.get_nowait()
    except queue.Empty:
        tagger = fugashi.Tagger()
    try:
        yield tagger
    finally:
        _idle_taggers.put(tagger)


def analyze(text: str) -> list[Word]:
    """MeCab's words with their parts of speech (UniDic). Thread-safe."""
    with _borrowed_tagger() as tagger:
        return [_word(node.surface, node.feature) for node in tagger(text)]


def content_words(text: str) -> list[str]:
    """The written base forms of ``text``'s words less the skipped parts of speech: what
    :class:`JapaneseTokenizer` gives for normalised text. Thread-safe.

    Reads each node's raw UniDic features (the part of speech first, the written base form
    eleventh; an unknown word has six) rather than fugashi's parsed ones, which takes a
    third off a BM25 build's terms step. Splitting at commas is exact up to the base form:
    no entry of unidic-lite quotes a field before it (the quoted ones, which may hold
    commas, come later; ``tests/test_tokenizer.py`` checks the dictionary)."""
    words = []
    with _borrowed_tagger() as tagger:
        for node in tagger(text):
            raw = node.feature_raw
            if raw.partition(",")[0] not in _SKIPPED_POS:
                fields = raw.split(",", _ORTH_BASE + 1)
                words.append((len(fields) > _ORTH_BASE and fields[_ORTH_BASE]) or node.surface)
    return words


def _word(surface: str, feature) -> Word:
    """fugashi parses a node's features anew at every ``node.feature``: read them once
    (a third of the demo corpus's BM25 build on a first start)."""
    return Word(surface, feature.orthBase or surface, feature.pos1, feature.pos2)
