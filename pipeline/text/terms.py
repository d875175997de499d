"""What BM25 indexes and searches for: the words of :class:`JapaneseTokenizer` and the
character bigrams of the text, in one bag of terms.

Words alone depend on one segmentation: a compound MeCab splits one way in the passage
and another in the question (梅雨明け, 生命の起源), or a name it does not know, matches
nothing. Character bigrams match whatever the segmentation, while the words keep the
base forms that bigrams of inflected text miss. On JSQuAD v1.3 (4,442 questions, 1,145
paragraphs) each change did, measured one after the other (docs/retrieval.md):
NFKC/lower-case and no pronouns +0.1 point recall@1; bigrams in the same index +3.0
points recall@1 and +0.3 recall@5; BM25's k1 from 1.5 to 1.2, the usual default
(Robertson and Zaragoza), +0.1 point recall@1.
"""

from __future__ import annotations

import unicodedata

from pipeline.text.tokenizer import content_words, normalize

#: Bumped whenever the terms change, so cached BM25 indexes are rebuilt.
TERMS_VERSION = "words-nfkc-bigrams-1"


def character_bigrams(text: str) -> list[str]:
    """Overlapping pairs of characters within each run of letters, digits and kana of the
    normalised text (punctuation, symbols and spaces break runs; a one-character run stays
    itself)."""
    runs, run = [], []
    for char in text:
        if unicodedata.category(char)[0] in "LN":
            run.append(char)
        elif run:
            runs.append("".join(run))
            run = []
    if run:
        runs.append("".join(run))
    return [bigram for r in runs for bigram in ([r] if len(r) == 1 else (r[i : i + 2] for i in range(len(r) - 1)))]


class SearchTerms:
    """Callable text -> BM25 terms (:class:`~pipeline.text.tokenizer.JapaneseTokenizer`'s
    words, then bigrams). Thread-safe."""

    def __call__(self, text: str) -> list[str]:
        text = normalize(text)
        return [*content_words(text), *character_bigrams(text)]
