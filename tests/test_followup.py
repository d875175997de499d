"""The follow-up rule on its own data set (tests/data/followups.jsonl: pairs over the demo
corpus's articles, written for this rule) and on a held-out set written after the rule
was fixed (tests/data/followups_heldout.jsonl); docs/retrieval.md reports both figures."""

import json

import pytest

from pipeline.text.followup import follow_up_reason, is_follow_up
from tests.conftest import ROOT


def _pairs(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / "tests" / "data" / name).read_text("utf-8").splitlines()]


def _scores(pairs: list[dict]) -> tuple[float, float, float]:
    """Accuracy, precision and recall of is_follow_up on labelled pairs."""
    right = sum(is_follow_up(p["question"]) == p["dependent"] for p in pairs)
    flagged = [p for p in pairs if is_follow_up(p["question"])]
    hits = sum(p["dependent"] for p in flagged)
    return right / len(pairs), hits / len(flagged), hits / sum(p["dependent"] for p in pairs)


PAIRS = _pairs("followups.jsonl")
HELD_OUT = _pairs("followups_heldout.jsonl")


def test_the_set_is_large_enough_and_balanced():
    dependent = sum(p["dependent"] for p in PAIRS)
    assert len(PAIRS) >= 100 and 0.3 < dependent / len(PAIRS) < 0.7


def test_accuracy_on_the_set():
    accuracy, precision, recall = _scores(PAIRS)
    assert accuracy >= 0.95 and precision >= 0.95 and recall >= 0.94


def test_accuracy_on_the_held_out_set():
    """The held-out figure (81.7 %) is what docs/retrieval.md promises on new questions;
    a change to the rule that loses it fails here, and a change tuned on this set would
    make the set no longer held out (write a new one instead)."""
    assert len(HELD_OUT) >= 60 and {p["previous"] for p in HELD_OUT}.isdisjoint(p["previous"] for p in PAIRS)
    accuracy, precision, recall = _scores(HELD_OUT)
    assert accuracy >= 0.80 and precision >= 0.85 and recall >= 0.83


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        ("それはいつ？", "pointing"),
        ("同社の本社はどこか", "pointing"),
        ("じゃあ台湾は？", "connective"),
        ("北海道は？", "topic_only"),
        ("人口は？", "topic_only"),
        ("何人兄弟？", "unnamed"),
        ("ラオスの首都はどこですか", None),
        ("炭化水素とは何か", None),
        ("梅雨前線はどこに停滞するか。", None),
        ("同君連合の具体例は何か", None),
    ],
)
def test_reasons(question, reason):
    assert follow_up_reason(question) == reason
