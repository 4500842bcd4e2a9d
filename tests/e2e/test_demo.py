"""`make demo` end to end: what the README promises, run the way the Makefile runs it (real containers on CPU)."""

from __future__ import annotations

import json
import re
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
    for stage in ("validate", "train", "merge", "evaluate", "register", "deploy"):
        assert f"    {stage:<10} succeeded" in out, stage
    assert "    quantize   skipped" in out
    # AND the fine-tuned model beat the base (the gate needs +0.2 exact match), was deployed, passed its smoke test
    assert "Evaluate succeeded" in out and "Gate: ✅ passed" in out
    # AND the stage events reached Slack in pipeline order
    titles = re.findall(r"━━ \S+ (\w+ \w+) · ", out)
    assert titles == [
        f"{stage} {status}"
        for stage, statuses in [
            ("Validate", ("started", "succeeded")),
            ("Train", ("started", "succeeded")),
            ("Merge", ("started", "succeeded")),
            ("Quantize", ("skipped",)),
            ("Evaluate", ("started", "succeeded")),
            ("Register", ("started", "succeeded")),
            ("Deploy", ("started", "succeeded")),
            ("Run", ("succeeded",)),
        ]
        for status in statuses
    ]
    # AND the ledger holds every stage's artifacts: splits, adapter, merged model, evaluation, package, endpoint
    artifacts = out.split("artifacts (run ledger):", 1)[1].split("validation report:", 1)[0]
    for name in ("validate.train", "validate.eval", "train.adapter", "merge.merged", "evaluate.evaluation"):
        assert f"    {name}: s3://" in artifacts, name
    assert "    register.model_package: arn:aws:sagemaker:" in artifacts
    assert "    deploy.endpoint: " in artifacts
    assert "Deploy succeeded" in out and "*Smoke test answer*" in out
    # AND the deployed endpoint (a real server on localhost, asked through InvokeEndpoint) answers a held-out question
    answer = out.split("6/6 the deployed endpoint", 1)[1]
    assert "http://127.0.0.1:" in answer.split("\n", 1)[0]
    expected = answer.split("expected:", 1)[1].split("\n", 1)[0].strip()
    assert f"answer:   {expected}" in answer
    # AND Slack got a message for each stage event and the run's, and the upload is untouched
    assert "Run succeeded" in out and "uploaded object untouched: yes" in out
    assert "deployed to endpoint" in out
    assert int(out.split("Slack messages received: ", 1)[1].split("\n", 1)[0]) >= 14


def test_an_invalid_file_ends_with_the_report_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--data", str(BAD)])
    out = capsys.readouterr().out
    assert code == 1
    assert ": FAILED" in out and "Run rejected" in out
    assert "line 12: messages[2].role: unrecognized_role 'assitant'" in out
    assert "    train " not in out and "/data/train.jsonl" not in out


def test_a_training_failure_surfaces_in_slack_with_the_containers_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the demo data with a sidecar asking for QLoRA, which the real training container refuses on a CPU
    data = tmp_path / "tickets.jsonl"
    data.write_bytes(demo.DEMO_DATA.read_bytes())
    sidecar = {**demo.DEMO_SIDECAR, "training": {**demo.DEMO_SIDECAR["training"], "qlora": True}}
    (tmp_path / "tickets.tuneplane.json").write_text(json.dumps(sidecar))

    # WHEN the demo runs it
    code = demo.main(["--data", str(data)])
    out = capsys.readouterr().out

    # THEN the run failed at training, and the Slack messages carry the container's own one-line reason
    assert code == 1, out
    assert ": FAILED" in out and "    train      failed" in out
    slack = out.split("4/6", 1)[1].split("5/6", 1)[0]
    assert "Train failed" in slack and "Run failed" in slack
    assert "qlora=true needs a CUDA GPU" in slack
    # AND nothing after training ran, and nothing was deployed
    assert "    merge " not in out and "6/6" not in out
