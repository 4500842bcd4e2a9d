"""`make demo` end to end: what the README promises, run the way the Makefile runs it (real containers on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from local import demo

BAD = Path(__file__).resolve().parents[1] / "data" / "bad" / "unrecognized_role.jsonl"


def test_demo_dataset_trains_evaluates_and_answers(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the bundled demo dataset WHEN the demo runs
    code = demo.main([])
    out = capsys.readouterr().out
    # THEN the upload started one run by itself, every stage ran and the run succeeded
    assert code == 0, out
    assert ": SUCCEEDED" in out
    for stage in ("validate", "train", "merge", "evaluate", "register"):
        assert f"    {stage:<10} succeeded" in out, stage
    assert "    quantize   skipped" in out and "    deploy     skipped" in out
    # AND the fine-tuned model beat the base (the gate needs +0.2 exact match) and answers a held-out question
    assert "Evaluate succeeded" in out and "Gate: ✅ passed" in out
    answer = out.split("6/6", 1)[1]
    expected = answer.split("expected:", 1)[1].split("\n", 1)[0].strip()
    assert f"answer:   {expected}" in answer
    # AND Slack got a message for each stage event and the run's, and the upload is untouched
    assert "Run succeeded" in out and "uploaded object untouched: yes" in out
    assert int(out.split("Slack messages received: ", 1)[1].split("\n", 1)[0]) >= 12


def test_an_invalid_file_ends_with_the_report_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--data", str(BAD)])
    out = capsys.readouterr().out
    assert code == 1
    assert ": FAILED" in out and "Run rejected" in out
    assert "line 12: messages[2].role: unrecognized_role 'assitant'" in out
    assert "    train " not in out and "/data/train.jsonl" not in out
