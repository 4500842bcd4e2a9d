"""The Validate flow of the real state machine: template.yaml deployed into moto, pipeline.asl.json executed by
moto's interpreter, the real Validate handler run in process (local/cloud).

These tests start executions themselves, with chosen run ids, so the upload trigger is off (it has its own tests
in test_start_run_flow.py)."""

from __future__ import annotations

import json

import pytest
from tests.statemachine.harness import Cloud


@pytest.fixture(autouse=True)
def _manual_runs_only(cloud: Cloud) -> None:
    cloud.disable_trigger()


def _request(cloud: Cloud, run_id: str, key: str, version_id: str) -> dict[str, str]:
    return {"run_id": run_id, "bucket": cloud.deployment.bucket_name, "key": key, "version_id": version_id}


def _misspelled_role(lines: list[str]) -> list[str]:
    bad = list(lines)
    bad[4] = bad[4].replace('"assistant"', '"assitant"')
    return bad


def test_valid_dataset_succeeds_with_summary_and_training_data(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a valid 20-example dataset uploaded under incoming/
    version = cloud.upload("incoming/reverse.jsonl", reversal_lines)
    # WHEN the pipeline runs on that object version
    execution = cloud.run("valid-run", _request(cloud, "run-ok", "incoming/reverse.jsonl", version))
    # THEN the execution succeeds and its output carries the input plus the validation summary
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    output = json.loads(execution["output"])
    assert output["run_id"] == "run-ok" and output["version_id"] == version
    summary = output["validation"]["summary"]
    bucket = cloud.deployment.bucket_name
    assert summary["passed"] is True
    assert summary["train_uri"] == f"s3://{bucket}/runs/run-ok/data/train.jsonl"
    assert summary["train_examples"] + summary["eval_examples"] == 20
    # AND the normalised training split exists where the summary says, with one line per training example
    assert "runs/run-ok/data/train.jsonl" in cloud.keys("runs/run-ok/")
    train = cloud.s3.get_object(Bucket=bucket, Key="runs/run-ok/data/train.jsonl")["Body"].read().decode()
    assert len(train.splitlines()) == summary["train_examples"]
    assert cloud.states_entered(execution["executionArn"]) == [
        "PublishValidateStarted",
        "Validate",
        "PublishValidateSucceeded",
        "Succeeded",
    ]


def test_invalid_dataset_is_rejected_with_the_problem_code(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a dataset whose 5th line has a misspelled role
    version = cloud.upload("incoming/bad.jsonl", _misspelled_role(reversal_lines))
    # WHEN the pipeline runs on it
    execution = cloud.run("invalid-run", _request(cloud, "run-bad", "incoming/bad.jsonl", version))
    # THEN the execution fails as InvalidTrainingData through the Rejected state (not the generic failure path)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "InvalidTrainingData"
    states = cloud.states_entered(execution["executionArn"])
    assert states == ["PublishValidateStarted", "Validate", "PublishRejected", "Rejected"]
    # AND the cause is the Lambda error payload, naming the problem code and the report
    cause = json.loads(execution["cause"])
    assert cause["errorType"] == "InvalidTrainingData"
    assert "unrecognized_role" in cause["errorMessage"]
    assert "runs/run-bad/validation/report.json" in cause["errorMessage"]
    # AND the report was written but no training data
    assert "runs/run-bad/validation/report.json" in cloud.keys("runs/run-bad/")
    assert cloud.keys("runs/run-bad/data/") == []


def test_stage_events_reach_the_bus(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN one valid and one invalid upload
    good = cloud.upload("incoming/good.jsonl", reversal_lines)
    bad = cloud.upload("incoming/bad.jsonl", _misspelled_role(reversal_lines))
    # WHEN the pipeline runs on each
    cloud.run("events-good", _request(cloud, "run-good", "incoming/good.jsonl", good))
    cloud.run("events-bad", _request(cloud, "run-bad", "incoming/bad.jsonl", bad))
    # THEN the bus received, in order, Started/Succeeded for the first and Started/Failed (rejected) for the second
    events = cloud.bus_events()
    assert all(event["source"] == "tuneplane" for event in events)
    seen = [(event["detail"]["run_id"], event["detail-type"], event["detail"]["stage"]) for event in events]
    assert seen == [
        ("run-good", "Stage Started", "validate"),
        ("run-good", "Stage Succeeded", "validate"),
        ("run-bad", "Stage Started", "validate"),
        ("run-bad", "Stage Failed", "validate"),
    ]
    succeeded, failed = events[1]["detail"], events[3]["detail"]
    assert succeeded["version_id"] == good and succeeded["summary"]["passed"] is True
    assert failed["outcome"] == "rejected" and failed["error"] == "InvalidTrainingData"
    assert "unrecognized_role" in failed["cause"]
