"""The state-machine test harness: the real template deployed into moto (local/cloud), one fresh stack per test.

Every event published on the stack's bus is copied to an SQS queue by a catch-all rule, so tests can assert on the
sequence of stage events; S3's events on the default bus are copied the same way, so a test can re-deliver one.
An upload under incoming/ starts a run by itself (the StartRun trigger); tests that start executions themselves
turn the trigger off first (``disable_trigger``). The tiny base model is uploaded where ``BaseModelS3Uri`` points.
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
from local.cloud.s3_events import deliver_to_default_bus

MODEL_BUCKET = "tuneplane-test-models"
MODEL_PREFIX = "tiny/"
EXECUTION_TIMEOUT_S = 60.0
S3_OBJECT_CREATED = {"source": ["aws.s3"], "detail-type": ["Object Created"]}
TRIGGER_RULE = "StartRunFunctionDatasetUploaded"  # logical id SAM gives the StartRun function's EventBridge rule


@dataclass
class Cloud:
    """A deployed stack and the clients a test needs."""

    deployment: LocalDeployment
    s3: Any
    sfn: Any
    sqs: Any
    events_queue_url: str
    s3_events_queue_url: str

    def upload(self, key: str, lines: list[str]) -> str:
        """Put ``lines`` as a JSONL object in the data bucket; returns the new version id."""
        return self.put(key, "".join(line + "\n" for line in lines).encode())

    def put(self, key: str, body: bytes) -> str:
        """Put ``body`` in the data bucket; returns the new version id."""
        response = self.s3.put_object(Bucket=self.deployment.bucket_name, Key=key, Body=body)
        return str(response["VersionId"])

    def disable_trigger(self) -> None:
        """Uploads under incoming/ no longer start runs (for tests that start executions themselves)."""
        boto3.client("events").disable_rule(Name=self.deployment.resources[TRIGGER_RULE])

    def run(self, name: str, execution_input: dict[str, Any]) -> dict[str, Any]:
        """Start an execution of the pipeline and wait (bounded) until it is no longer RUNNING."""
        arn = self.sfn.start_execution(
            stateMachineArn=self.deployment.state_machine_arn, name=name, input=json.dumps(execution_input)
        )["executionArn"]
        return self.wait(arn)

    def wait(self, execution_arn: str) -> dict[str, Any]:
        """The execution once it is no longer RUNNING (bounded wait)."""
        deadline = time.monotonic() + EXECUTION_TIMEOUT_S
        while (execution := self.sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
            if time.monotonic() > deadline:
                raise AssertionError(f"execution {execution_arn} still RUNNING after {EXECUTION_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        return dict(execution)

    def executions(self) -> list[dict[str, Any]]:
        """Every execution of the pipeline so far, oldest first."""
        listed = self.sfn.list_executions(stateMachineArn=self.deployment.state_machine_arn, maxResults=1000)
        return sorted(listed["executions"], key=lambda execution: execution["startDate"])

    def s3_events(self) -> list[dict[str, Any]]:
        """Every S3 Object Created event that reached the default bus so far (EventBridge envelopes), in order."""
        return self._drain(self.s3_events_queue_url)

    def redeliver(self, event: dict[str, Any]) -> None:
        """Deliver ``event`` to the default bus's rules again, as EventBridge may (at-least-once delivery)."""
        deliver_to_default_bus(event, self.deployment.account_id, self.deployment.region)  # type: ignore[arg-type]

    def dead_letters(self) -> list[dict[str, Any]]:
        """Messages in the StartRun dead-letter queue (events that could not start a run)."""
        url = self.deployment.outputs["StartRunDeadLetterQueueUrl"]
        return list(self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []))

    def states_entered(self, execution_arn: str) -> list[str]:
        history = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return [event["stateEnteredEventDetails"]["name"] for event in history if "stateEnteredEventDetails" in event]

    def keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.deployment.bucket_name, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    def bus_events(self) -> list[dict[str, Any]]:
        """Every event that reached the bus so far (EventBridge envelopes, ``detail`` parsed), in order."""
        return self._drain(self.events_queue_url)

    def _drain(self, queue_url: str) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        while messages := self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                received.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return received


def _capture(bus_name: str, queue_name: str, pattern: dict[str, Any]) -> str:
    """A rule on ``bus_name`` that copies every matching event to a new SQS queue; returns the queue URL."""
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=f"copy-to-{queue_name}", EventBusName=bus_name, EventPattern=json.dumps(pattern))
    events.put_targets(
        Rule=f"copy-to-{queue_name}", EventBusName=bus_name, Targets=[{"Id": "queue", "Arn": queue_arn}]
    )
    return str(queue_url)


@contextmanager
def deployed_cloud(base_model_dir: Path) -> Iterator[Cloud]:
    """A fresh local cloud with the stack deployed and the base model in place."""
    with local_cloud():  # resets the shared package's cached settings and clients on entry and exit
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
            events_queue_url=_capture(deployment.bus_name, "bus-events", {"account": [deployment.account_id]}),
            s3_events_queue_url=_capture("default", "s3-events", S3_OBJECT_CREATED),
        )
