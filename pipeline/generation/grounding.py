"""How an answer rests on its sources: its ``[n]`` citations checked against the
numbered passages, the supporting sentence of each cited passage highlighted, and the
search-only answer that quotes the best-matching sentence when no model answers."""

from __future__ import annotations

from pipeline.core.schema import Answer, Citations, Notice
from pipeline.text.citations import parse_citations
from pipeline.text.sentences import best_sentence
from pipeline.text.tokenizer import JapaneseTokenizer

NOTHING_FOUND = "該当する資料が見つかりませんでした。"


def check_citations(answer: Answer, tokenizer: JapaneseTokenizer) -> None:
    """Record which sources the generated text cites (and which numbers match none),
    and highlight in each cited passage the sentence that best matches what the answer
    says with it."""
    report = parse_citations(answer.text, len(answer.sources))
    answer.citations = Citations(used=report.used, invalid=report.invalid)
    if report.invalid:
        numbers = ", ".join(f"[{n}]" for n in report.invalid)
        answer.notices.append(
            Notice(
                code="invalid_citation",
                en=f"the answer cites {numbers}, which match no source",
                ja=f"回答が存在しない資料番号 {numbers} を引用しています。その部分の根拠は確認できません。",
            )
        )
    for source in answer.sources:
        claims = " ".join(s.text for s in report.sentences if source.number in s.numbers)
        if claims:
            source.highlight = best_sentence(claims, source.text, tokenizer)


def search_only_text(answer: Answer, tokenizer: JapaneseTokenizer) -> str:
    """The best-matching sentence of the top passage, quoted and cited as [1]; marks the
    answer search-only and complete."""
    answer.mode, answer.complete = "search-only", True
    if not answer.sources:
        answer.text = NOTHING_FOUND
    else:
        top = answer.sources[0]
        top.highlight = best_sentence(answer.standalone_question, top.text, tokenizer)
        quote = top.text[top.highlight[0] : top.highlight[1]] if top.highlight else top.text[:200]
        answer.text = f"（検索のみ）最も関連する資料の該当箇所です。\n\n「{quote.strip()}」[1]"
    report = parse_citations(answer.text, len(answer.sources))
    answer.citations = Citations(used=report.used, invalid=report.invalid)
    return answer.text
