"""How a run starts, end to end in the local cloud: an S3 upload under incoming/ -> S3's Object Created event on the
default bus -> the template's EventBridge rule -> the StartRun Lambda (in process) -> one execution of the real
state machine per object version.

The tests share one stack (harness.StackPool): each uploads datasets (and sidecars) of its own names, looks at the
executions that started since it began (``earlier``: those of the tests before it) and the dead letters of its own
keys; the capture queues are drained before each test and every test waits for the runs it started, so the S3 and
bus events a test reads are those of its own uploads."""

from __future__ import annotations

import gzip
import json
import logging
from typing import Any

import pytest
from tests.statemachine.harness import Cloud


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """The module's shared stack (the module docstring)."""
    return shared_cloud


def _dead_letters(cloud: Cloud, *keys: str) -> list[dict[str, Any]]:
    """The dead letters about ``keys`` (an undeliverable event names its object)."""
    return [message for message in cloud.dead_letters() if any(key in message["Body"] for key in keys)]


def _single_execution(cloud: Cloud, earlier: set[str]) -> dict[str, object]:
    executions = cloud.executions_since(earlier)
    assert len(executions) == 1, [execution["name"] for execution in executions]
    return cloud.wait(str(executions[0]["executionArn"]))


def test_upload_starts_a_run_that_succeeds(cloud: Cloud, earlier: set[str], reversal_lines: list[str]) -> None:
    # GIVEN the deployed stack and nothing running
    assert [execution["name"] for execution in cloud.executions() if execution["status"] == "RUNNING"] == []
    # WHEN a valid dataset is uploaded under incoming/
    version = cloud.upload("incoming/demo.jsonl", reversal_lines)
    # THEN one execution started by itself, named after the dataset, and it succeeds
    execution = _single_execution(cloud, earlier)
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
    assert _dead_letters(cloud, "incoming/demo.jsonl") == []


def test_a_redelivered_event_starts_nothing_and_a_new_version_starts_a_new_run(
    cloud: Cloud, earlier: set[str], reversal_lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN an upload that started a run, and the S3 event that started it
    cloud.upload("incoming/again.jsonl", reversal_lines)
    [event] = cloud.s3_events()
    first = cloud.executions_since(earlier)
    assert len(first) == 1
    # WHEN EventBridge delivers the same event again, twice (once while the run may still be going, once after)
    with caplog.at_level(logging.INFO):
        cloud.redeliver(event)
        cloud.wait(first[0]["executionArn"])
        cloud.redeliver(event)
    # THEN still one execution, and StartRun logged both as duplicates of it
    assert [execution["name"] for execution in cloud.executions_since(earlier)] == [first[0]["name"]]
    duplicates = [record for record in caplog.records if record.getMessage() == "duplicate delivery"]
    assert [record.execution_arn for record in duplicates] == [first[0]["executionArn"]] * 2  # type: ignore[attr-defined]
    # WHEN the same key is uploaded again (a new object version)
    cloud.upload("incoming/again.jsonl", reversal_lines[:15])
    # THEN that version gets its own run
    executions = cloud.executions_since(earlier)
    assert len(executions) == 2 and executions[1]["name"] != first[0]["name"]
    assert executions[1]["name"].startswith("again-")
    assert _dead_letters(cloud, "incoming/again.jsonl") == []
    cloud.wait(str(executions[1]["executionArn"]))  # its events and objects are not the next test's


def test_an_invalid_sidecar_rejects_the_run_naming_the_file(
    cloud: Cloud, earlier: set[str], reversal_lines: list[str]
) -> None:
    # GIVEN a sidecar with a misspelled setting, uploaded first (it starts nothing on its own)
    cloud.put("incoming/misspelled.tuneplane.json", json.dumps({"validaton": {"min_examples": 5}}).encode())
    assert cloud.executions_since(earlier) == []
    # WHEN the dataset is uploaded
    cloud.upload("incoming/misspelled.jsonl", reversal_lines)
    # THEN the run started anyway and was rejected by the Validate stage, through the usual Rejected path
    execution = _single_execution(cloud, earlier)
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
    sidecar = f"s3://{cloud.deployment.bucket_name}/incoming/misspelled.tuneplane.json"
    assert f"invalid dataset settings file {sidecar}" in message
    assert "unknown setting 'validaton'" in message
    # AND the Stage Failed event on the bus says "rejected" with that message
    [started, failed, run] = [event for event in cloud.bus_events() if event["detail"]["run_id"] == execution["name"]]
    assert started["detail-type"] == "Stage Started"
    assert failed["detail-type"] == "Stage Failed" and failed["detail"]["status"] == "rejected"
    assert "unknown setting 'validaton'" in failed["detail"]["message"]
    assert run["detail-type"] == "Run Rejected"


def test_sidecar_settings_reach_the_validate_stage(cloud: Cloud, earlier: set[str], reversal_lines: list[str]) -> None:
    # GIVEN a valid sidecar that asks for at least 50 examples
    cloud.put("incoming/small.tuneplane.json", json.dumps({"validation": {"min_examples": 50}}).encode())
    # WHEN a 20-example gzip dataset with the same stem is uploaded
    cloud.put("incoming/small.jsonl.gz", gzip.compress("\n".join(reversal_lines).encode(), mtime=0))
    # THEN its run carries the override and is rejected as too small
    execution = _single_execution(cloud, earlier)
    assert json.loads(str(execution["input"]))["overrides"] == {"min_examples": 50}
    assert execution["error"] == "InvalidTrainingData"
    assert "too_few_examples" in json.loads(str(execution["cause"]))["errorMessage"]


def test_uploads_that_are_not_datasets_start_nothing(cloud: Cloud, earlier: set[str]) -> None:
    # WHEN a sidecar alone, a file outside incoming/ and a non-JSONL file under incoming/ are uploaded
    keys = ("incoming/alone.tuneplane.json", "runs/x/data/train.jsonl", "incoming/notes.txt")
    cloud.put(keys[0], b'{"validation": {}}')
    cloud.put(keys[1], b"{}\n")
    cloud.put(keys[2], b"hello")
    # THEN S3 sent its events, but no execution started and nothing was dead-lettered
    assert sorted(event["detail"]["object"]["key"] for event in cloud.s3_events()) == sorted(keys)
    assert cloud.executions_since(earlier) == []
    assert _dead_letters(cloud, *keys) == []
