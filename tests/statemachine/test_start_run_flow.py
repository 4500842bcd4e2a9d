"""How a run starts, end to end in the local cloud: an S3 upload under incoming/ -> S3's Object Created event on the
default bus -> the template's EventBridge rule -> the StartRun Lambda (in process) -> one execution of the real
state machine per object version."""

from __future__ import annotations

import gzip
import json
import logging

import pytest
from tests.statemachine.harness import Cloud


def _single_execution(cloud: Cloud) -> dict[str, object]:
    executions = cloud.executions()
    assert len(executions) == 1, [execution["name"] for execution in executions]
    return cloud.wait(str(executions[0]["executionArn"]))


def test_upload_starts_a_run_that_succeeds(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN the deployed stack and nothing running
    assert cloud.executions() == []
    # WHEN a valid dataset is uploaded under incoming/
    version = cloud.upload("incoming/demo.jsonl", reversal_lines)
    # THEN one execution started by itself, named after the dataset, and it succeeds
    execution = _single_execution(cloud)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    run_id = str(execution["name"])
    assert run_id.startswith("demo-") and len(run_id) <= 80
    # AND its input names the uploaded object version; there was no sidecar
    run_input = json.loads(str(execution["input"]))
    # (the S3 event's sequencer orders the dataset's uploads: hex, as S3 writes it)
    assert int(run_input.pop("sequencer"), 16) > 0
    assert run_input == {
        "run_id": run_id,
        "bucket": cloud.deployment.bucket_name,
        "key": "incoming/demo.jsonl",
        "version_id": version,
        "eval_key": None,
        "eval_version_id": None,
        "overrides": {},
        "training": {},
        "evaluation": {},
        "deploy_target": None,
        "sidecar_key": None,
        "sidecar_version_id": None,
        "sidecar_error": None,
        "rerun": False,
    }
    assert f"runs/{run_id}/data/train.jsonl" in cloud.keys(f"runs/{run_id}/")
    assert cloud.dead_letters() == []


def test_a_redelivered_event_starts_nothing_and_a_new_version_starts_a_new_run(
    cloud: Cloud, reversal_lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN an upload that started a run, and the S3 event that started it
    cloud.upload("incoming/demo.jsonl", reversal_lines)
    [event] = cloud.s3_events()
    first = cloud.executions()
    assert len(first) == 1
    # WHEN EventBridge delivers the same event again, twice (once while the run may still be going, once after)
    with caplog.at_level(logging.INFO):
        cloud.redeliver(event)
        cloud.wait(first[0]["executionArn"])
        cloud.redeliver(event)
    # THEN still one execution, and StartRun logged both as duplicates of it
    assert [execution["name"] for execution in cloud.executions()] == [first[0]["name"]]
    duplicates = [record for record in caplog.records if record.getMessage() == "duplicate delivery"]
    assert [record.execution_arn for record in duplicates] == [first[0]["executionArn"]] * 2  # type: ignore[attr-defined]
    # WHEN the same key is uploaded again (a new object version)
    cloud.upload("incoming/demo.jsonl", reversal_lines[:15])
    # THEN that version gets its own run
    executions = cloud.executions()
    assert len(executions) == 2 and executions[1]["name"] != first[0]["name"]
    assert executions[1]["name"].startswith("demo-")
    assert cloud.dead_letters() == []


def test_an_invalid_sidecar_rejects_the_run_naming_the_file(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a sidecar with a misspelled setting, uploaded first (it starts nothing on its own)
    cloud.put("incoming/demo.tuneplane.json", json.dumps({"validaton": {"min_examples": 5}}).encode())
    assert cloud.executions() == []
    # WHEN the dataset is uploaded
    cloud.upload("incoming/demo.jsonl", reversal_lines)
    # THEN the run started anyway and was rejected by the Validate stage, through the usual Rejected path
    execution = _single_execution(cloud)
    assert execution["status"] == "FAILED" and execution["error"] == "InvalidTrainingData"
    assert cloud.states_entered(str(execution["executionArn"])) == [
        "Init",
        "StartValidate",
        "Validate",
        "RejectValidate",
        "DataRejected",
    ]
    # AND the message names the sidecar file and the problem
    message = json.loads(str(execution["cause"]))["errorMessage"]
    sidecar = f"s3://{cloud.deployment.bucket_name}/incoming/demo.tuneplane.json"
    assert f"invalid dataset settings file {sidecar}" in message
    assert "unknown setting 'validaton'" in message
    # AND the Stage Failed event on the bus says "rejected" with that message
    [started, failed, run] = cloud.bus_events()
    assert started["detail-type"] == "Stage Started"
    assert failed["detail-type"] == "Stage Failed" and failed["detail"]["status"] == "rejected"
    assert "unknown setting 'validaton'" in failed["detail"]["message"]
    assert run["detail-type"] == "Run Rejected"


def test_sidecar_settings_reach_the_validate_stage(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a valid sidecar that asks for at least 50 examples
    cloud.put("incoming/small.tuneplane.json", json.dumps({"validation": {"min_examples": 50}}).encode())
    # WHEN a 20-example gzip dataset with the same stem is uploaded
    cloud.put("incoming/small.jsonl.gz", gzip.compress("\n".join(reversal_lines).encode(), mtime=0))
    # THEN its run carries the override and is rejected as too small
    execution = _single_execution(cloud)
    assert json.loads(str(execution["input"]))["overrides"] == {"min_examples": 50}
    assert execution["error"] == "InvalidTrainingData"
    assert "too_few_examples" in json.loads(str(execution["cause"]))["errorMessage"]


def test_uploads_that_are_not_datasets_start_nothing(cloud: Cloud) -> None:
    # WHEN a sidecar alone, a file outside incoming/ and a non-JSONL file under incoming/ are uploaded
    cloud.put("incoming/demo.tuneplane.json", b'{"validation": {}}')
    cloud.put("runs/x/data/train.jsonl", b"{}\n")
    cloud.put("incoming/notes.txt", b"hello")
    # THEN S3 sent its events, but no execution started and nothing was dead-lettered
    assert len(cloud.s3_events()) == 3
    assert cloud.executions() == []
    assert cloud.dead_letters() == []
