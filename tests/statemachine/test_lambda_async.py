"""Lambda's asynchronous invocation in the local cloud (local/cloud/lambda_async.py), on the real stack: an EventBridge
rule invokes the Notify and StartRun functions as AWS does, so a function error is retried as the function's
EventInvokeConfig says (1 + MaximumRetryAttempts attempts, 1 then 2 minutes apart on the compressed clock) and then
lands in its on-failure queue as Lambda's invocation record; without a destination the event is dropped.

Notify posts to a local Slack webhook (127.0.0.1) that can be told to refuse posts: each Notify invocation makes
SLACK_MAX_ATTEMPTS (3, the template's) posts before it fails with SlackDeliveryFailed."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from local.cloud import LocalDeployment, deploy, local_cloud
from local.cloud.template import load_sam_template
from local.slack import LocalSlack, local_slack_webhook
from tests.statemachine.harness import Cloud

ROOT = Path(__file__).resolve().parents[2]
STARTED = json.loads((ROOT / "events" / "pipeline_event_stage_started_validate.json").read_text())
TIME_SCALE = 0.01
SLACK_POSTS_PER_INVOCATION = 3  # template.yaml: NotifyFunction's SLACK_MAX_ATTEMPTS
RETRY_WAITS_S = (60, 120)  # AWS: a minute before the first retry, two before the second
DEFAULT_RETRIES = 2  # AWS: without an EventInvokeConfig, Lambda retries a failed asynchronous invocation twice
ISO_MILLIS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass
class NotifyStack:
    """The stack deployed with a Slack webhook secret, so that it has the Notify function and its queue."""

    deployment: LocalDeployment
    slack: LocalSlack
    lam: Any
    sqs: Any
    events: Any

    @property
    def function_name(self) -> str:
        return self.deployment.outputs["NotifyFunctionName"]

    @property
    def queue_url(self) -> str:
        return self.deployment.outputs["NotifyDeadLetterQueueUrl"]

    def publish(self) -> str:
        """Put the sample Stage Started event on the stack's bus, as the Stage function does; returns its id."""
        response = self.events.put_events(
            Entries=[
                {
                    "Source": STARTED["source"],
                    "DetailType": STARTED["detail-type"],
                    "Detail": json.dumps(STARTED["detail"]),
                    "EventBusName": self.deployment.bus_name,
                }
            ]
        )
        assert response["FailedEntryCount"] == 0, response  # whatever the function does, the sender never sees it
        return str(response["Entries"][0]["EventId"])

    def invocations(self) -> int:
        """How many times Notify ran (one START line per invocation in its log group)."""
        logs = boto3.client("logs")
        group = f"/aws/lambda/{self.function_name}"
        if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
            return 0
        messages = [event["message"] for event in logs.filter_log_events(logGroupName=group)["events"]]
        return sum(message.startswith("START RequestId:") for message in messages)

    def records(self) -> list[dict[str, Any]]:
        """The messages in Notify's on-failure queue (deleted as they are read), bodies parsed."""
        received: list[dict[str, Any]] = []
        while batch := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            for message in batch:
                received.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return received

    def queue_arn(self) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])


@pytest.fixture
def notify_stack() -> Iterator[NotifyStack]:
    parameters.clear_caches()  # Powertools keeps fetched secrets at module level, across local clouds
    with (
        local_cloud(time_scale=TIME_SCALE, enforce_iam=False),
        local_slack_webhook(echo=False, retry_after="0") as slack,
    ):
        secret_arn = boto3.client("secretsmanager").create_secret(Name="tuneplane/slack", SecretString=slack.url)[
            "ARN"
        ]
        deployment = deploy(
            {"BaseModelS3Uri": "s3://tuneplane-test-models/tiny/", "SlackWebhookSecretArn": secret_arn},
            stack_name="tuneplane-test",
        )
        yield NotifyStack(deployment, slack, boto3.client("lambda"), boto3.client("sqs"), boto3.client("events"))
    parameters.clear_caches()


