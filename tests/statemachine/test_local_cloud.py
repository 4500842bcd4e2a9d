"""The local cloud's own machinery (local/cloud), on a throwaway function and state machine rather than the stack:
Lambda's error contract in process, the environment of a call, compressed time, and where S3 events go."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from local.cloud import local_cloud
from local.cloud.lambda_runtime import CODE_DIR_TAG

HANDLER = """
import os


class Boom(Exception):
    pass


def handler(event, context):
    if event.get("fail"):
        raise Boom("it went boom: " + event["fail"])
    return {
        "greeting": os.environ["GREETING"],
        "memory": context.memory_limit_in_mb,
        "name": context.function_name,
        "time_left": context.get_remaining_time_in_millis() > 0,
    }
"""


def _zip(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", text)
    return buffer.getvalue()


@pytest.fixture
def function(tmp_path: Path) -> Iterator[str]:
    """A function whose code folder (tagged, as deploy does) holds HANDLER; yields its ARN."""
    (tmp_path / "app.py").write_text(HANDLER)
    with local_cloud(time_scale=0.01):
        role = boto3.client("iam").create_role(
            RoleName="fn", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
        )["Role"]["Arn"]
        arn = boto3.client("lambda").create_function(
            FunctionName="probe",
            Runtime="python3.12",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": _zip(HANDLER)},
            MemorySize=256,
            Environment={"Variables": {"GREETING": "hello"}},
            Tags={CODE_DIR_TAG: str(tmp_path)},
        )["FunctionArn"]
        yield str(arn)


def _invoke(arn: str, event: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    response = boto3.client("lambda").invoke(FunctionName=arn, Payload=json.dumps(event).encode())
    return response.get("FunctionError"), json.loads(response["Payload"].read())


def test_handler_runs_in_process_with_its_environment_and_context(function: str) -> None:
    # GIVEN a function with GREETING in its environment, and none in this process
    assert "GREETING" not in os.environ
    # WHEN it is invoked
    error, payload = _invoke(function, {})
    # THEN the handler saw its environment and a context, and the environment is gone again afterwards
    assert error is None
    assert payload == {"greeting": "hello", "memory": 256, "name": "probe", "time_left": True}
    assert "GREETING" not in os.environ


def test_exception_becomes_lambdas_unhandled_error_payload(function: str) -> None:
    # WHEN the handler raises
    error, payload = _invoke(function, {"fail": "on purpose"})
    # THEN the response is Lambda's: Unhandled, with the exception's class name as errorType and its traceback
    assert error == "Unhandled"
    assert payload["errorType"] == "Boom" and payload["errorMessage"] == "it went boom: on purpose"
    assert any("app.py" in frame and "handler" in frame for frame in payload["stackTrace"])
    assert payload["requestId"]


def test_retry_and_wait_times_are_compressed(function: str) -> None:
    # GIVEN a state machine that waits 30 s, then retries a failing task twice 10 s apart (50 s on AWS)
    definition = {
        "StartAt": "Pause",
        "States": {
            "Pause": {"Type": "Wait", "Seconds": 30, "Next": "Call"},
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": function, "Payload": {"fail": "again"}},
                "Retry": [{"ErrorEquals": ["Boom"], "IntervalSeconds": 10, "MaxAttempts": 2, "BackoffRate": 1}],
                "End": True,
            },
        },
    }
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="slow", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
    )["stateMachineArn"]
    # WHEN it runs in the local cloud at time_scale=0.01
    started = time.monotonic()
    arn = sfn.start_execution(stateMachineArn=machine, name="slow-1", input="{}")["executionArn"]
    while (execution := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() - started < 20, "the execution did not finish in compressed time"
        time.sleep(0.05)
    # THEN it took about 0.5 s, and the task really ran three times before failing with the handler's error
    assert time.monotonic() - started < 10
    assert execution["status"] == "FAILED" and execution["error"] == "Boom"
    history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    assert sum(event["type"] == "TaskFailed" for event in history) == 3


def test_s3_events_reach_the_default_bus_only() -> None:
    with local_cloud():
        # GIVEN a bucket with EventBridge notifications on, and a catch-all rule on the default and on a custom bus
        s3, events, sqs = boto3.client("s3"), boto3.client("events"), boto3.client("sqs")
        s3.create_bucket(Bucket="data")
        s3.put_bucket_notification_configuration(
            Bucket="data", NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
        events.create_event_bus(Name="custom")
        queues = {}
        for bus in ("default", "custom"):
            url = sqs.create_queue(QueueName=f"from-{bus}")["QueueUrl"]
            queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name="all", EventBusName=bus, EventPattern=json.dumps({"source": ["aws.s3"]}))
            events.put_targets(Rule="all", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])
            queues[bus] = url
        # WHEN an object is created
        s3.put_object(Bucket="data", Key="incoming/a.jsonl", Body=b"{}\n")
        # THEN only the default bus saw the Object Created event
        received = {bus: sqs.receive_message(QueueUrl=url).get("Messages", []) for bus, url in queues.items()}
        assert [json.loads(m["Body"])["detail-type"] for m in received["default"]] == ["Object Created"]
        assert received["custom"] == []
