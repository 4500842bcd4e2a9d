"""The Stage function's logic on moto: the run ledger (DynamoDB), the pipeline events (EventBridge, captured through an
SQS target), job requests, reports read from S3, the failure path stopping a run's jobs, and one-line causes."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import sagemaker_backends

from tuneplane.adapters import events as events_adapter
from tuneplane.adapters import ledger
from tuneplane.adapters import s3 as s3_adapter
from tuneplane.adapters import sagemaker as sagemaker_adapter
from tuneplane.config import pipeline_settings
from tuneplane.errors import DatasetNotFound, InvalidConfiguration
from tuneplane.logic import job_requests
from tuneplane.logic.stage_outcomes import CAUSE_MAX, one_line_cause
from tuneplane.logic.stages import handle
from tuneplane.models.events import PipelineEvent, Stage, Status
from tuneplane.models.pipeline import EvaluationOverrides, StageRequest, TrainingOverrides

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
BUCKET = "tuneplane-data-test"
TABLE = "tuneplane-test-runs"
BUS = "tuneplane-test-events"
RUN_ID = "support-1515d2ffc132722f"
EXECUTION_ARN = f"arn:aws:states:{REGION}:{DEFAULT_ACCOUNT_ID}:execution:tuneplane-test-pipeline:{RUN_ID}"
ENVIRONMENT = {
    "STACK_NAME": "tuneplane-test",
    "DATA_BUCKET": BUCKET,
    "EVENT_BUS_NAME": BUS,
    "LEDGER_TABLE": TABLE,
    "BASE_MODEL_S3_URI": f"s3://{BUCKET}/models/tiny/",
    "SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/tuneplane-sagemaker",
    "TRAIN_IMAGE_URI": f"{DEFAULT_ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/tuneplane-train:1",
    "MERGE_IMAGE_URI": f"{DEFAULT_ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/tuneplane-merge:1",
    "EVALUATE_IMAGE_URI": f"{DEFAULT_ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/tuneplane-evaluate:1",
    "TRAINING_INSTANCE_TYPES": "ml.g5.2xlarge,ml.g6.2xlarge",
}
SUMMARY = {
    "run_id": RUN_ID,
    "passed": True,
    "dataset_uri": f"s3://{BUCKET}/incoming/support.jsonl",
    "format": "messages",
    "lines_read": 120,
    "examples_valid": 118,
    "train_examples": 106,
    "eval_examples": 12,
    "eval_source": "held_out",
    "train_uri": f"s3://{BUCKET}/runs/{RUN_ID}/data/train.jsonl",
    "eval_uri": f"s3://{BUCKET}/runs/{RUN_ID}/data/eval.jsonl",
    "report_uri": f"s3://{BUCKET}/runs/{RUN_ID}/validation/report.json",
    "summary_uri": f"s3://{BUCKET}/runs/{RUN_ID}/validation/summary.txt",
    "errors": 2,
    "warnings": 0,
    "tokens_total": 54321,
    "estimated_training_hours": 0.25,
    "estimated_cost_usd": 0.38,
    "headline": "118 of 120 examples usable (2 invalid lines dropped)",
}
EVALUATION_KEY = f"runs/{RUN_ID}/evaluation/evaluation.json"
CONTEXT = SimpleNamespace(
    function_name="stage",
    memory_limit_in_mb=256,
    invoked_function_arn=f"arn:aws:lambda:{REGION}:{DEFAULT_ACCOUNT_ID}:function:stage",
    aws_request_id="req-1",
)


def _clear_caches() -> None:
    ledger.dynamodb.cache_clear()
    events_adapter.events_client.cache_clear()
    sagemaker_adapter.sagemaker_client.cache_clear()
    s3_adapter.s3_client.cache_clear()
    pipeline_settings.cache_clear()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """moto with the run ledger, the event bus (a rule sends every tuneplane event to a queue), the data bucket and
    the Stage function's environment."""
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        _clear_caches()
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "run_id", "KeyType": "HASH"}, {"AttributeName": "stage", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "run_id", "AttributeType": "S"},
                {"AttributeName": "stage", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        bridge, sqs = boto3.client("events"), boto3.client("sqs")
        bridge.create_event_bus(Name=BUS)
        queue = sqs.create_queue(QueueName="captured-events")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        bridge.put_rule(Name="everything", EventBusName=BUS, EventPattern=json.dumps({"source": ["tuneplane"]}))
        bridge.put_targets(Rule="everything", EventBusName=BUS, Targets=[{"Id": "queue", "Arn": queue_arn}])
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        yield SimpleNamespace(
            s3=s3,
            sqs=sqs,
            queue=queue,
            sagemaker=boto3.client("sagemaker"),
            settings=pipeline_settings(),
        )
    _clear_caches()


def _state(**results: Any) -> dict[str, Any]:
    """The execution state as the state machine passes it: the run input, the pipeline flags and stage results."""
    state: dict[str, Any] = {
        "run_id": RUN_ID,
        "bucket": BUCKET,
        "key": "incoming/support.jsonl",
        "version_id": "v1",
        "eval_key": None,
        "overrides": {},
        "training": {},
        "evaluation": {},
        "sidecar_key": None,
        "sidecar_version_id": None,
        "sidecar_error": None,
        "pipeline": {"quantize": "false", "deploy_target": "none", "train_attempt": 0},
        "validation": {"summary": SUMMARY},
    }
    return state | results


def _restack(aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, **environment: str) -> None:
    """The Stage function's settings with these environment variables changed (as a stack parameter would)."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    pipeline_settings.cache_clear()
    aws.settings = pipeline_settings()


def _call(aws: SimpleNamespace, action: str, stage: Stage, state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    request = StageRequest.model_validate(
        {"action": action, "stage": stage, "execution_arn": EXECUTION_ARN, "state": state, **extra}
    )
    return handle(request, aws.settings)


def _published(aws: SimpleNamespace) -> list[tuple[str, PipelineEvent]]:
    """Every event put on the bus since the last call, in order: (detail type, parsed detail)."""
    found: list[tuple[int, str, PipelineEvent]] = []
    while True:
        answer = aws.sqs.receive_message(
            QueueUrl=aws.queue, MaxNumberOfMessages=10, AttributeNames=["SentTimestamp"], WaitTimeSeconds=0
        )
        messages = answer.get("Messages", [])
        if not messages:
            break
        for message in messages:
            body = json.loads(message["Body"])
            assert body["source"] == "tuneplane"
            sent = int(message["Attributes"]["SentTimestamp"])
            found.append((sent, body["detail-type"], PipelineEvent.model_validate(body["detail"])))
            aws.sqs.delete_message(QueueUrl=aws.queue, ReceiptHandle=message["ReceiptHandle"])
    return [(detail_type, event) for _, detail_type, event in sorted(found, key=lambda item: item[0])]


def _item(aws: SimpleNamespace, stage: Stage) -> dict[str, Any]:
    found = ledger.get_stage(TABLE, RUN_ID, stage.value)
    assert found is not None, f"no ledger item for {stage.value}"
    return found


def _put_evaluation(aws: SimpleNamespace, passed: bool, reasons: list[str] | None = None) -> None:
    report = {
        "passed": passed,
        "reasons": reasons or [],
        "primary_metric": "exact_match",
        "metrics": {
            "candidate": {"exact_match": 0.82, "token_f1": 0.9, "stop_rate": 1.0, "rouge_l": 0.88},
            "base": {"exact_match": 0.31, "token_f1": 0.5, "stop_rate": 0.75, "rouge_l": 0.47},
        },
        "examples": 12,
        "chart": {"colours": {"candidate": "#1f77b4", "base": "#aaaaaa"}},
    }
    aws.s3.put_object(Bucket=BUCKET, Key=EVALUATION_KEY, Body=json.dumps(report).encode())


def _training_job(aws: SimpleNamespace, run_id: str, attempt: int, status: str) -> str:
    """A training job of ``run_id`` created in moto from the real request, set to ``status`` (moto creates jobs
    Completed)."""
    data: dict[str, str | None] = {"train_uri": str(SUMMARY["train_uri"]), "eval_uri": str(SUMMARY["eval_uri"])}
    request = job_requests.training_job(aws.settings, run_id, data, TrainingOverrides(), attempt).request
    aws.sagemaker.create_training_job(**request)
    name = str(request["TrainingJobName"])
    sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].training_jobs[name].training_job_status = status
    return name


def _processing_job(aws: SimpleNamespace, run_id: str, stage: Stage, status: str) -> str:
    merged = job_requests.run_uri(aws.settings, run_id, "merged", "")
    if stage is Stage.MERGE:
        spec = job_requests.merge_job(aws.settings, run_id, "s3://b/model.tar.gz", None)
    else:
        spec = job_requests.evaluate_job(aws.settings, run_id, merged, str(SUMMARY["eval_uri"]), EvaluationOverrides())
    aws.sagemaker.create_processing_job(**spec.request)
    name = str(spec.request["ProcessingJobName"])
    sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].processing_jobs[name].processing_job_status = status
    return name


# ---------------------------------------------------------------------------------------------------------------------
# Start and finish


def test_starting_validate_begins_the_run_in_the_ledger_and_publishes_stage_started(aws: SimpleNamespace) -> None:
    # WHEN the state machine reports that Validate starts
    result = _call(aws, "start", Stage.VALIDATE, _state())
    # THEN nothing is returned (no job), the run and the stage are recorded as started
    assert result == {}
    run = _item(aws, Stage.RUN)
    assert run["status"] == "started"
    assert run["dataset"] == "incoming/support.jsonl" and run["bucket"] == BUCKET and run["version_id"] == "v1"
    assert run["execution_arn"] == EXECUTION_ARN
    assert datetime.fromisoformat(run["started_at"]).tzinfo is not None
    assert _item(aws, Stage.VALIDATE)["status"] == "started"
    # AND one Stage Started event says so
    [(detail_type, event)] = _published(aws)
    assert detail_type == "Stage Started"
    assert (event.run_id, event.stage, event.status) == (RUN_ID, Stage.VALIDATE, Status.STARTED)
    assert event.dataset == "incoming/support.jsonl" and event.execution_arn == EXECUTION_ARN
    assert event.started_at is not None and event.finished_at is None


def test_finishing_validate_publishes_the_summarys_numbers_and_artifacts(aws: SimpleNamespace) -> None:
    # GIVEN a started Validate stage
    _call(aws, "start", Stage.VALIDATE, _state())
    _published(aws)
    # WHEN it finishes with its summary in the state
    outcome = _call(aws, "finish", Stage.VALIDATE, _state())
    # THEN the event carries the key numbers, the links and the headline, and how long the stage took
    [(detail_type, event)] = _published(aws)
    assert detail_type == "Stage Succeeded"
    assert event.metrics == {
        "examples": 118,
        "train_examples": 106,
        "eval_examples": 12,
        "tokens": 54321,
        "warnings": 0,
        "estimated_training_hours": 0.25,
        "estimated_cost_usd": 0.38,
    }
    assert event.artifacts == {
        "report": SUMMARY["report_uri"],
        "summary": SUMMARY["summary_uri"],
        "train": SUMMARY["train_uri"],
        "eval": SUMMARY["eval_uri"],
    }
    assert event.message == SUMMARY["headline"]
    assert event.started_at is not None and event.finished_at is not None and event.duration_s is not None
    assert event.duration_s >= 0
    # AND the ledger item has the same, the start time kept; the state machine gets the outcome back
    item = _item(aws, Stage.VALIDATE)
    assert item["status"] == "succeeded" and item["metrics"] == event.metrics and "started_at" in item
    assert outcome["stage"] == "validate" and outcome["metrics"] == event.metrics


def test_skipping_a_stage_records_and_publishes_the_reason(aws: SimpleNamespace) -> None:
    result = _call(aws, "skip", Stage.QUANTIZE, _state(), reason="quantization off (QuantizeEnabled=false)")
    assert result == {"skipped": True, "reason": "quantization off (QuantizeEnabled=false)"}
    [(detail_type, event)] = _published(aws)
    assert detail_type == "Stage Skipped" and event.message == "quantization off (QuantizeEnabled=false)"
    assert _item(aws, Stage.QUANTIZE)["status"] == "skipped"


def test_starting_train_returns_the_job_request_and_records_job_and_instance(aws: SimpleNamespace) -> None:
    # GIVEN a sidecar training section in the run input
    state = _state(training={"num_train_epochs": 1, "qlora": True})
    # WHEN Train starts
    spec = _call(aws, "start", Stage.TRAIN, state)
    # THEN the answer is the first attempt's JobSpec, with the sidecar's hyperparameters
    name = job_requests.job_name(RUN_ID, Stage.TRAIN, 0)
    assert spec["request"]["TrainingJobName"] == name
    assert spec["request"]["HyperParameters"]["qlora"] == "true"
    assert spec["instance_type"] == "ml.g5.2xlarge" and spec["attempt"] == 0 and spec["has_fallback"] is True
    assert spec["timeout_s"] > 24 * 3600
    # AND the ledger knows the job and the instance; the event names the instance
    item = _item(aws, Stage.TRAIN)
    assert (item["status"], item["job_name"], item["instance_type"], item["attempt"]) == (
        "started",
        name,
        "ml.g5.2xlarge",
        0,
    )
    [(_, event)] = _published(aws)
    assert event.status is Status.STARTED and event.metrics == {"instance_type": "ml.g5.2xlarge"}
    assert event.notes == []


def test_a_second_training_attempt_says_why_in_a_note(aws: SimpleNamespace) -> None:
    # GIVEN the first attempt failed for lack of capacity (the Catch put the job's description in $.error)
    cause = {
        "TrainingJobName": job_requests.job_name(RUN_ID, Stage.TRAIN, 0),
        "TrainingJobStatus": "Failed",
        "FailureReason": "CapacityError: Unable to provision requested ML compute capacity.\nPlease retry.",
    }
    state = _state(
        pipeline={"quantize": "false", "deploy_target": "none", "train_attempt": 1},
        error={"Error": "States.TaskFailed", "Cause": json.dumps(cause)},
    )
    # WHEN Train starts again
    spec = _call(aws, "start", Stage.TRAIN, state)
    # THEN it is attempt 2 on the next instance type, the last one on the list
    assert spec["request"]["TrainingJobName"] == job_requests.job_name(RUN_ID, Stage.TRAIN, 1)
    assert spec["instance_type"] == "ml.g6.2xlarge" and spec["attempt"] == 1 and spec["has_fallback"] is False
    assert _item(aws, Stage.TRAIN)["attempt"] == 1
    # AND the Stage Started event's note names the previous cause, on one line
    [(_, event)] = _published(aws)
    assert event.notes == [
        "attempt 2 on ml.g6.2xlarge: the previous instance type had no capacity "
        "(CapacityError: Unable to provision requested ML compute capacity. Please retry.)"
    ]


def test_a_job_stage_without_a_train_split_is_a_configuration_error(aws: SimpleNamespace) -> None:
    state = _state(validation={"summary": {**SUMMARY, "train_uri": None}})
    with pytest.raises(InvalidConfiguration, match="no train split"):
        _call(aws, "start", Stage.TRAIN, state)


def test_finishing_train_reads_the_jobs_final_metrics(aws: SimpleNamespace) -> None:
    # GIVEN a completed training job with final metrics
    name = _training_job(aws, RUN_ID, 0, "Completed")
    job = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].training_jobs[name]
    job.final_metric_data_list = [
        {"MetricName": "train_loss", "Value": 0.42, "Timestamp": datetime(2026, 11, 1)},
        {"MetricName": "tokens_per_second", "Value": 1520.5, "Timestamp": datetime(2026, 11, 1)},
    ]
    adapter = f"s3://{BUCKET}/runs/{RUN_ID}/train/{name}/output/model.tar.gz"
    state = _state(train={"job_name": name, "model_artifacts": adapter, "instance_type": "ml.g5.2xlarge"})
    # WHEN Train finishes
    outcome = _call(aws, "finish", Stage.TRAIN, state)
    # THEN the outcome has the final metrics, the instance and the adapter
    assert outcome["metrics"]["final_train_loss"] == 0.42
    assert outcome["metrics"]["tokens_per_second"] == 1520.5
    assert outcome["metrics"]["instance_type"] == "ml.g5.2xlarge" and outcome["metrics"]["attempt"] == 1
    assert "final_eval_loss" not in outcome["metrics"]
    assert outcome["artifacts"] == {"adapter": adapter} and outcome["notes"] == []
    [(detail_type, _)] = _published(aws)
    assert detail_type == "Stage Succeeded"


def test_finishing_evaluate_reads_the_report_and_returns_the_verdict(aws: SimpleNamespace) -> None:
    # GIVEN the evaluation job wrote a passing evaluation.json
    _put_evaluation(aws, passed=True)
    # WHEN Evaluate finishes
    outcome = _call(aws, "finish", Stage.EVALUATE, _state())
    # THEN the Gate gets passed=true and the scores of each model
    assert outcome["passed"] is True
    assert outcome["metrics"] == {
        "primary_metric": "exact_match",
        "passed": True,
        "examples": 12,
        "candidate.exact_match": 0.82,
        "candidate.token_f1": 0.9,
        "candidate.stop_rate": 1.0,
        "base.exact_match": 0.31,
        "base.token_f1": 0.5,
        "base.stop_rate": 0.75,
    }
    folder = f"s3://{BUCKET}/runs/{RUN_ID}/evaluation/"
    assert outcome["artifacts"] == {"evaluation": folder + "evaluation.json", "chart": folder + "evaluation.png"}
    assert outcome["message"] == "passed the gate"
    [(detail_type, event)] = _published(aws)
    assert detail_type == "Stage Succeeded" and event.metrics["candidate.exact_match"] == 0.82


def test_starting_evaluate_writes_the_jobs_graders_and_keeps_the_judges_thresholds_for_the_grade_function(
    aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a stack with a judge, and a sidecar with classification labels, a pattern and thresholds on both kinds
    _restack(aws, monkeypatch, JUDGE_MODEL_ID="anthropic.judge-v1:0")
    evaluation = {
        "graders": {
            "classification": {"labels": ["yes", "no"]},
            "pattern": {"must_not_contain": ["As an AI"]},
            "judge": {"rubric": "Correct and polite?"},
        },
        "thresholds": {"classification_accuracy": 0.8, "judge_score": 0.6},
    }
    # WHEN Evaluate starts
    spec = _call(aws, "start", Stage.EVALUATE, _state(evaluation=evaluation))
    # THEN the job reads graders.json from its own input, which holds the job's graders and thresholds only
    [graders_input] = [i for i in spec["request"]["ProcessingInputs"] if i["InputName"] == "graders"]
    uri = graders_input["S3Input"]["S3Uri"]
    assert uri == f"s3://{BUCKET}/runs/{RUN_ID}/evaluation-input/graders/"
    written = json.loads(
        aws.s3.get_object(Bucket=BUCKET, Key=uri.split(BUCKET + "/")[1] + "graders.json")["Body"].read()
    )
    assert written == {
        "classification": {"labels": ["yes", "no"]},
        "pattern": {"must_contain": [], "must_not_contain": ["As an AI"]},
        "thresholds": {"classification_accuracy": 0.8},
    }
    assert (
        "--graders_dir=/opt/ml/processing/input/graders" in spec["request"]["AppSpecification"]["ContainerArguments"]
    )


def test_the_gate_joins_the_jobs_verdict_and_the_judges(aws: SimpleNamespace) -> None:
    # GIVEN an evaluation the job passed, and a grading where the judge's score fell short
    _put_evaluation(aws, passed=True)
    grading = {
        "passed": False,
        "reasons": ["candidate judge_score 0.4000 is below its threshold 0.6000 (short by 0.2000)"],
        "metrics": {"candidate": {"judge_score": 0.4, "judge_win_rate": 0.3}, "base": {"judge_score": 0.5}},
        "graders": {"judge": {"cost_usd": 0.12}},
        "worst_examples": [{"index": 4, "judge_score": 0.0, "judge_reason": "Wrote to jane.doe@example.com."}],
    }
    aws.s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/evaluation/grading.json", Body=json.dumps(grading).encode())
    evaluation = {"graders": {"judge": {"rubric": "Correct and polite?"}}, "thresholds": {"judge_score": 0.6}}
    # WHEN Evaluate finishes
    outcome = _call(aws, "finish", Stage.EVALUATE, _state(evaluation=evaluation))
    # THEN the gate fails on the judge's reason, with every model's judge scores and the judge's cost
    assert outcome["passed"] is False
    assert outcome["message"] == "did not pass the gate: " + grading["reasons"][0]
    assert outcome["metrics"]["candidate.judge_score"] == 0.4 and outcome["metrics"]["base.judge_score"] == 0.5
    assert outcome["metrics"]["candidate.judge_win_rate"] == 0.3 and outcome["metrics"]["judge_cost_usd"] == 0.12
    assert outcome["artifacts"]["grading"] == f"s3://{BUCKET}/runs/{RUN_ID}/evaluation/grading.json"
    # AND the judge's worst example is shown with the data's e-mail address masked
    [note] = outcome["notes"]
    assert note.startswith("worst by the judge: #4 judge 0.00:") and "jane.doe@example.com" not in note


def test_a_run_with_a_judge_but_no_grading_is_not_gated_on_the_job_alone(aws: SimpleNamespace) -> None:
    # GIVEN a passing evaluation.json but no grading.json for a run that has a judge
    _put_evaluation(aws, passed=True)
    evaluation = {"graders": {"judge": {"rubric": "Correct and polite?"}}}
    # WHEN Evaluate finishes THEN it fails instead of passing on half the verdict
    with pytest.raises(DatasetNotFound, match="grading.json"):
        _call(aws, "finish", Stage.EVALUATE, _state(evaluation=evaluation))


# ---------------------------------------------------------------------------------------------------------------------
# Rejection and failure


def test_a_failed_gate_rejects_the_stage_and_the_run_with_the_reasons(aws: SimpleNamespace) -> None:
    # GIVEN a run whose evaluation did not pass the gate
    _call(aws, "start", Stage.VALIDATE, _state())
    _published(aws)
    reasons = ["candidate exact_match 0.82 < min_score 0.9", "improvement over base 0.51 < 0.6"]
    _put_evaluation(aws, passed=False, reasons=reasons)
    # WHEN the state machine reports the rejection
    result = _call(aws, "reject", Stage.EVALUATE, _state())
    # THEN the stage failed as "rejected" and the run was rejected, both with the gate's reasons
    [(stage_type, stage_event), (run_type, run_event)] = _published(aws)
    message = "did not pass the gate: " + "; ".join(reasons)
    assert stage_type == "Stage Failed" and stage_event.status is Status.REJECTED
    assert stage_event.stage is Stage.EVALUATE and stage_event.error == "GateFailed"
    assert stage_event.message == message
    assert run_type == "Run Rejected" and run_event.stage is Stage.RUN and run_event.status is Status.REJECTED
    assert run_event.message == f"evaluate: {message}" and run_event.error == "GateFailed"
    assert run_event.metrics["candidate.exact_match"] == 0.82
    assert run_event.duration_s is not None  # the run's start is in the ledger
    # AND the ledger says so; a rejection stops no jobs; the answer is what the Fail state shows
    assert _item(aws, Stage.EVALUATE)["status"] == "rejected" and _item(aws, Stage.RUN)["status"] == "rejected"
    assert result == {
        "status": "rejected",
        "stage": "evaluate",
        "error": "GateFailed",
        "cause": message,
        "stopped_jobs": [],
    }


def test_rejected_data_links_the_validation_report_only_when_it_was_written(aws: SimpleNamespace) -> None:
    # GIVEN Validate rejected the data after writing its report (but no summary)
    aws.s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/validation/report.json", Body=b"{}")
    lambda_error = {"errorMessage": "2 of 20 lines are not JSON", "errorType": "InvalidTrainingData"}
    state = _state(validation=None, error={"Error": "InvalidTrainingData", "Cause": json.dumps(lambda_error)})
    # WHEN the rejection is reported
    _call(aws, "reject", Stage.VALIDATE, state)
    # THEN both events link the report that exists, and only that
    [(_, stage_event), (run_type, run_event)] = _published(aws)
    report = f"s3://{BUCKET}/runs/{RUN_ID}/validation/report.json"
    assert stage_event.artifacts == run_event.artifacts == {"report": report}
    assert run_type == "Run Rejected" and run_event.message == "validate: 2 of 20 lines are not JSON"
    assert run_event.error == "InvalidTrainingData"


def test_a_failed_training_job_fails_the_run_and_stops_the_runs_running_jobs(
    aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN this run's training job still running (e.g. the .sync task timed out), one of its finished jobs, one
    # running processing job, and another run's running job
    running = _training_job(aws, RUN_ID, 0, "InProgress")
    _training_job(aws, RUN_ID, 1, "Failed")
    processing = _processing_job(aws, RUN_ID, Stage.MERGE, "InProgress")
    other = _training_job(aws, "other-run-0123456789abcdef", 0, "InProgress")
    stopped_training: list[str] = []  # moto has no StopTrainingJob: record the calls instead
    client = sagemaker_adapter.sagemaker_client()
    monkeypatch.setattr(client, "stop_training_job", lambda TrainingJobName: stopped_training.append(TrainingJobName))
    # AND the Catch's error: the job's description, whose FailureReason spans lines
    description = {
        "TrainingJobName": running,
        "TrainingJobStatus": "Failed",
        "FailureReason": "AlgorithmError: torch.OutOfMemoryError: CUDA out of memory.\n  Tried to allocate 2.00 GiB",
    }
    state = _state(error={"Error": "States.TaskFailed", "Cause": json.dumps(description)}, failed_stage="train")
    # WHEN the failure is reported
    result = _call(aws, "fail", Stage.TRAIN, state)
    # THEN this run's running jobs were stopped, nothing else
    assert stopped_training == [running]
    assert result["stopped_jobs"] == [running, processing]
    backend = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION]
    assert backend.processing_jobs[processing].processing_job_status == "Stopped"
    assert backend.training_jobs[other].training_job_status == "InProgress"
    # AND the events carry the cause on one line, and the stopped jobs as a note
    [(stage_type, stage_event), (run_type, run_event)] = _published(aws)
    cause = "AlgorithmError: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert stage_type == "Stage Failed" and stage_event.status is Status.FAILED
    assert stage_event.error == "States.TaskFailed" and stage_event.message == cause
    assert stage_event.notes == [f"stopped {running}, {processing}"]
    assert run_type == "Run Failed" and run_event.message == f"train: {cause}"
    assert result["cause"] == cause and result["error"] == "States.TaskFailed"
    assert _item(aws, Stage.TRAIN)["status"] == "failed" and _item(aws, Stage.TRAIN)["error"] == "States.TaskFailed"
    assert _item(aws, Stage.RUN)["status"] == "failed"


# ---------------------------------------------------------------------------------------------------------------------
# Completion


def test_completing_the_run_publishes_the_headline_numbers_from_the_ledger(aws: SimpleNamespace) -> None:
    # GIVEN a run whose stages are all in the ledger
    _call(aws, "start", Stage.VALIDATE, _state())
    ledger.put_stage(TABLE, RUN_ID, "validate", {"metrics": {"examples": 118, "tokens": 54321}})
    ledger.put_stage(
        TABLE,
        RUN_ID,
        "train",
        {
            "status": "succeeded",
            "metrics": {"final_train_loss": 0.42, "tokens_per_second": 1520.5, "instance_type": "ml.g5.2xlarge"},
            "artifacts": {"adapter": "s3://b/model.tar.gz"},
        },
    )
    ledger.put_stage(
        TABLE,
        RUN_ID,
        "evaluate",
        {
            "metrics": {"candidate.exact_match": 0.82, "base.exact_match": 0.31, "passed": True},
            "artifacts": {"evaluation": "s3://b/evaluation.json"},
        },
    )
    ledger.put_stage(TABLE, RUN_ID, "quantize", {"status": "skipped"})
    _published(aws)
    # WHEN the run completes
    result = _call(aws, "complete", Stage.RUN, _state())
    # THEN Run Succeeded carries the headline numbers and every artifact, named by stage
    [(detail_type, event)] = _published(aws)
    assert detail_type == "Run Succeeded" and event.stage is Stage.RUN and event.status is Status.SUCCEEDED
    assert event.metrics == {
        "validate.examples": 118,
        "train.final_train_loss": 0.42,
        "train.tokens_per_second": 1520.5,
        "evaluate.candidate.exact_match": 0.82,
    }
    assert event.artifacts == {"train.adapter": "s3://b/model.tar.gz", "evaluate.evaluation": "s3://b/evaluation.json"}
    assert event.message == "model evaluated and registered"
    assert event.duration_s is not None and event.duration_s >= 0
    assert result == {"status": "succeeded", "metrics": event.metrics, "artifacts": event.artifacts}
    assert _item(aws, Stage.RUN)["status"] == "succeeded"


def test_the_lambda_handler_parses_the_request_and_reads_its_settings(aws: SimpleNamespace) -> None:
    # GIVEN the Stage function as deployed, its environment set
    module = _load_handler()
    event = {"action": "start", "stage": "validate", "execution_arn": EXECUTION_ARN, "state": _state()}
    # WHEN the state machine invokes it THEN the run starts
    assert module.handler(event, CONTEXT) == {}
    assert _item(aws, Stage.RUN)["status"] == "started"


def _load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stage_app", ROOT / "functions" / "stage" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_state_without_a_run_id_is_a_configuration_error(aws: SimpleNamespace) -> None:
    state = _state()
    del state["run_id"]
    with pytest.raises(InvalidConfiguration, match="the state has no 'run_id'"):
        _call(aws, "start", Stage.VALIDATE, state)


# ---------------------------------------------------------------------------------------------------------------------
# One-line causes


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            {
                "Error": "StorageError",
                "Cause": json.dumps(
                    {
                        "errorMessage": "ledger t: update r/train: AccessDenied\nnot allowed",
                        "errorType": "StorageError",
                        "requestId": "abc",
                        "stackTrace": ['  File "/var/task/app.py", line 1'],
                    }
                ),
            },
            ("StorageError", "ledger t: update r/train: AccessDenied not allowed"),
            id="lambda-error",
        ),
        pytest.param(
            {
                "Error": "States.TaskFailed",
                "Cause": json.dumps({"TrainingJobStatus": "Failed", "FailureReason": "ClientError: no such image"}),
            },
            ("States.TaskFailed", "ClientError: no such image"),
            id="training-job",
        ),
        pytest.param(
            {
                "Error": "States.TaskFailed",
                "Cause": json.dumps(
                    {
                        "ProcessingJobStatus": "Failed",
                        "FailureReason": "AlgorithmError: See job logs for more information",
                        "ExitMessage": "ConfigError: --tolerance must be > 0\n",
                    }
                ),
            },
            (
                "States.TaskFailed",
                "AlgorithmError: See job logs for more information: ConfigError: --tolerance must be > 0",
            ),
            id="processing-job-exit-message",
        ),
        pytest.param(
            {
                "Error": "States.TaskFailed",
                "Cause": json.dumps(
                    {
                        "ProcessingJobStatus": "Failed",
                        "FailureReason": "AlgorithmError: ConfigError: bad",
                        "ExitMessage": "ConfigError: bad",
                    }
                ),
            },
            ("States.TaskFailed", "AlgorithmError: ConfigError: bad"),
            id="processing-job-reason-holds-message",
        ),
        pytest.param(
            {
                "Error": "States.TaskFailed",
                "Cause": json.dumps(
                    {
                        "TrainingJobName": "run-abc-train0",
                        "TrainingJobStatus": "Stopped",
                        "SecondaryStatus": "MaxRuntimeExceeded",
                    }
                ),
            },
            ("States.TaskFailed", "run-abc-train0 stopped (MaxRuntimeExceeded)"),
            id="stopped-job",
        ),
        pytest.param(
            {"Error": "States.Timeout", "Cause": "Task timed out\n  after 3600 seconds"},
            ("States.Timeout", "Task timed out after 3600 seconds"),
            id="plain-text",
        ),
        pytest.param(
            {"Error": "States.Runtime", "Cause": "{not json"}, ("States.Runtime", "{not json"), id="broken-json"
        ),
        pytest.param({}, ("UnknownError", "UnknownError"), id="nothing"),
        pytest.param(None, ("UnknownError", "UnknownError"), id="none"),
    ],
)
def test_one_line_cause(error: dict[str, Any] | None, expected: tuple[str, str]) -> None:
    assert one_line_cause(error) == expected


def test_a_long_cause_is_cut() -> None:
    name, cause = one_line_cause({"Error": "X", "Cause": "word " * 500})
    assert name == "X" and len(cause) == CAUSE_MAX and "\n" not in cause


def test_a_deployed_run_says_where_it_serves_and_a_skipped_deploy_says_why(aws: SimpleNamespace) -> None:
    # GIVEN a run whose deploy stage recorded an endpoint that answered the smoke test
    _call(aws, "start", Stage.VALIDATE, _state())
    deployment = {
        "target": "vllm",
        "status": "ready",
        "max_polls": 10,
        "endpoint_name": "support-1a2b3c4d",
        "endpoint_config_name": f"{RUN_ID}-serve",
        "model_name": f"{RUN_ID}-serve",
        "mode": "update",
        "question": "Ticket: refund please",
        "answer": "billing",
    }
    state = _state(deploy={"deployment": deployment})
    _call(aws, "finish", Stage.DEPLOY, state)
    _published(aws)

    # WHEN the run completes
    _call(aws, "complete", Stage.RUN, state)

    # THEN Run Succeeded names the endpoint and carries the deploy stage's headline numbers
    [(_, event)] = _published(aws)
    assert event.message == "deployed to endpoint support-1a2b3c4d (updated)"
    assert event.metrics["deploy.endpoint_name"] == "support-1a2b3c4d"
    assert event.metrics["deploy.smoke_test_answer"] == "billing"
    assert event.artifacts["deploy.endpoint"] == "support-1a2b3c4d"


def test_a_run_not_deployed_says_why_in_its_success_message(aws: SimpleNamespace) -> None:
    # GIVEN a run whose deploy stage was skipped
    _call(aws, "start", Stage.VALIDATE, _state())
    _call(aws, "skip", Stage.DEPLOY, _state(), reason="deploy not configured (DeployTarget=none)")
    _published(aws)

    # WHEN the run completes / THEN its message says the model was registered and why it was not deployed
    _call(aws, "complete", Stage.RUN, _state())
    [(_, event)] = _published(aws)
    assert event.message == "model evaluated and registered; deploy not configured (DeployTarget=none)"


RUN_OBJECTS = {
    "data/train.jsonl": True,  # normalized splits and checkpoints are intermediates
    "data/eval.jsonl": True,
    "checkpoints/checkpoint-10/adapter_model.safetensors": True,
    "validation/report.json": False,  # reports, the adapter and the models stay
    "train/model.tar.gz": False,
    "merged/model.safetensors": False,
    "evaluation/evaluation.json": False,
}


def _retention_tags(aws: SimpleNamespace, run_id: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in RUN_OBJECTS:
        tags = aws.s3.get_object_tagging(Bucket=BUCKET, Key=f"runs/{run_id}/{name}")["TagSet"]
        found[name] = {tag["Key"]: tag["Value"] for tag in tags}.get("tuneplane:retention")
    return found


@pytest.mark.parametrize("outcome", ["complete", "fail"])
def test_a_run_that_ends_tags_its_intermediates_for_the_lifecycle_rule(aws: SimpleNamespace, outcome: str) -> None:
    # GIVEN a run's outputs under runs/<id>/ and another run's checkpoint
    for name in RUN_OBJECTS:
        aws.s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/{name}", Body=b"x")
    other = "other-run-0123456789abcdef"
    aws.s3.put_object(Bucket=BUCKET, Key=f"runs/{other}/checkpoints/state.pt", Body=b"x")
    # WHEN the run ends, succeeding or failing
    if outcome == "complete":
        _call(aws, "complete", Stage.RUN, _state())
    else:
        error = {"Error": "States.TaskFailed", "Cause": "AlgorithmError: boom"}
        _call(aws, "fail", Stage.TRAIN, _state(error=error, failed_stage="train"))
    # THEN its splits and checkpoints carry the tag the lifecycle rule expires, and nothing else does
    assert _retention_tags(aws, RUN_ID) == {
        name: "intermediate" if kept else None for name, kept in RUN_OBJECTS.items()
    }
    assert aws.s3.get_object_tagging(Bucket=BUCKET, Key=f"runs/{other}/checkpoints/state.pt")["TagSet"] == []


def test_the_lifecycle_rule_expires_exactly_what_runs_tag() -> None:
    # GIVEN the data bucket's lifecycle rules in the template
    from local.cfn_yaml import load_cfn_yaml

    from tuneplane.logic.retention import INTERMEDIATE_TAG

    bucket = load_cfn_yaml(ROOT / "template.yaml")["Resources"]["DataBucket"]["Properties"]
    [rule] = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r["Id"] == "ExpireRunIntermediates"]
    # THEN it keys on the tag runs set, under runs/ only (incoming/ is never expired)
    assert {tag["Key"]: tag["Value"] for tag in rule["TagFilters"]} == INTERMEDIATE_TAG
    assert rule["Prefix"] == "runs/" and rule["Status"] == "Enabled"


def test_an_incomplete_cost_estimate_is_said_in_the_validate_event() -> None:
    # GIVEN a validation whose estimate could not price the run's instance type
    from tuneplane.logic.stage_outcomes import RunView, outcome_of

    warning = "no price for instance type ml.p4de.24xlarge: the train cost is unknown"
    state = _state(validation={"summary": {**SUMMARY, "cost_warnings": [warning]}})
    # WHEN the validate stage's outcome is made (what its Stage Succeeded event and Slack message carry)
    outcome = outcome_of(Stage.VALIDATE, RunView(state, None), None)  # type: ignore[arg-type]  # settings unused
    # THEN it says so, not only a log line
    assert outcome.notes == [f"cost estimate incomplete: {warning}"]


def test_a_redriven_execution_of_an_ended_run_starts_nothing_and_records_nothing(aws: SimpleNamespace) -> None:
    from tuneplane.errors import RunAlreadyEnded

    # GIVEN a run that ended (Run Succeeded recorded), whose execution an operator redrives from StartTrain
    _call(aws, "start", Stage.VALIDATE, _state())
    _call(aws, "complete", Stage.RUN, _state())
    _published(aws)
    # WHEN the redriven execution starts a stage
    with pytest.raises(RunAlreadyEnded, match="ended succeeded already"):
        _call(aws, "start", Stage.TRAIN, _state())
    # AND its Catch sends it down the failure path with that error
    failed = _state(error={"Error": "RunAlreadyEnded", "Cause": "run ended succeeded already"})
    answer = _call(aws, "fail", Stage.TRAIN, failed)
    # THEN nothing was recorded or published: the run's one outcome stands
    assert answer["error"] == "RunAlreadyEnded"
    assert _published(aws) == []
    assert _item(aws, Stage.RUN)["status"] == "succeeded"
    assert ledger.get_stage(TABLE, RUN_ID, Stage.TRAIN.value) is None


def test_a_hand_started_copy_of_a_runs_input_neither_runs_nor_ends_the_run(aws: SimpleNamespace) -> None:
    from tuneplane.errors import ForeignExecution

    # GIVEN a run begun by its execution
    _call(aws, "start", Stage.VALIDATE, _state())
    _published(aws)
    copy_arn = EXECUTION_ARN.rsplit(":", 1)[0] + ":operator-retry"
    # WHEN a second execution with the same input (started by hand) starts a stage, then fails and reports it
    with pytest.raises(ForeignExecution, match="belongs to execution"):
        handle(StageRequest(action="start", stage=Stage.TRAIN, execution_arn=copy_arn, state=_state()), aws.settings)
    failed = _state(error={"Error": "ForeignExecution", "Cause": "belongs to another execution"})
    answer = handle(StageRequest(action="fail", stage=Stage.TRAIN, execution_arn=copy_arn, state=failed), aws.settings)
    # THEN nothing of the run changed and nothing was published: the run is still its first execution's
    assert answer["status"] == "ignored"
    assert _published(aws) == []
    assert _item(aws, Stage.RUN)["status"] == "started" and _item(aws, Stage.RUN)["execution_arn"] == EXECUTION_ARN


def test_when_two_paths_end_a_run_at_once_only_the_first_outcome_is_recorded_and_published(
    aws: SimpleNamespace,
) -> None:
    # GIVEN a run ended Failed (a stop's reconciler got there first)
    _call(aws, "start", Stage.VALIDATE, _state())
    _call(aws, "fail", Stage.TRAIN, _state(error={"Error": "ExecutionAborted", "Cause": "stopped"}))
    assert [detail_type for detail_type, _ in _published(aws)][-1] == "Run Failed"
    # WHEN the execution's own last state, still running, completes the run
    _call(aws, "complete", Stage.RUN, _state())
    # THEN no second outcome is published and the first stands
    assert [detail_type for detail_type, _ in _published(aws) if detail_type.startswith("Run ")] == []
    assert _item(aws, Stage.RUN)["status"] == "failed"


def test_a_quantized_run_is_evaluated_as_the_endpoint_serves_it(aws: SimpleNamespace) -> None:
    # GIVEN a run whose quantize stage made the AWQ model the vLLM endpoint will serve
    quantized = f"s3://{BUCKET}/runs/{RUN_ID}/quantized/"
    state = _state(recorded={"quantize": {"outcome": {"stage": "quantize", "artifacts": {"quantized": quantized}}}})
    # WHEN Evaluate starts
    spec = _call(aws, "start", Stage.EVALUATE, state)
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in spec["request"]["ProcessingInputs"]}
    # THEN the candidate is the quantized model, and the merged model it came from is measured beside it
    assert inputs["candidate"] == quantized
    assert inputs["unquantized"] == f"s3://{BUCKET}/runs/{RUN_ID}/merged/"
    # AND a run that did not quantize evaluates the merged model alone
    plain = _call(aws, "start", Stage.EVALUATE, _state())
    names = {i["InputName"]: i["S3Input"]["S3Uri"] for i in plain["request"]["ProcessingInputs"]}
    assert names["candidate"] == f"s3://{BUCKET}/runs/{RUN_ID}/merged/" and "unquantized" not in names


@pytest.mark.parametrize(
    ("stack_target", "sidecar_target", "target"),
    [
        ("vllm", None, "vllm"),
        ("bedrock", None, "bedrock"),
        ("none", None, "none"),
        ("none", "vllm", "vllm"),
        ("vllm", "none", "none"),
        ("vllm", "bedrock", "bedrock"),
    ],
)
def test_a_lora_served_run_is_evaluated_as_the_base_with_its_adapter(
    aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, stack_target: str, sidecar_target: str | None, target: str
) -> None:
    # GIVEN a stack that serves adapters on the base (ServeMode=lora), and a run that trained one (and quantized),
    # going where its sidecar says, else where the stack does
    _restack(aws, monkeypatch, SERVE_MODE="lora")
    adapter = f"s3://{BUCKET}/runs/{RUN_ID}/train/output/model.tar.gz"
    quantized = f"s3://{BUCKET}/runs/{RUN_ID}/quantized/"
    state = _state(
        deploy_target=sidecar_target,
        pipeline={"quantize": "true", "deploy_target": stack_target, "train_attempt": 0},
        train={"model_artifacts": adapter},
        recorded={"quantize": {"outcome": {"stage": "quantize", "artifacts": {"quantized": quantized}}}},
    )
    # WHEN Evaluate starts
    spec = _call(aws, "start", Stage.EVALUATE, state)
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in spec["request"]["ProcessingInputs"]}
    arguments = spec["request"]["AppSpecification"]["ContainerArguments"]
    if target == "vllm":
        # THEN on a vLLM endpoint the candidate is the base with the adapter (no merged or quantized model is served)
        assert inputs["adapter"] == adapter and inputs["base"] == aws.settings.base_model_s3_uri
        assert "candidate" not in inputs and "unquantized" not in inputs
        assert "--adapter_dir=/opt/ml/processing/input/adapter" in arguments
    else:
        # THEN elsewhere (Bedrock imports the merged model; none serves nothing) ServeMode does not apply
        assert "adapter" not in inputs and inputs["candidate"] in (quantized, f"s3://{BUCKET}/runs/{RUN_ID}/merged/")


def test_a_lora_served_run_without_an_adapter_cannot_be_evaluated(
    aws: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN ServeMode=lora and a run whose training result names no model artifacts
    _restack(aws, monkeypatch, SERVE_MODE="lora")
    state = _state(pipeline={"quantize": "false", "deploy_target": "vllm", "train_attempt": 0}, train={})
    # WHEN Evaluate starts; THEN it refuses, saying what is missing
    with pytest.raises(InvalidConfiguration, match="ServeMode=lora, but the training result has no model artifacts"):
        _call(aws, "start", Stage.EVALUATE, state)