def test_deploy_applies_each_functions_event_invoke_config(notify_stack: NotifyStack) -> None:
    # GIVEN the stack deployed (moto's CloudFormation skips AWS::Lambda::EventInvokeConfig)
    outputs = notify_stack.deployment.outputs
    # THEN Lambda knows the asynchronous invocation settings of both EventBridge-invoked functions, as in the template
    resources = load_sam_template()["Resources"]
    for function, queue in (
        ("StartRunFunction", "StartRunDeadLetterQueue"),
        ("NotifyFunction", "NotifyDeadLetterQueue"),
    ):
        expected = resources[function]["Properties"]["EventInvokeConfig"]
        name, url = outputs[f"{function}Name"], outputs[f"{queue}Url"]
        config = notify_stack.lam.get_function_event_invoke_config(FunctionName=name, Qualifier="$LATEST")
        queue_arn = notify_stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        assert config["MaximumRetryAttempts"] == expected["MaximumRetryAttempts"]
        assert config["MaximumEventAgeInSeconds"] == expected["MaximumEventAgeInSeconds"]
        assert config["DestinationConfig"]["OnFailure"]["Destination"] == queue_arn["Attributes"]["QueueArn"]


def test_a_function_that_always_fails_is_retried_then_its_record_lands_in_the_on_failure_queue(
    notify_stack: NotifyStack,
) -> None:
    # GIVEN Slack refusing every post, and Notify's retry setting as deployed
    notify_stack.slack.fail_first = 10_000
    config = notify_stack.lam.get_function_event_invoke_config(FunctionName=notify_stack.function_name)
    retries = config["MaximumRetryAttempts"]
    # WHEN a pipeline event is put on the bus
    started = time.monotonic()
    event_id = notify_stack.publish()
    elapsed = time.monotonic() - started
    # THEN Notify ran 1 + MaximumRetryAttempts times, each time trying Slack 3 times
    assert retries > 0 and notify_stack.invocations() == 1 + retries
    assert [request.status for request in notify_stack.slack.requests] == [429] * SLACK_POSTS_PER_INVOCATION * (
        1 + retries
    )
    # AND Lambda waited 1 and 2 minutes between the attempts, on the compressed clock
    waited = sum(RETRY_WAITS_S[:retries]) * TIME_SCALE
    assert waited <= elapsed < waited + 30
    # AND the on-failure queue holds one invocation record with the fields the AWS docs show
    [record] = notify_stack.records()
    function_arn = notify_stack.lam.get_function(FunctionName=notify_stack.function_name)["Configuration"][
        "FunctionArn"
    ]
    assert set(record) == {
        "version",
        "timestamp",
        "requestContext",
        "requestPayload",
        "responseContext",
        "responsePayload",
    }
    assert record["version"] == "1.0" and re.fullmatch(ISO_MILLIS, record["timestamp"])
    context = record["requestContext"]
    assert re.fullmatch(UUID, context.pop("requestId"))
    assert context == {
        "functionArn": f"{function_arn}:$LATEST",
        "condition": "RetriesExhausted",
        "approximateInvokeCount": 1 + retries,
    }
    assert record["requestPayload"]["id"] == event_id and record["requestPayload"]["detail"] == STARTED["detail"]
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "SlackDeliveryFailed"
    assert set(record["responsePayload"]) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    # AND no message reached Slack
    assert notify_stack.slack.messages == []


def test_a_function_that_fails_once_is_retried_and_nothing_reaches_the_queue(notify_stack: NotifyStack) -> None:
    # GIVEN Slack refusing exactly the posts of one Notify invocation
    notify_stack.slack.fail_first = SLACK_POSTS_PER_INVOCATION
    # WHEN a pipeline event is put on the bus
    notify_stack.publish()
    # THEN the first invocation failed and Lambda's first retry posted the message
    assert notify_stack.invocations() == 2
    assert [request.status for request in notify_stack.slack.requests] == [429, 429, 429, 200]
    assert len(notify_stack.slack.messages) == 1
    # AND the on-failure queue is empty
    assert notify_stack.records() == []


