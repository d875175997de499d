"""Answer quality end to end on SQuAD-format question sets (JSQuAD): the product answers
each question (retrieval, prompt, the LLM, citations) and the answer is scored against
the gold answers.

- exact match and character-level F1, normalised as JSQuAD's scorer does for Japanese
  (NFKC, lower case, no whitespace or punctuation; citation markers removed first), the
  best over the gold answers;
- ``answer_contains``: a gold answer appears in the normalised answer (generated
  answers are sentences, so exact match is strict for them);
- ``citation_accuracy``: the answer cites the question's own paragraph (its gold
  passage); ``support``: a gold answer appears in a cited passage;
- the shares of search-only and failed answers, TTFT (question sent → first answer
  text, as the evaluator sees it) and the engine's tokens/s.

Results are kept per question as JSONL; a run with the same output file skips the
questions already there, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.schema import Answer
from pipeline.evaluation.squad import Question
from pipeline.serving.local import LocalRag
from pipeline.text.citations import CITATION, parse_citations


def normalize(text: str) -> str:
    """JSQuAD's answer normalisation for Japanese: NFKC, lower case, and no whitespace
    or punctuation (characters are the unit, so nothing else separates words)."""
    text = unicodedata.normalize("NFKC", CITATION.sub("", text)).lower()
    return "".join(c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P"))


def char_f1(prediction: str, gold: str) -> float:
    common = Counter(prediction) & Counter(gold)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


@dataclass
class AnswerResult:
    """One question's answer and its scores (a line of the JSONL output)."""

    id: str
    question: str
    gold: list[str]
    answer: str
    mode: str
    complete: bool
    error: str | None
    cited_rows: list[int]
    gold_row: int
    exact_match: float
    f1: float
    answer_contains: bool
    citation_accuracy: bool
    support: bool
    ttft_ms: float | None
    tokens_per_s: float | None
    seconds: float


def score(question: Question, answer: Answer, ttft_ms: float | None, seconds: float) -> AnswerResult:
    predicted = normalize(answer.text)
    golds = [g for g in (normalize(a) for a in question.answers) if g]
    cited_numbers = parse_citations(answer.text, len(answer.sources)).used
    cited = [s for s in answer.sources if s.number in cited_numbers]
    cited_texts = [normalize(s.text) for s in cited]
    return AnswerResult(
        id=question.id,
        question=question.text,
        gold=list(question.answers),
        answer=answer.text,
        mode=answer.mode,
        complete=answer.complete,
        error=answer.error.code if answer.error else None,
        cited_rows=[s.row for s in cited],
        gold_row=question.gold_row,
        exact_match=float(any(predicted == g for g in golds)),
        f1=max((char_f1(predicted, g) for g in golds), default=0.0),
        answer_contains=any(g in predicted for g in golds),
        citation_accuracy=any(s.row == question.gold_row for s in cited),
        support=any(g in text for g in golds for text in cited_texts),
        ttft_ms=ttft_ms,
        tokens_per_s=answer.timings.get("tokens_per_s"),
        seconds=seconds,
    )


def answer_one(rag: LocalRag, question: Question) -> AnswerResult:
    started = time.perf_counter()
    first_text_at = None
    stream = rag.answer(question.text)
    for chunk in stream:
        if chunk and first_text_at is None:
            first_text_at = time.perf_counter()
    generated = first_text_at is not None and stream.answer.mode != "search-only"
    ttft = (first_text_at - started) * 1000.0 if generated else None
    return score(question, stream.answer, ttft, time.perf_counter() - started)


def _records(output: Path) -> Iterator[dict]:
    """The results in ``output``, skipping what is not one (a torn last line from an
    interrupted run, which is then answered again)."""
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            yield record


def done_ids(output: Path | None) -> set[str]:
    """Questions already answered in ``output``."""
    if output is None or not output.exists():
        return set()
    return {record["id"] for record in _records(output)}


def _ends_a_line(path: Path) -> bool:
    with path.open("rb") as file:
        if file.seek(0, 2) == 0:
            return True
        file.seek(-1, 2)
        return file.read(1) == b"\n"


def read_results(output: Path, questions: Iterable[Question]) -> list[dict]:
    wanted = {q.id for q in questions}
    return list({record["id"]: record for record in _records(output) if record["id"] in wanted}.values())


def evaluate_answers(
    rag: LocalRag,
    questions: list[Question],
    output: Path | None,
    concurrency: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Answer every question not yet in ``output`` (``concurrency`` at a time), append
    each result as it comes, and return the results of all ``questions``."""
    skip = done_ids(output)
    todo = [q for q in questions if q.id not in skip]
    lock = threading.Lock()
    fresh: list[dict] = []
    sink = output.open("a", encoding="utf-8") if output is not None else None
    if sink is not None and not _ends_a_line(output):
        sink.write("\n")  # after a torn line, start on a line of our own

    def run(question: Question) -> None:
        result = asdict(answer_one(rag, question))
        with lock:
            fresh.append(result)
            if sink is not None:
                sink.write(json.dumps(result, ensure_ascii=False) + "\n")
                sink.flush()

    from tqdm.auto import tqdm

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(tqdm(pool.map(run, todo), total=len(todo), disable=not progress, desc="answers"))
    finally:
        if sink is not None:
            sink.close()
    return read_results(output, questions) if output is not None else fresh


def summarize(results: list[dict], settings_used: dict) -> dict:
    """The summary of ``results``: means of the scores, shares, and medians of speed."""
    count = len(results)

    def mean(key: str) -> float:
        return round(sum(float(r[key]) for r in results) / count, 4) if count else 0.0

    def median(key: str) -> float | None:
        values = [r[key] for r in results if r.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    return {
        "questions": count,
        "exact_match": mean("exact_match"),
        "f1": mean("f1"),
        "answer_contains": mean("answer_contains"),
        "citation_accuracy": mean("citation_accuracy"),
        "support": mean("support"),
        "search_only": round(sum(r["mode"] == "search-only" for r in results) / count, 4) if count else 0.0,
        "failed": round(sum(r["error"] is not None for r in results) / count, 4) if count else 0.0,
        "ttft_p50_ms": median("ttft_ms"),
        "tokens_per_s_p50": median("tokens_per_s"),
        **settings_used,
    }


def summary_table(summary: dict) -> str:
    width = max(len(key) for key in summary)
    return "\n".join(f"{key:<{width}}  {'-' if value is None else value}" for key, value in summary.items())
