"""A run whose execution ends without recording an outcome (stopped by hand, timed out) still gets exactly one: the
Stage function hears Step Functions' status-change event on the default bus (local/cloud/execution_events.py) and
records Run Failed, stops the run's jobs and frees the same content to be trained again."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import boto3
import pytest
from tests.statemachine.harness import Cloud


def _running(cloud: Cloud) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        executions = cloud.executions()
        if executions and executions[0]["status"] == "RUNNING" and cloud.jobs.started:
            return executions[0]
        time.sleep(0.05)
    raise AssertionError("no run reached its training job")


def _run_outcomes(cloud: Cloud, deadline_s: float = 15.0) -> list[dict[str, Any]]:
    """The Run events on the bus, once the reconciler (an asynchronous invocation) has had time to publish."""
    deadline = time.monotonic() + deadline_s
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events += [e for e in cloud.bus_events() if e["detail-type"].startswith("Run ")]
        if events:
            time.sleep(0.5)  # a second outcome would come now
            return events + [e for e in cloud.bus_events() if e["detail-type"].startswith("Run ")]
        time.sleep(0.1)
    return events


def test_a_run_stopped_by_hand_ends_in_one_run_failed_and_its_content_may_be_trained_again(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN a run whose training job is running (it never ends by itself)
    cloud.jobs.hang.add("train")
    cloud.upload("incoming/support.jsonl", reversal_lines)
    execution = _running(cloud)
    arn = str(execution["executionArn"])
    # WHEN an operator stops the execution (StopExecution, as the console does)
    cloud.sfn.stop_execution(executionArn=arn, error="Operator", cause="stopped from the console")
    assert cloud.wait(arn)["status"] == "ABORTED"
    # THEN exactly one outcome is published: Run Failed, saying the execution was stopped and during which stage
    outcomes = _run_outcomes(cloud)
    assert [e["detail-type"] for e in outcomes] == ["Run Failed"], outcomes
    detail = outcomes[0]["detail"]
    assert detail["error"] == "ExecutionAborted"
    assert "was stopped" in detail["message"] and "during train" in detail["message"]
    run_id = detail["run_id"]
    ledger = cloud.ledger(run_id)
    assert ledger["run"]["status"] == "failed" and ledger["train"]["status"] == "failed"
    # AND an upload of the same bytes trains again instead of being answered "same content as" the stopped run
    cloud.jobs.hang.clear()
    cloud.upload("incoming/support.jsonl", reversal_lines)
    executions = [e for e in cloud.executions() if e["executionArn"] != arn]
    assert len(executions) == 1
    second = cloud.wait(str(executions[0]["executionArn"]))
    assert second["status"] == "SUCCEEDED", second.get("cause")
    assert "Train" in cloud.states_entered(str(second["executionArn"]))


def test_a_run_that_recorded_its_outcome_is_left_alone(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN a run rejected by validation (its execution FAILED, after recording Run Rejected)
    lines = list(reversal_lines)
    lines[4] = lines[4].replace('"assistant"', '"assitant"')
    cloud.upload("incoming/support.jsonl", lines)
    [execution] = cloud.executions()
    assert cloud.wait(str(execution["executionArn"]))["status"] == "FAILED"
    # WHEN the status-change event of that FAILED execution has been handled
    outcomes = _run_outcomes(cloud)
    # THEN the run still has its one outcome: nothing was added or changed
    assert [e["detail-type"] for e in outcomes] == ["Run Rejected"]
    assert cloud.ledger(outcomes[0]["detail"]["run_id"])["run"]["status"] == "rejected"


def test_a_run_whose_status_event_was_lost_gets_its_outcome_from_the_hourly_sweep(
    cloud: Cloud, reversal_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneplane.logic import reconcile

    # GIVEN a run stopped by hand while the status-change rule delivered nothing (best-effort delivery lost it)
    events = boto3.client("events")
    events.disable_rule(Name=cloud.deployment.resources["StageFunctionExecutionEnded"])
    cloud.jobs.hang.add("train")
    cloud.upload("incoming/support.jsonl", reversal_lines)
    arn = str(_running(cloud)["executionArn"])
    cloud.sfn.stop_execution(executionArn=arn)
    assert cloud.wait(arn)["status"] == "ABORTED"
    assert _run_outcomes(cloud, deadline_s=2.0) == []
    # WHEN the hourly schedule invokes the Stage function (runs of any age: the test does not wait 30 minutes)
    monkeypatch.setattr(reconcile, "SWEEP_MIN_AGE", timedelta(0))
    scheduled = {
        "version": "0",
        "id": "sweep-1",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2026-12-04T20:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }
    answer = boto3.client("lambda").invoke(
        FunctionName=cloud.deployment.resources["StageFunction"], Payload=json.dumps(scheduled).encode()
    )
    swept = json.loads(answer["Payload"].read())
    # THEN the run gets its one outcome, and a second sweep changes nothing
    assert len(swept["reconciled"]) == 1, swept
    outcomes = _run_outcomes(cloud)
    assert [e["detail-type"] for e in outcomes] == ["Run Failed"] and outcomes[0]["detail"][
        "error"
    ] == "ExecutionAborted"
    again = boto3.client("lambda").invoke(
        FunctionName=cloud.deployment.resources["StageFunction"], Payload=json.dumps(scheduled).encode()
    )
    assert json.loads(again["Payload"].read())["reconciled"] == []
