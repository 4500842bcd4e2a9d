"""A dataset beyond the Validate Lambda, end to end in the local cloud: the Lambda hands it on, the state machine runs
the real containers/validate entrypoint as a SageMaker Processing job, and the run goes on (or is rejected) exactly
as if the Lambda had validated it. Every other job is scripted (tests/statemachine/harness.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from local.cloud import JobOutcome, LocalJob
from local.cloud.sagemaker_jobs import ContainerExecutor
from tests.statemachine.harness import Cloud, ScriptedJobs, _stage_of

from tuneplane.logic import validation_engine

HANDED_ON = [
    "Init",
    "StartValidate",
    "Validate",
    "ValidateEngine",
    "PrepareValidateJob",
    "StartValidateJob",
    "ValidateJob",
]


@pytest.fixture(autouse=True)
def beyond_the_lambda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The Validate Lambda's /tmp holds the validation of 10 bytes; validation jobs run the real container."""
    monkeypatch.setattr(validation_engine, "_lambda_disk_reach", lambda budget: 10)
    scripted = ScriptedJobs.__call__

    def run(self: ScriptedJobs, job: LocalJob) -> JobOutcome:
        if _stage_of(job.name) != "validate" or "validate" in self.fail:
            return scripted(self, job)
        self.started.append((job.name, job.instance_type))
        return ContainerExecutor()(job)

    monkeypatch.setattr(ScriptedJobs, "__call__", run)
    yield


def _only_run(cloud: Cloud) -> dict[str, Any]:
    executions = cloud.executions()
    assert len(executions) == 1, [execution["name"] for execution in executions]
    return cloud.wait(str(executions[0]["executionArn"]))


def test_a_dataset_beyond_the_lambda_is_validated_by_a_processing_job_and_the_run_goes_on(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN a stack whose Validate Lambda cannot hold this dataset
    # WHEN it is uploaded
    cloud.upload("incoming/support.jsonl", reversal_lines)
    execution = _only_run(cloud)
    # THEN the run validates it on a Processing job (a CPU instance, the stack's ValidationInstanceType) and succeeds
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    arn = str(execution["executionArn"])
    states = cloud.states_entered(arn)
    assert states[: len(HANDED_ON) + 2] == [*HANDED_ON, "CollectValidation", "FinishValidate"]
    assert "Train" in states
    validate_jobs = [job for job in cloud.jobs.started if _stage_of(job[0]) == "validate"]
    assert len(validate_jobs) == 1
    # AND the stage's outcome is the job's: one Stage Succeeded for validate, with the dataset's numbers
    validate_events = [
        e["detail"]
        for e in cloud.bus_events()
        if e["detail-type"] == "Stage Succeeded" and e["detail"]["stage"] == "validate"
    ]
    assert len(validate_events) == 1
    assert "validated by a SageMaker Processing job" in " ".join(validate_events[0]["notes"])
    run_id = validate_events[0]["run_id"]
    ledger = cloud.ledger(run_id)["validate"]
    assert ledger["engine"] == "processing" and "holds the validation of 10" in ledger["handed_on_because"]
    assert ledger["job_name"] == validate_jobs[0][0] and ledger["instance_type"] == "ml.m5.2xlarge"
    bucket = cloud.deployment.bucket_name
    report = json.loads(cloud.s3.get_object(Bucket=bucket, Key=f"runs/{run_id}/validation/report.json")["Body"].read())
    assert report["passed"] is True and report["examples_valid"] == len(reversal_lines)
    # AND training read the job's splits
    assert cloud.keys(f"runs/{run_id}/data/") == [f"runs/{run_id}/data/eval.jsonl", f"runs/{run_id}/data/train.jsonl"]


def test_a_dataset_the_validation_job_rejects_ends_the_run_rejected_not_failed(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN a dataset beyond the Lambda with a misspelled role on line 5
    lines = list(reversal_lines)
    lines[4] = lines[4].replace('"assistant"', '"assitant"')
    # WHEN it is uploaded
    cloud.upload("incoming/support.jsonl", lines)
    execution = _only_run(cloud)
    # THEN the job's rejection ends the run through the usual Rejected path, with the problem and the job's report
    assert execution["status"] == "FAILED" and execution["error"] == "InvalidTrainingData"
    states = cloud.states_entered(str(execution["executionArn"]))
    assert states == [*HANDED_ON, "CollectValidation", "RejectValidate", "DataRejected"]
    message = json.loads(str(execution["cause"]))["errorMessage"]
    assert "unrecognized_role x1" in message and message.endswith("/validation/report.json")
    assert [e["detail-type"] for e in cloud.bus_events()][-1] == "Run Rejected"


def test_a_validation_job_that_fails_ends_the_run_failed_for_the_platform_team_with_its_cause(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN a dataset beyond the Lambda, and a validation job that dies (its instance ran out of memory)
    cloud.jobs.fail["validate"] = "out of memory while validating: choose a ValidationInstanceType with more memory"
    # WHEN it is uploaded
    cloud.upload("incoming/support.jsonl", reversal_lines)
    execution = _only_run(cloud)
    # THEN the run fails at validate (a platform fault, not the data's), through the one failure path
    assert execution["status"] == "FAILED"
    states = cloud.states_entered(str(execution["executionArn"]))
    assert states[: len(HANDED_ON) + 2] == [*HANDED_ON, "ValidateFailed", "RecordFailure"]
    # AND exactly one outcome event says so, with the job's own reason
    outcomes = [e for e in cloud.bus_events() if e["detail-type"].startswith("Run ")]
    assert [e["detail-type"] for e in outcomes] == ["Run Failed"]
    assert "choose a ValidationInstanceType with more memory" in json.dumps(outcomes[0]["detail"])
