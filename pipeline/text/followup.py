"""Whether a question leans on the previous one, decided from its words alone: the rule
that makes follow-ups standalone when no LLM can rewrite them.

A question depends on the conversation when it points back (その, それ, 彼, 同社, 当時,
then-connectives such as では or じゃあ), when it asks about something it does not name
(どうか, 何人兄弟？, 人口は？, 開局したのはいつ？), or when it only names a new topic for
the previous question (北海道は？). It stands alone when it names what it asks about: a
proper noun, a term in Latin letters, a definition (Xとは), or a relation (ラオスの首都).
These are properties of Japanese questions, not of any question set;
``tests/data/followups.jsonl`` measures how well they hold (docs/retrieval.md).
"""

from __future__ import annotations

import re
import unicodedata

from pipeline.text.tokenizer import Word, analyze

#: Pronouns that point back (UniDic tags question words such as 何, いつ as pronouns too).
POINTING_PRONOUNS = frozenset(
    {
        "それ",
        "これ",
        "あれ",
        "そこ",
        "ここ",
        "あそこ",
        "そちら",
        "こちら",
        "あちら",
        "彼",
        "彼女",
        "彼ら",
        "それら",
        "これら",
        "あれら",
    }
)
POINTING_WORDS = frozenset(
    {
        "この",
        "その",
        "あの",
        "こんな",
        "そんな",
        "あんな",
        "こうした",
        "そうした",
        "同じ",
        "当時",
        "前者",
        "後者",
        "上記",
        "前述",
        "同様",
        "そう",
        "こう",
        "どう",
    }
)
LEADING_CONNECTIVES = frozenset(
    {
        "では",
        "じゃあ",
        "じゃ",
        "で",
        "なら",
        "ほか",
        "他",
        "あと",
        "ちなみに",
        "それでは",
        "それなら",
        "さらに",
        "また",
        "一方",
        "逆に",
    }
)
TOPIC_PARTICLES = frozenset({"は", "では", "も", "って"})
LATIN = re.compile(r"[A-Za-z]{2,}")


def follow_up_reason(question: str) -> str | None:
    """Why ``question`` depends on the previous one ('pointing', 'connective',
    'topic_only', 'unnamed'), or None when it stands alone."""
    text = unicodedata.normalize("NFKC", question).strip()
    words = [w for w in analyze(text) if w.pos1 not in ("補助記号", "空白")]
    if not words:
        return None
    if words[0].pos1 == "接続詞" or words[0].surface in LEADING_CONNECTIVES:
        return "connective"
    if any(w.surface in POINTING_WORDS or (w.pos1 == "代名詞" and w.surface in POINTING_PRONOUNS) for w in words):
        return "pointing"
    for word, following in zip(words, [*words[1:], None], strict=True):
        same = word.pos1 == "名詞" and len(word.surface) == 2 and word.surface.startswith("同")
        if same and (following is None or following.pos1 != "名詞"):  # 同社, 同年; not 同君連合
            return "pointing"
    if _topic_only(words):
        return "topic_only"
    if not _names_its_subject(text, words):
        return "unnamed"
    return None


def is_follow_up(question: str) -> bool:
    return follow_up_reason(question) is not None


def _topic_only(words: list[Word]) -> bool:
    """'北海道は？', 'フランスでは？': one noun phrase and a topic particle, nothing asked."""
    *phrase, last = words
    if last.surface not in TOPIC_PARTICLES and not (last.surface == "は" and phrase and phrase[-1].surface == "で"):
        return False
    phrase = [w for w in phrase if w.surface != "で"]
    return bool(phrase) and all(w.pos1 in ("名詞", "接頭辞", "接尾辞") for w in phrase)


def _names_its_subject(text: str, words: list[Word]) -> bool:
    """A proper noun, a Latin-letter term, a definition (Xとは), a topic with what is asked
    of it (梅雨前線はどこに停滞するか), or a relation asked about (応力の単位は何か; a bare
    relation such as 妻の名前は？ names nothing unless its owner is a proper noun)."""
    if LATIN.search(text) or "とは" in text:
        return True
    if any(w.pos2 == "固有名詞" for w in words):
        return _asks_about_it(words)
    asks = _has_predicate(words)
    for before, particle, after in zip(words, words[1:], words[2:], strict=False):
        relation = particle.surface == "の" and particle.pos2 == "格助詞"
        if relation and before.pos1 in ("名詞", "接尾辞") and after.pos1 == "名詞" and asks:
            return True
    topic = next((i for i, w in enumerate(words) if w.surface == "は" and w.pos2 == "係助詞"), None)
    return topic is not None and topic > 0 and words[topic - 1].pos1 in ("名詞", "接尾辞") and _has_verb(words[topic:])


def _has_predicate(words: list[Word]) -> bool:
    """Something is asked: a verb, an adjective, or a question word with か/だ/です."""
    return _has_verb(words) or any(w.surface in ("か", "です", "だ", "でしょう") for w in words)


def _has_verb(words: list[Word]) -> bool:
    return any(w.pos1 in ("動詞", "形容詞") for w in words)


def _asks_about_it(words: list[Word]) -> bool:
    """A proper noun as the topic of a question that says what it asks: not a bare
    'where/when did it happen' about something else ('ウィーンでは何の職に就いていたか')."""
    first_proper = next(i for i, w in enumerate(words) if w.pos2 == "固有名詞")
    after = words[first_proper + 1 : first_proper + 3]
    return not (len(after) == 2 and after[0].surface == "で" and after[1].surface == "は")