def test_without_a_destination_a_failed_event_is_dropped_after_the_default_retries(
    notify_stack: NotifyStack, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN Notify without asynchronous invocation settings (Lambda's defaults: 2 retries, no destination)
    notify_stack.lam.delete_function_event_invoke_config(FunctionName=notify_stack.function_name)
    notify_stack.slack.fail_first = 10_000
    # WHEN a pipeline event is put on the bus
    with caplog.at_level(logging.ERROR, logger="local.cloud.lambda_async"):
        notify_stack.publish()
    # THEN Notify ran three times, and the event was discarded: not in the queue the template configured
    assert notify_stack.invocations() == 1 + DEFAULT_RETRIES
    assert notify_stack.records() == []
    assert [record.getMessage() for record in caplog.records if "discarded" in record.getMessage()] != []


def test_an_event_older_than_the_maximum_age_is_not_retried(notify_stack: NotifyStack) -> None:
    # GIVEN Notify's events expiring after 60 s (the minimum), less than the minute before Lambda's first retry
    notify_stack.lam.delete_function_event_invoke_config(FunctionName=notify_stack.function_name)
    notify_stack.lam.put_function_event_invoke_config(
        FunctionName=notify_stack.function_name,
        MaximumRetryAttempts=2,
        MaximumEventAgeInSeconds=60,
        DestinationConfig={"OnFailure": {"Destination": notify_stack.queue_arn()}},
    )
    notify_stack.slack.fail_first = 10_000
    # WHEN a pipeline event is put on the bus
    notify_stack.publish()
    # THEN Notify ran once, and the record says the event expired
    assert notify_stack.invocations() == 1
    [record] = notify_stack.records()
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1


def test_an_on_success_destination_gets_a_success_record(notify_stack: NotifyStack) -> None:
    # GIVEN Notify's successes recorded in a queue
    sqs = notify_stack.sqs
    url = sqs.create_queue(QueueName="notify-successes")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    notify_stack.lam.delete_function_event_invoke_config(FunctionName=notify_stack.function_name)
    notify_stack.lam.put_function_event_invoke_config(
        FunctionName=notify_stack.function_name, DestinationConfig={"OnSuccess": {"Destination": arn}}
    )
    # WHEN a pipeline event is put on the bus and Slack takes the message
    notify_stack.publish()
    # THEN the success queue holds a Success record with the function's result, and no function error
    [message] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    record = json.loads(message["Body"])
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"]["detail_type"] == "Stage Started" and record["responsePayload"]["attempts"] == 1
    assert len(notify_stack.slack.messages) == 1


def test_an_upload_that_start_run_cannot_start_lands_in_its_dead_letter_queue(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN StartRun pointed at a state machine that does not exist (and that its role may not touch, as on AWS):
    # every invocation fails
    name = cloud.deployment.outputs["StartRunFunctionName"]
    lam = boto3.client("lambda")
    variables = lam.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
    missing = cloud.deployment.state_machine_arn + "-gone"
    lam.update_function_configuration(
        FunctionName=name, Environment={"Variables": {**variables, "STATE_MACHINE_ARN": missing}}
    )
    retries = lam.get_function_event_invoke_config(FunctionName=name)["MaximumRetryAttempts"]
    # WHEN a dataset is uploaded (S3 event -> the trigger rule -> StartRun, asynchronously)
    version = cloud.upload("incoming/demo.jsonl", reversal_lines)
    # THEN no run started, and the upload's event is in StartRun's dead-letter queue after Lambda's retries
    assert cloud.executions() == []
    [dead] = cloud.dead_letters()
    record = json.loads(dead["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1 + retries
    assert record["requestPayload"]["detail"]["object"]["key"] == "incoming/demo.jsonl"
    assert record["requestPayload"]["detail"]["object"]["version-id"] == version
    assert record["responsePayload"]["errorType"] == "OrchestrationError"
    # (its role is scoped to the stack's state machine: IAM answers before Step Functions can say it does not exist)
    assert "AccessDeniedException" in record["responsePayload"]["errorMessage"]
