"""The follow-up rule on its own data set (tests/data/followups.jsonl: pairs over the demo
corpus's articles, written for this rule; docs/retrieval.md reports the figures)."""

import json

import pytest

from pipeline.text.followup import follow_up_reason, is_follow_up
from tests.conftest import ROOT

PAIRS = [json.loads(line) for line in (ROOT / "tests" / "data" / "followups.jsonl").read_text("utf-8").splitlines()]


def test_the_set_is_large_enough_and_balanced():
    dependent = sum(p["dependent"] for p in PAIRS)
    assert len(PAIRS) >= 100 and 0.3 < dependent / len(PAIRS) < 0.7


def test_accuracy_on_the_set():
    right = sum(is_follow_up(p["question"]) == p["dependent"] for p in PAIRS)
    flagged = [p for p in PAIRS if is_follow_up(p["question"])]
    precision = sum(p["dependent"] for p in flagged) / len(flagged)
    recall = sum(p["dependent"] for p in flagged) / sum(p["dependent"] for p in PAIRS)
    assert right / len(PAIRS) >= 0.95 and precision >= 0.95 and recall >= 0.94


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
