"""The state-machine test harness: the real template deployed into moto (local/cloud), one fresh stack per test.

Every event published on the stack's bus is copied to an SQS queue by a catch-all rule, so tests can assert on the
sequence of stage events. The tiny base model is uploaded where ``BaseModelS3Uri`` points.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from local.cloud import LocalDeployment, deploy, local_cloud

MODEL_BUCKET = "tuneplane-test-models"
MODEL_PREFIX = "tiny/"
EXECUTION_TIMEOUT_S = 60.0


def _clear_lambda_caches() -> None:
    """In-process functions share the tuneplane package: reset what a cold start would (see lambda_runtime)."""
    from tuneplane.adapters import s3 as s3_adapter
    from tuneplane.config import validate_settings
    from tuneplane.logic import base_model

    s3_adapter.s3_client.cache_clear()
    validate_settings.cache_clear()
    base_model._fetch.cache_clear()


@dataclass
class Cloud:
    """A deployed stack and the clients a test needs."""

    deployment: LocalDeployment
    s3: Any
    sfn: Any
    sqs: Any
    events_queue_url: str

    def upload(self, key: str, lines: list[str]) -> str:
        """Put ``lines`` as a JSONL object in the data bucket; returns the new version id."""
        body = "".join(line + "\n" for line in lines).encode()
        response = self.s3.put_object(Bucket=self.deployment.bucket_name, Key=key, Body=body)
        return str(response["VersionId"])

    def run(self, name: str, execution_input: dict[str, Any]) -> dict[str, Any]:
        """Start an execution of the pipeline and wait (bounded) until it is no longer RUNNING."""
        arn = self.sfn.start_execution(
            stateMachineArn=self.deployment.state_machine_arn, name=name, input=json.dumps(execution_input)
        )["executionArn"]
        deadline = time.monotonic() + EXECUTION_TIMEOUT_S
        while (execution := self.sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
            if time.monotonic() > deadline:
                raise AssertionError(f"execution {name} still RUNNING after {EXECUTION_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        return dict(execution)

    def states_entered(self, execution_arn: str) -> list[str]:
        history = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return [event["stateEnteredEventDetails"]["name"] for event in history if "stateEnteredEventDetails" in event]

    def keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.deployment.bucket_name, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    def bus_events(self) -> list[dict[str, Any]]:
        """Every event that reached the bus so far (EventBridge envelopes, ``detail`` parsed), in order."""
        received: list[dict[str, Any]] = []
        while messages := self.sqs.receive_message(QueueUrl=self.events_queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                received.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.events_queue_url, ReceiptHandle=message["ReceiptHandle"])
        return received


def _capture_bus_events(deployment: LocalDeployment) -> str:
    """A catch-all rule on the stack's bus that copies every event to a new SQS queue; returns the queue URL."""
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue_url = sqs.create_queue(QueueName="bus-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="all-events",
        EventBusName=deployment.bus_name,
        EventPattern=json.dumps({"account": [deployment.account_id]}),
    )
    events.put_targets(
        Rule="all-events", EventBusName=deployment.bus_name, Targets=[{"Id": "queue", "Arn": queue_arn}]
    )
    return str(queue_url)


@contextmanager
def deployed_cloud(base_model_dir: Path) -> Iterator[Cloud]:
    """A fresh local cloud with the stack deployed and the base model in place."""
    _clear_lambda_caches()
    try:
        with local_cloud():
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=MODEL_BUCKET)
            for file in base_model_dir.iterdir():
                s3.upload_file(str(file), MODEL_BUCKET, MODEL_PREFIX + file.name)
            deployment = deploy({"BaseModelS3Uri": f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}"}, stack_name="tuneplane-test")
            yield Cloud(
                deployment=deployment,
                s3=s3,
                sfn=boto3.client("stepfunctions"),
                sqs=boto3.client("sqs"),
                events_queue_url=_capture_bus_events(deployment),
            )
    finally:
        _clear_lambda_caches()
