"""PII in a dataset never leaves the pipeline unmasked, end to end on the local cloud: the real stack (PiiSeverity at
its default, warning; a Slack webhook; DeployTarget=vllm), a run started by the upload itself, through validation,
the (scripted) jobs, the Deploy stage's smoke test against the endpoint and the Slack notifier.

The eval file's conversations hold an email address, a card number, a phone number and an AWS access key; the
training data holds them in contents, in a message's role and in a message key (those lines are dropped within
max_invalid_fraction); the endpoint answers by repeating the question at length (over the 2,000 characters of an
event's message). None of the secrets may be in any bus event, ledger item, Slack message, the validation report or
summary, or any log line (the process's output, the functions' CloudWatch logs, Python's log records), while the
endpoint itself did get the real question.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from local.cloud import ScriptedEndpointBackend, deploy, local_cloud
from local.cloud.bedrock import LocalModelImport, local_bedrock_imports
from local.slack import LocalSlack, local_slack_webhook
from tests.conftest import chat_line
from tests.statemachine.harness import MODEL_BUCKET, MODEL_PREFIX, TRIGGER_RULE, Cloud, ScriptedJobs, _capture

EMAIL, CARD, PHONE, AWS_KEY = "john.doe@example.com", "4111 1111 1111 1111", "415-555-0132", "AKIAIOSFODNN7EXAMPLE"
ROLE_EMAIL, KEY_CARD = "mary.major@example.org", "5555555555554444"
SECRETS = (EMAIL, CARD, PHONE, AWS_KEY, ROLE_EMAIL, KEY_CARD, "4111111111111111")
DATASET, EVAL, SIDECAR = "incoming/support.jsonl", "incoming/support-eval.jsonl", "incoming/support.tuneplane.json"
SLACK_WAIT_S = 30.0


@pytest.fixture
def cloud_with_slack(base_model_dir: Path) -> Iterator[tuple[Cloud, LocalSlack]]:
    """The harness's stack (``deployed_cloud``), with a Slack webhook secret so that it has the Notify function."""
    parameters.clear_caches()  # Powertools keeps fetched secrets at module level, across local clouds
    jobs, endpoints, bedrock = ScriptedJobs(), ScriptedEndpointBackend(), LocalModelImport()
    with (
        local_cloud(time_scale=0.01, executor=jobs, endpoint_backend=endpoints, enforce_iam=True),
        local_bedrock_imports(bedrock),
        local_slack_webhook(echo=False) as slack,
    ):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=MODEL_BUCKET)
        for file in base_model_dir.iterdir():
            s3.upload_file(str(file), MODEL_BUCKET, MODEL_PREFIX + file.name)
        secret = boto3.client("secretsmanager").create_secret(Name="tuneplane/slack", SecretString=slack.url)
        deployment = deploy(
            {
                "BaseModelS3Uri": f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}",
                "SlackWebhookSecretArn": secret["ARN"],
                "DeployTarget": "vllm",
                "MaxInvalidFraction": "0.2",  # the lines with a bad role or key are dropped, not rejecting the file
            },
            stack_name="tuneplane-test",
        )
        yield (
            Cloud(
                deployment=deployment,
                s3=s3,
                sfn=boto3.client("stepfunctions"),
                sqs=boto3.client("sqs"),
                events_queue_url=_capture(deployment.bus_name, "bus-events", {"account": [deployment.account_id]}),
                s3_events_queue_url=_capture("default", "s3-events", {"source": ["aws.s3"]}),
                jobs=jobs,
                endpoints=endpoints,
                bedrock=bedrock,
            ),
            slack,
        )
    parameters.clear_caches()


def _eval_lines() -> list[str]:
    return [
        chat_line(f"Customer {EMAIL} paid with {CARD}; reach them at {PHONE}. Reverse case{i}", f"{i}esac")
        for i in range(3)
    ]


