"""Citation markers in generated answers: ``[1]``, ``[1][2]``, ``[1, 2]``, ``［１］``.

Each answer sentence is paired with the source numbers cited in it (a marker right
after the sentence's full stop still belongs to that sentence). Numbers that point at no
source are reported, never silently dropped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from pipeline.text.sentences import sentence_spans

CITATION = re.compile(r"[\[［]\s*([0-9０-９]{1,3}(?:\s*[,，、]\s*[0-9０-９]{1,3})*)\s*[\]］]")
_LEADING = re.compile(rf"^(?:\s*{CITATION.pattern})+")


@dataclass
class CitedSentence:
    text: str
    numbers: list[int]


@dataclass
class CitationReport:
    sentences: list[CitedSentence] = field(default_factory=list)
    #: Valid source numbers cited anywhere, in order of first use.
    used: list[int] = field(default_factory=list)
    #: Cited numbers that point at no source.
    invalid: list[int] = field(default_factory=list)


def numbers_in(marker_body: str) -> list[int]:
    return [int(unicodedata.normalize("NFKC", n)) for n in re.split(r"\s*[,，、]\s*", marker_body.strip())]


def parse_citations(answer: str, source_count: int) -> CitationReport:
    report = CitationReport()
    for start, end in sentence_spans(answer):
        sentence = answer[start:end]
        leading = _LEADING.match(sentence)
        if leading and report.sentences:  # "…である。[1] 次の文" : [1] closes the previous sentence
            previous = report.sentences[-1]
            previous.text += leading.group()
            previous.numbers.extend(_numbers(leading.group()))
            _record(report, _numbers(leading.group()), source_count)
            sentence = sentence[leading.end() :]
            if not sentence.strip():
                continue
        numbers = _numbers(sentence)
        report.sentences.append(CitedSentence(sentence, numbers))
        _record(report, numbers, source_count)
    return report


def _numbers(text: str) -> list[int]:
    return [n for m in CITATION.finditer(text) for n in numbers_in(m.group(1))]


def _record(report: CitationReport, numbers: list[int], source_count: int) -> None:
    for number in numbers:
        target = report.used if 1 <= number <= source_count else report.invalid
        if number not in target:
            target.append(number)
