"""Japanese sentence boundaries and the sentence of a passage that best matches a text.

Used to highlight, in a passage, the sentence that answers the question (search-only
answers) or supports a cited answer sentence (source cards).
"""

from __future__ import annotations

import math
import re

from pipeline.text.tokenizer import JapaneseTokenizer

_SENTENCE = re.compile(r"[^。！？!?\n]*[。！？!?]+[」』）)]*|[^。！？!?\n]+|\n+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence; line breaks end sentences and belong to none."""
    return [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.group().strip()]


def best_sentence(query: str, text: str, tokenizer: JapaneseTokenizer) -> tuple[int, int] | None:
    """The span of the sentence of ``text`` sharing the most words with ``query``
    (length-normalised); None when no sentence shares a word."""
    query_words = set(tokenizer(query))
    best, best_score = None, 0.0
    for start, end in sentence_spans(text):
        words = set(tokenizer(text[start:end]))
        if not words:
            continue
        score = len(query_words & words) / math.sqrt(len(words))
        if score > best_score:
            best, best_score = (start, end), score
    return best