def _train_lines(reversal_lines: list[str]) -> list[str]:
    odd_role = {"messages": [{"role": ROLE_EMAIL, "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    odd_key = {"messages": [{"role": "user", "content": "hi", KEY_CARD: 1}, {"role": "assistant", "content": "ok"}]}
    return [
        *reversal_lines,
        chat_line(f"my key is {AWS_KEY}, reverse it", "ti esrever"),
        chat_line("reverse my number", f"call {PHONE}"),
        json.dumps(odd_role),
        json.dumps(odd_key),
    ]


def _echo_at_length(model_dir: Path, request: dict[str, Any]) -> str:
    """The model repeats the question, then goes on (its answer is longer than an event's message may be)."""
    return f"You said: {request['messages'][-1]['content']} " + "and so on " * 300


def _log_text(cloud: Cloud) -> str:
    """Every log event of every log group of the local cloud (the functions' START/END/REPORT and error lines)."""
    logs = boto3.client("logs")
    lines = []
    for group in logs.describe_log_groups()["logGroups"]:
        events = logs.filter_log_events(logGroupName=group["logGroupName"])["events"]
        lines += [event["message"] for event in events]
    return "\n".join(lines)


def _wait_for_slack(slack: LocalSlack, count: int) -> None:
    deadline = time.monotonic() + SLACK_WAIT_S
    while len(slack.messages) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_pii_in_the_data_reaches_no_event_ledger_slack_message_or_log(
    cloud_with_slack: tuple[Cloud, LocalSlack],
    reversal_lines: list[str],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cloud, slack = cloud_with_slack
    caplog.set_level(logging.INFO)  # the functions' log level (the template's POWERTOOLS_LOG_LEVEL)
    # GIVEN an eval file and a sidecar naming it, uploaded without starting runs of their own
    events_client = boto3.client("events")
    trigger = cloud.deployment.resources[TRIGGER_RULE]
    events_client.disable_rule(Name=trigger)
    cloud.upload(EVAL, _eval_lines())
    sidecar = {"eval_file": EVAL}
    cloud.put(SIDECAR, json.dumps(sidecar).encode())
    events_client.enable_rule(Name=trigger)
    # AND an endpoint whose model repeats the question at length
    cloud.endpoints.reply = _echo_at_length

    # WHEN the training data, with PII in contents, a role and a key, is uploaded
    cloud.upload(DATASET, _train_lines(reversal_lines))
    [started] = cloud.executions()
    execution = cloud.wait(str(started["executionArn"]))

    # THEN the run succeeded through deploy (an answer over 2,000 characters no longer fails FinishDeploy)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    run_id = str(execution["name"])
    states = cloud.states_entered(str(execution["executionArn"]))
    assert states[-4:] == ["DeploySmokeTest", "FinishDeploy", "CompleteRun", "Succeeded"]
    # AND the endpoint was asked the real question (the data is used; only what is reported is masked)
    [server] = cloud.endpoints.servers
    assert EMAIL in server.requests[-1]["messages"][-1]["content"]
    # AND every sink is free of the secrets
    bus = cloud.bus_events()
    _wait_for_slack(slack, len(bus))
    assert len(slack.messages) == len(bus) >= 10
    ledger = cloud.ledger(run_id)
    validation = f"runs/{run_id}/validation/"
    report = cloud.s3.get_object(Bucket=cloud.deployment.bucket_name, Key=validation + "report.json")["Body"].read()
    summary = cloud.s3.get_object(Bucket=cloud.deployment.bucket_name, Key=validation + "summary.txt")["Body"].read()
    output = capfd.readouterr()
    sinks = {
        "bus events": json.dumps(bus, ensure_ascii=False),
        "ledger": json.dumps(ledger, ensure_ascii=False, default=str),
        "slack": json.dumps(slack.messages, ensure_ascii=False),
        "validation report": report.decode(),
        "validation summary": summary.decode(),
        "stdout": output.out,
        "stderr": output.err,
        "log groups": _log_text(cloud),
        "log records": "\n".join(
            record.getMessage() + " " + json.dumps(record.__dict__, default=str) for record in caplog.records
        ),
    }
    leaks = {name: [secret for secret in SECRETS if secret in text] for name, text in sinks.items()}
    assert not {name: found for name, found in leaks.items() if found}, leaks
    # AND what they say is still useful: the problems name the dropped lines' masked role and key, the PII warnings
    # count, and the deploy event quotes the masked, bounded smoke test
    assert "'m***@e***.org'" in sinks["validation summary"] and "**** 4444" in sinks["validation report"]
    deploy = next(
        e["detail"] for e in bus if e["detail-type"] == "Stage Succeeded" and e["detail"]["stage"] == "deploy"
    )
    metrics = deploy["metrics"]
    assert "j***@e***.com" in metrics["smoke_test_prompt"] and "**** 1111" in metrics["smoke_test_prompt"]
    assert metrics["smoke_test_answer"].startswith("You said: Customer j***@e***.com paid with **** 1111")
    assert metrics["smoke_test_answer"].endswith("more characters]") and len(deploy["message"]) <= 2000
    assert ledger["deploy"]["metrics"]["smoke_test_answer"] == metrics["smoke_test_answer"]
