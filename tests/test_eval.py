import subprocess
import sys

from pipeline.evaluation import __main__ as eval_cli
from tests.conftest import ROOT
from tests.helpers import last_json


def test_bm25_json_report_has_the_contract_keys(small_sets, isolated_env, capsys):
    qa, distractors, counts = small_sets
    assert eval_cli.main(["--qa", str(qa), "--corpus", str(distractors), "--retriever", "bm25", "--json"]) == 0
    out = capsys.readouterr()
    report = last_json(out.out)
    assert {
        "retriever",
        "questions",
        "passages",
        "recall@1",
        "recall@5",
        "recall@10",
        "mrr@10",
        "seconds",
    } <= set(report)
    assert report["retriever"] == "bm25"
    assert report["questions"] == counts["questions"]
    assert report["passages"] == counts["qa_passages"] + counts["distractor_passages"]
    assert 0.8 <= report["recall@1"] <= report["recall@5"] <= report["recall@10"] <= 1.0
    assert report["recall@1"] <= report["mrr@10"] <= report["recall@10"]
    assert "recall@5" in out.out.splitlines()[5]  # the readable table precedes the JSON
    assert "eval bm25" in out.err  # progress bar on stderr


def test_max_questions_takes_the_first_questions(small_sets, isolated_env, capsys):
    qa, _, _ = small_sets
    assert eval_cli.main(["--qa", str(qa), "--retriever", "bm25", "--max-questions", "7", "--json"]) == 0
    report = last_json(capsys.readouterr().out)
    assert report["questions"] == 7
    assert round(report["recall@10"] * 7, 3) == round(report["recall@10"] * 7)


def test_dense_and_hybrid_use_the_available_model(small_sets, isolated_env, capsys):
    qa, _, counts = small_sets
    for retriever in ("dense", "hybrid"):
        assert eval_cli.main(["--qa", str(qa), "--retriever", retriever, "--max-questions", "30", "--json"]) == 0
        report = last_json(capsys.readouterr().out)
        assert report["retriever"] == retriever and report["questions"] == 30
        assert report["passages"] == counts["qa_passages"]
        assert "all-MiniLM-L6-v2" in report["embedding_model"]
        assert report["recall@10"] > 0.2


def test_missing_and_malformed_files_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"title": "x"}]}', encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    for path in (tmp_path / "absent.json", bad, broken):
        run = subprocess.run(
            [sys.executable, "-m", "pipeline.evaluation", "--qa", str(path), "--retriever", "bm25"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert run.returncode == 2
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]


def test_distractor_questions_are_ignored(small_sets, isolated_env, capsys):
    qa, distractors, counts = small_sets
    assert eval_cli.main(["--qa", str(distractors), "--corpus", str(qa), "--retriever", "bm25", "--json"]) == 0
    report = last_json(capsys.readouterr().out)
    assert report["passages"] == counts["qa_passages"] + counts["distractor_passages"]
    assert report["questions"] != counts["questions"]
