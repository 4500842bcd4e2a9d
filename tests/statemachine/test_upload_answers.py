"""Issue 15 in the local cloud, on the real stack: every upload under incoming/ gets an answer (a run, or a Run
Rejected event saying what to rename), a sidecar uploaded just after its dataset is waited for, the run's first event
names the sidecar and eval file versions it uses, a missing eval file rejects the run (the uploader's to fix), and the
stack's alarms reach Slack through the alarm topic.

The tests share one stack (harness.StackPool): each uploads datasets of its own names, looks at the executions that
started since it began (``earlier``: those of the tests before it) and the dead letters of its own keys; the capture
queues are drained before each test and every test waits for the runs it started, so the bus events a test reads are
those of its own uploads. The Slack test deploys a stack of its own (another local cloud: the shared one is closed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from local.cloud import deploy, local_cloud
from local.slack import LocalSlack, local_slack_webhook
from moto.s3.models import s3_backends
from tests.statemachine.harness import Cloud, StackPool
from tests.unit.test_notify_alarms import ALARM

from tuneplane.logic import start_run as start_run_logic


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """The module's shared stack (the module docstring)."""
    return shared_cloud


def _dead_letters(cloud: Cloud, key: str) -> list[dict[str, Any]]:
    """The dead letters about ``key`` (the undeliverable event names the object)."""
    return [message for message in cloud.dead_letters() if key in message["Body"]]


def _events_of(cloud: Cloud, execution: dict[str, Any]) -> list[dict[str, Any]]:
    """The bus events of the execution's run, in order."""
    return [event for event in cloud.bus_events() if event["detail"]["run_id"] == execution["name"]]


def _rejections(cloud: Cloud) -> list[dict[str, Any]]:
    return [event for event in cloud.bus_events() if event["detail-type"] == "Run Rejected"]


def test_an_upper_case_suffix_starts_a_run(cloud: Cloud, earlier: set[str], reversal_lines: list[str]) -> None:
    # WHEN a dataset named with an upper-case suffix is uploaded
    cloud.upload("incoming/Support.JSONL", reversal_lines)
    # THEN it starts a run like any other, which succeeds
    [execution] = cloud.executions_since(earlier)
    finished = cloud.wait(str(execution["executionArn"]))
    assert finished["status"] == "SUCCEEDED", finished.get("cause")
    assert json.loads(str(finished["input"]))["key"] == "incoming/Support.JSONL"
    assert str(execution["name"]).startswith("Support-")


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("incoming/.jsonl", "rename it to incoming/<name>.jsonl"),
        ("incoming/data.json", "rename it to incoming/data.jsonl"),
        ("incoming/data.jsonl.zip", "compress it with gzip as incoming/data.jsonl.gz"),
    ],
)
def test_a_name_that_starts_nothing_is_answered_with_run_rejected(
    cloud: Cloud, earlier: set[str], key: str, hint: str
) -> None:
    # WHEN a file whose name starts no run is uploaded under incoming/
    version = cloud.put(key, b'{"messages": []}\n')
    # THEN no execution started, nothing was dead-lettered, and a Run Rejected event says what to rename it to
    assert cloud.executions_since(earlier) == []
    assert _dead_letters(cloud, key) == []
    [rejected] = _rejections(cloud)
    detail = rejected["detail"]
    assert detail["dataset"] == key and detail["version_id"] == version and detail["status"] == "rejected"
    assert hint in detail["message"]


def test_a_sidecar_alone_and_a_hidden_file_get_no_answer(cloud: Cloud, earlier: set[str]) -> None:
    cloud.put("incoming/demo.tuneplane.json", b'{"validation": {}}')
    cloud.put("incoming/.DS_Store", b"\x00")
    assert cloud.executions_since(earlier) == [] and cloud.bus_events() == []


