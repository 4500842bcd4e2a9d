"""`make demo` end to end: what the README promises, run the way the Makefile runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from local import demo

BAD = Path(__file__).resolve().parents[1] / "data" / "bad" / "unrecognized_role.jsonl"


def test_demo_dataset_runs_through_the_deployed_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the bundled demo dataset WHEN the demo runs
    code = demo.main([])
    out = capsys.readouterr().out
    # THEN the upload started one run by itself, it succeeded, and the splits exist
    assert code == 0, out
    assert ": SUCCEEDED" in out and "Stage Succeeded  stage=validate" in out
    assert "/data/train.jsonl" in out and "/data/eval.jsonl" in out
    assert "uploaded object untouched: yes" in out


def test_an_invalid_file_ends_with_the_report_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--data", str(BAD)])
    out = capsys.readouterr().out
    assert code == 1
    assert ": FAILED" in out and "outcome=rejected" in out
    assert "line 12: messages[2].role: unrecognized_role 'assitant'" in out
    assert "/data/train.jsonl" not in out
