"""Passages of up to 400 characters, made as ``passages-c400`` is.

wikipedia-utils' ``make_passages_from_paragraphs.py --passage_unit sentence
--passage_boundary section --max_passage_length 400 --as_long_as_possible``: the
paragraphs of a section are split into sentences; a sentence over 400 characters is
dropped; the sentences are appended to the passage being built, in order and with no
separator (across paragraphs too), until the next one would take it over 400 characters,
when the passage is finished and a new one begun; a new section or page finishes it.

One difference: sentences end where :func:`pipeline.text.sentences.sentence_spans`
ends them (。！？!? and the closing brackets that follow) instead of at MeCab's 句点
tokens, so a closing bracket after 。 stays with its sentence. Whitespace between sentences
stays with the sentence after it, so passages joined give back their paragraphs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.text.sentences import sentence_spans

MAX_PASSAGE_CHARS = 400


def sentences(paragraph: str) -> list[str]:
    """The paragraph cut at its sentence ends; joined, the pieces give back the paragraph
    from its first sentence on."""
    starts = [start for start, _ in sentence_spans(paragraph)]
    return [paragraph[start:end] for start, end in zip(starts, [*starts[1:], len(paragraph)], strict=True)]


@dataclass
class ChunkStats:
    """What chunking left out, for the build manifest."""

    sentences_over_limit: int = 0


def passages(
    sections: Iterable[tuple[str, list[str]]], max_chars: int = MAX_PASSAGE_CHARS, stats: ChunkStats | None = None
) -> Iterator[tuple[str, str]]:
    """(section, passage text) for one page's sections, in order."""
    for section, paragraphs in sections:
        buffer = ""
        for paragraph in paragraphs:
            for sentence in sentences(paragraph):
                if len(sentence) > max_chars:
                    if stats is not None:
                        stats.sentences_over_limit += 1
                    continue
                if len(buffer) + len(sentence) > max_chars:
                    yield section, buffer
                    buffer = ""
                buffer += sentence
        if buffer:
            yield section, buffer