def test_a_sidecar_uploaded_just_after_its_dataset_applies(
    cloud: Cloud, earlier: set[str], reversal_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN StartRun waiting for a sidecar (its wait lasts until the sidecar is stored, at most 10 s of real time)
    bucket = s3_backends[cloud.deployment.account_id]["global"].buckets[cloud.deployment.bucket_name]
    waiting = threading.Event()

    def wait_for_the_sidecar(seconds: float) -> None:
        waiting.set()
        deadline = time.monotonic() + 10
        while not bucket.keys.get("incoming/late.tuneplane.json") and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(start_run_logic, "_sleep", wait_for_the_sidecar)
    # WHEN the dataset is uploaded, then its sidecar (as aws s3 sync does: data.jsonl sorts first)
    upload = threading.Thread(target=cloud.upload, args=("incoming/late.jsonl", reversal_lines))
    upload.start()
    assert waiting.wait(10), "StartRun did not wait for a sidecar"
    sidecar_version = cloud.put("incoming/late.tuneplane.json", b'{"validation": {"min_examples": 50}}')
    upload.join(30)
    # THEN the run has the sidecar's settings (and is rejected by them: 20 examples < 50)
    [execution] = cloud.executions_since(earlier)
    finished = cloud.wait(str(execution["executionArn"]))
    run_input = json.loads(str(finished["input"]))
    assert run_input["overrides"] == {"min_examples": 50} and run_input["sidecar_version_id"] == sidecar_version
    assert finished["error"] == "InvalidTrainingData"
    # AND the run's first event says which sidecar version it uses
    first = _events_of(cloud, execution)[0]
    assert first["detail-type"] == "Stage Started" and first["detail"]["stage"] == "validate"
    assert f"settings: incoming/late.tuneplane.json (version {sidecar_version})" in first["detail"]["notes"]


def test_the_eval_file_is_pinned_and_named_in_the_first_event(cloud: Cloud, reversal_lines: list[str]) -> None:
    # GIVEN an eval file (which starts a run of its own) and a sidecar naming it
    held_out = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"reverse held{i}"},
                    {"role": "assistant", "content": f"{i}dleh"},
                ]
            }
        )
        for i in range(5)
    ]
    eval_version = cloud.upload("incoming/pinned.eval.jsonl", held_out)
    cloud.put("incoming/pinned.tuneplane.json", b'{"eval_file": "incoming/pinned.eval.jsonl"}')
    for execution in cloud.executions():
        cloud.wait(str(execution["executionArn"]))
    cloud.bus_events()
    # WHEN the dataset is uploaded
    cloud.upload("incoming/pinned.jsonl", reversal_lines)
    execution = next(e for e in cloud.executions() if str(e["name"]).startswith("pinned-") and "eval" not in e["name"])
    finished = cloud.wait(str(execution["executionArn"]))
    # THEN its input pins the eval file's version, the run uses it, and its first event names it
    assert finished["status"] == "SUCCEEDED", finished.get("cause")
    run_input = json.loads(str(finished["input"]))
    assert run_input["eval_key"] == "incoming/pinned.eval.jsonl" and run_input["eval_version_id"] == eval_version
    first = _events_of(cloud, execution)[0]
    assert f"eval file: incoming/pinned.eval.jsonl (version {eval_version})" in first["detail"]["notes"]


def test_a_missing_eval_file_rejects_the_run_naming_it(
    cloud: Cloud, earlier: set[str], reversal_lines: list[str]
) -> None:
    # GIVEN a sidecar naming an eval file that was never uploaded
    cloud.put("incoming/noeval.tuneplane.json", b'{"eval_file": "incoming/noeval.eval.jsonl"}')
    # WHEN the dataset is uploaded
    cloud.upload("incoming/noeval.jsonl", reversal_lines)
    # THEN the run is rejected (not failed) with a message naming the sidecar and the missing eval file
    [execution] = cloud.executions_since(earlier)
    finished = cloud.wait(str(execution["executionArn"]))
    assert finished["status"] == "FAILED" and finished["error"] == "InvalidTrainingData"
    run = [event for event in _events_of(cloud, execution) if event["detail"]["stage"] == "run"][-1]
    assert run["detail-type"] == "Run Rejected"
    assert "incoming/noeval.tuneplane.json" in run["detail"]["message"]
    assert "eval_file incoming/noeval.eval.jsonl does not exist" in run["detail"]["message"]


# ---------------------------------------------------------------------------------------------------------------------
# Alarms -> topic -> Notify -> Slack


@pytest.fixture
def slack_stack(stack_pool: StackPool) -> Iterator[tuple[dict[str, str], LocalSlack]]:
    stack_pool.close()  # one local cloud at a time: the shared stack's goes first
    parameters.clear_caches()  # Powertools keeps fetched secrets at module level, across local clouds
    with local_cloud(time_scale=0.01), local_slack_webhook(echo=False) as slack:
        secret_arn = boto3.client("secretsmanager").create_secret(Name="tuneplane/slack", SecretString=slack.url)[
            "ARN"
        ]
        deployment = deploy(
            {"BaseModelS3Uri": "s3://tuneplane-test-models/tiny/", "SlackWebhookSecretArn": secret_arn},
            stack_name="tuneplane-test",
        )
        yield deployment.outputs, slack
    parameters.clear_caches()


def test_an_alarm_published_to_the_topic_reaches_slack(slack_stack: tuple[dict[str, str], LocalSlack]) -> None:
    outputs, slack = slack_stack
    message = {**ALARM, "AlarmName": "tuneplane-test-StartRunDeadLettersAlarm-1A2B3C4D"}
    # WHEN CloudWatch publishes the StartRun dead-letter alarm's state change to the stack's alarm topic
    boto3.client("sns").publish(TopicArn=outputs["AlarmTopicArn"], Message=json.dumps(message), Subject="ALARM")
    # THEN the Notify function posted one Slack message about it
    [posted] = slack.messages
    assert posted["blocks"][0]["text"]["text"] == f":rotating_light: ALARM · {message['AlarmName']}"
