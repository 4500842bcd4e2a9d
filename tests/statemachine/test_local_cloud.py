"""The local cloud's own machinery (local/cloud), on a throwaway function and state machine rather than the stack:
Lambda's error contract in process, the environment of a call, compressed time, and where S3 events go."""

from __future__ import annotations

import io
import json
import os
import re
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
    if event.get("bytes"):
        return {"blob": "x" * event["bytes"]}
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
    with local_cloud(time_scale=0.01, enforce_iam=False):
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
    with local_cloud(enforce_iam=False):
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


RECORDER = """
import json
import os

import boto3


def handler(event, context):
    boto3.client("sqs").send_message(QueueUrl=os.environ["SEEN_QUEUE_URL"], MessageBody=json.dumps(event))
"""


def _receive(sqs: Any, url: str) -> list[dict[str, Any]]:
    return list(
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]).get("Messages", [])
    )


def test_eventbridge_delivers_to_lambda_and_step_functions_targets(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(RECORDER)
    with local_cloud(enforce_iam=False):
        events, sqs, lam, sfn = (boto3.client(name) for name in ("events", "sqs", "lambda", "stepfunctions"))
        role = boto3.client("iam").create_role(
            RoleName="any", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
        )["Role"]["Arn"]
        seen = sqs.create_queue(QueueName="seen")["QueueUrl"]
        dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        functions = {}
        for name in ("allowed", "forbidden"):  # the same recorder; only "allowed" lets EventBridge invoke it
            functions[name] = lam.create_function(
                FunctionName=name,
                Runtime="python3.12",
                Role=role,
                Handler="app.handler",
                Code={"ZipFile": _zip(RECORDER)},
                Environment={"Variables": {"SEEN_QUEUE_URL": seen}},
                Tags={CODE_DIR_TAG: str(tmp_path)},
            )["FunctionArn"]
        machine = sfn.create_state_machine(
            name="target",
            definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
            roleArn=role,
        )["stateMachineArn"]
        # GIVEN a rule with a permitted Lambda target, a Lambda target without permission (DLQ set) and a state
        # machine target that receives only the event's detail
        rule_arn = events.put_rule(Name="app", EventPattern=json.dumps({"source": ["test.app"]}))["RuleArn"]
        lam.add_permission(
            FunctionName="allowed",
            StatementId="events",
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceArn=rule_arn,
        )
        events.put_targets(
            Rule="app",
            Targets=[
                {"Id": "allowed", "Arn": functions["allowed"]},
                {"Id": "forbidden", "Arn": functions["forbidden"], "DeadLetterConfig": {"Arn": dlq_arn}},
                {"Id": "machine", "Arn": machine, "RoleArn": role, "InputPath": "$.detail"},
            ],
        )
        # WHEN a matching event and a non-matching one are put on the default bus
        events.put_events(
            Entries=[
                {"Source": "test.app", "DetailType": "Thing Happened", "Detail": json.dumps({"n": 1})},
                {"Source": "other.app", "DetailType": "Thing Happened", "Detail": json.dumps({"n": 2})},
            ]
        )
        # THEN the permitted function got the whole event once, with an ISO-8601 time as on AWS
        [received] = [json.loads(m["Body"]) for m in _receive(sqs, seen)]
        assert received["detail"] == {"n": 1} and received["detail-type"] == "Thing Happened"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", received["time"])
        # AND the function without permission was not invoked: the event is in its DLQ with EventBridge's reasons
        [dead] = _receive(sqs, dlq)
        assert json.loads(dead["Body"])["detail"] == {"n": 1}
        attributes = {name: value["StringValue"] for name, value in dead["MessageAttributes"].items()}
        assert attributes["ERROR_CODE"] == "AccessDeniedException" and attributes["RULE_ARN"] == rule_arn
        assert attributes["TARGET_ARN"] == functions["forbidden"]
        # AND the state machine started one execution whose input is the detail
        [execution] = sfn.list_executions(stateMachineArn=machine)["executions"]
        assert json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"]) == {"n": 1}
        # WHEN the rule is disabled THEN nothing is delivered any more
        events.disable_rule(Name="app")
        events.put_events(Entries=[{"Source": "test.app", "DetailType": "T", "Detail": json.dumps({"n": 3})}])
        assert _receive(sqs, seen) == [] and _receive(sqs, dlq) == []
        assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 1


def _run_machine(definition: dict[str, Any], name: str) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    role = boto3.client("iam").create_role(
        RoleName=f"sfn-{name}", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )["Role"]["Arn"]
    machine = sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=role)["stateMachineArn"]
    arn = sfn.start_execution(stateMachineArn=machine, name="one", input="{}")["executionArn"]
    deadline = time.monotonic() + 20
    while (execution := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return dict(execution)


@pytest.mark.parametrize(("catch", "status"), [("States.ALL", "FAILED"), ("States.DataLimitExceeded", "SUCCEEDED")])
def test_a_result_over_256_kib_is_caught_only_by_name(function: str, catch: str, status: str) -> None:
    # GIVEN a task whose result passes Step Functions' 256 KiB limit, with a Catch on States.ALL or on the name
    definition = {
        "StartAt": "Big",
        "States": {
            "Big": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": function, "Payload": {"bytes": 300 * 1024}},
                "Catch": [{"ErrorEquals": [catch], "ResultPath": "$.error", "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "Result": "caught", "End": True},
        },
    }
    # WHEN it runs
    execution = _run_machine(definition, "big")
    # THEN States.ALL does not catch the terminal States.DataLimitExceeded (the Step Functions guide: "The States.ALL
    # error type can't catch the States.DataLimitExceeded terminal error type"); a Catch naming it does
    assert execution["status"] == status, execution
    if status == "FAILED":
        assert execution["error"] == "States.DataLimitExceeded"
