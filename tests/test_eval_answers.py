"""``python -m pipeline.evaluation --answers``: the product answers JSQuAD questions through an
OpenAI-compatible server (the stand-in: its scores mean nothing, the plumbing is what is
checked) and the answers are scored."""

import json

import pytest

from pipeline.evaluation import __main__ as eval_cli
from pipeline.evaluation.answers import char_f1, normalize
from tests.conftest import StandinServer
from tests.helpers import CHAT_MODEL, last_json

SUMMARY_KEYS = {
    "questions", "exact_match", "f1", "answer_contains", "citation_accuracy", "support", "search_only", "failed",
    "ttft_p50_ms", "tokens_per_s_p50", "model", "prompt_format", "llm_backend", "retriever",
}  # fmt: skip


def test_normalized_as_jsquad_scores_japanese():
    assert normalize("「５月から７月」にかけて。[1]") == "5月から7月にかけて"
    assert normalize(" Ａ ｂ、Ｃ！ [2, 3]") == "abc"
    assert char_f1("5月から7月", "5月から7月") == 1.0
    assert char_f1("北海道", "沖縄") == 0.0
    assert char_f1("北海道と小笠原諸島", "小笠原諸島") == pytest.approx(2 * (5 / 9) * 1.0 / (5 / 9 + 1.0))


@pytest.fixture(scope="module")
def server():
    standin = StandinServer()
    yield standin
    standin.stop()


def run(capsys, *args):
    code = eval_cli.main(["--answers", *args, "--json"])
    out = capsys.readouterr()
    return code, (last_json(out.out) if code == 0 else None), out


def test_answers_are_scored_per_question_and_summed_up(small_sets, server, isolated_env, tmp_path, capsys):
    qa, _, _ = small_sets
    output = tmp_path / "results.jsonl"
    code, summary, out = run(capsys, "--qa", str(qa), "--llm-url", server.base_url, "--max-questions", "9",
                             "--concurrency", "3", "--output", str(output))  # fmt: skip
    assert code == 0, out.err
    assert set(summary) >= SUMMARY_KEYS and summary["questions"] == 9
    assert (summary["llm_backend"], summary["prompt_format"], summary["retriever"]) == ("remote", "llama2", "bm25")
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 9 and len({r["id"] for r in rows}) == 9
    assert all(r["mode"] == "demo" and r["complete"] and r["error"] is None and "[1]" in r["answer"] for r in rows)
    for key in ("exact_match", "f1", "answer_contains", "citation_accuracy", "support"):
        assert summary[key] == round(sum(float(r[key]) for r in rows) / 9, 4)
    for row in rows:  # each score follows from what the row holds
        assert row["citation_accuracy"] == (row["gold_row"] in row["cited_rows"])
        assert row["answer_contains"] == any(normalize(g) in normalize(row["answer"]) for g in row["gold"])
        assert row["ttft_ms"] > 0 and row["tokens_per_s"] > 0
    assert summary["search_only"] == 0.0 and summary["failed"] == 0.0 and summary["ttft_p50_ms"] > 0
    assert "citation_accuracy" in out.out  # the table before the JSON line


def test_an_interrupted_run_resumes_where_it_stopped(small_sets, isolated_env, tmp_path, capsys):
    qa, _, _ = small_sets
    output = tmp_path / "results.jsonl"
    standin = StandinServer()
    try:
        code, _, out = run(capsys, "--qa", str(qa), "--llm-url", standin.base_url, "--max-questions", "4",
                           "--output", str(output))  # fmt: skip
        assert code == 0, out.err
        lines = output.read_text(encoding="utf-8").splitlines()
        output.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40], encoding="utf-8")  # torn by an interruption
        code, summary, out = run(capsys, "--qa", str(qa), "--llm-url", standin.base_url, "--max-questions", "7",
                                 "--output", str(output))  # fmt: skip
        assert code == 0, out.err
        assert standin.stats()["completed"] == 4 + 4  # only the torn one and the three new ones again
    finally:
        standin.stop()
    ids = [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines() if line.endswith("}")]
    assert len(ids) == len(set(ids)) == 7 and summary["questions"] == 7


def test_a_chat_model_and_no_llm_at_all(small_sets, isolated_env, capsys):
    qa, _, _ = small_sets
    chat = StandinServer(model=CHAT_MODEL)
    try:
        code, summary, out = run(capsys, "--qa", str(qa), "--llm-url", chat.base_url, "--llm-model", CHAT_MODEL,
                                 "--max-questions", "3")  # fmt: skip
    finally:
        chat.stop()
    assert code == 0, out.err
    assert summary["prompt_format"] == "chat-template" and summary["model"] == CHAT_MODEL and summary["failed"] == 0
    code, summary, out = run(capsys, "--qa", str(qa), "--max-questions", "3")
    assert code == 0, out.err
    assert summary["llm_backend"] == "none" and summary["search_only"] == 1.0 and summary["ttft_p50_ms"] is None


def test_bad_arguments_and_files_exit_2(tmp_path, isolated_env, capsys):
    assert eval_cli.main(["--answers", "--qa", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert eval_cli.main(["--answers", "--qa", str(tmp_path / "missing.json"), "--concurrency", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--qa", str(tmp_path / "missing.json")])  # retrieval needs --retriever
    assert exit_info.value.code == 2
