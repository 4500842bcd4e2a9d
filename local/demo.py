"""`make demo`: the pipeline as far as it exists, on this machine, with no AWS account and no Docker.

The real template.yaml is deployed into the local cloud (moto, local/cloud), a tiny base model (tokenizer + chat
template, built from the data) is put where the stack's BaseModelS3Uri points, and the dataset is uploaded to
incoming/. From there everything is the product's own path: the S3 event starts the StartRun Lambda, which starts
the real state machine, which runs the real Validate Lambda. Today the pipeline ends after validation; the
training, evaluation and deploy stages join as they are built.

    python -m local.demo                      # the bundled demo dataset (local/data/demo.jsonl)
    python -m local.demo --data my.jsonl      # your own file: exit 1, with the report, when it is rejected
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "local" / "data" / "demo.jsonl"
MODEL_BUCKET = "tuneplane-local-models"
MODEL_PREFIX = "tiny-base/"
TIMEOUT_S = 300.0


def _environment(work: Path) -> None:
    os.environ.update(
        {
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_DISABLED": "1",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "TMPDIR": str(work),
        }
    )


def _capture_bus(bus_name: str) -> str:
    """Every event on the pipeline's bus is copied to a queue: they are what Slack will be sent."""
    import boto3

    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName="demo-bus-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="demo-copy", EventBusName=bus_name, EventPattern=json.dumps({"source": ["tuneplane"]}))
    events.put_targets(Rule="demo-copy", EventBusName=bus_name, Targets=[{"Id": "queue", "Arn": arn}])
    return str(url)


def _drain(queue_url: str) -> list[dict[str, Any]]:
    import boto3

    sqs = boto3.client("sqs")
    received: list[dict[str, Any]] = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            received.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return received


def _wait_for_execution(state_machine_arn: str) -> dict[str, Any]:
    import boto3

    sfn = boto3.client("stepfunctions")
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        listed = sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]
        if listed and (execution := sfn.describe_execution(executionArn=listed[0]["executionArn"]))["status"] != (
            "RUNNING"
        ):
            return dict(execution)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no finished execution after {TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def _stage_table(execution_arn: str) -> list[str]:
    """One row per state the execution went through, with its duration."""
    import boto3

    history = boto3.client("stepfunctions").get_execution_history(executionArn=execution_arn, maxResults=1000)
    rows, entered = [], {}
    for event in history["events"]:
        when: datetime = event["timestamp"]
        if "stateEnteredEventDetails" in event:
            entered[event["stateEnteredEventDetails"]["name"]] = when
        elif "stateExitedEventDetails" in event:
            name = event["stateExitedEventDetails"]["name"]
            seconds = (when - entered.pop(name, when)).total_seconds()
            rows.append(f"    {name:<28} done     {seconds:6.2f} s")
    rows += [f"    {name:<28} FAILED" for name in entered]
    return rows


def run(data: Path) -> int:
    import boto3

    from local.cloud import deploy, local_cloud
    from local.tiny_model import texts_of, write_base_model

    with tempfile.TemporaryDirectory(prefix="tuneplane-demo-") as scratch:
        work = Path(scratch)
        _environment(work)
        with local_cloud():
            print(f"1/5 building a tiny base model (byte-level BPE tokenizer + ChatML template) from {data.name}")
            try:
                texts = texts_of(data)
            except ValueError:  # not JSON at all: any tokenizer will do to show the report
                texts = [data.read_bytes()[:100_000].decode("utf-8", "replace")]
            model_dir = write_base_model(work / "base-model", texts)
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=MODEL_BUCKET)
            for file in model_dir.iterdir():
                s3.upload_file(str(file), MODEL_BUCKET, MODEL_PREFIX + file.name)
            print("2/5 deploying template.yaml into the local cloud (moto)")
            deployment = deploy({"BaseModelS3Uri": f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}"}, stack_name="tuneplane-demo")
            bus_queue = _capture_bus(deployment.bus_name)
            key = f"incoming/{data.name}"
            print(f"3/5 uploading s3://{deployment.bucket_name}/{key}: the S3 event starts the run")
            body = data.read_bytes()
            version = s3.put_object(Bucket=deployment.bucket_name, Key=key, Body=body)["VersionId"]
            execution = _wait_for_execution(deployment.state_machine_arn)
            run_id = execution["name"]
            print(f"4/5 run {run_id}: {execution['status']}")
            print("\n".join(_stage_table(execution["executionArn"])))
            print("\n5/5 stage events on the bus (each becomes a Slack message):")
            for event in _drain(bus_queue):
                detail = event["detail"]
                print(
                    f"    {event['detail-type']:<16} stage={detail.get('stage')} outcome={detail.get('outcome', '-')}"
                )
            summary_key = f"runs/{run_id}/validation/summary.txt"
            summary = s3.get_object(Bucket=deployment.bucket_name, Key=summary_key)["Body"].read().decode()
            print("\nvalidation report:\n    " + summary.replace("\n", "\n    "))
            print("\nrun artifacts:")
            for item in s3.list_objects_v2(Bucket=deployment.bucket_name, Prefix=f"runs/{run_id}/").get(
                "Contents", []
            ):
                print(f"    s3://{deployment.bucket_name}/{item['Key']}  ({item['Size']:,} bytes)")
            stored = s3.get_object(Bucket=deployment.bucket_name, Key=key, VersionId=version)["Body"].read()
            untouched = stored == body
            print(f"\nuploaded object untouched: {'yes' if untouched else 'NO'}")
            succeeded = execution["status"] == "SUCCEEDED"
            print(
                "\nPASSED: the data is ready for training (the training stages arrive with the next issues)"
                if succeeded
                else "\nREJECTED: fix the problems above and upload again"
            )
            return 0 if succeeded and untouched else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEMO_DATA, help="a .jsonl or .jsonl.gz dataset")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"demo: error: {args.data}: no such file", file=sys.stderr)
        return 2
    return run(args.data)


if __name__ == "__main__":
    sys.exit(main())
