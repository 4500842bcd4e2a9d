"""The stack's CloudWatch alarms reach Slack: an SNS notification of the alarm topic -> the Notify Lambda -> one Slack
message per alarm state change (a local Slack receiver; the secret in moto)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from local.slack import LocalSlack, local_slack_webhook
from moto import mock_aws

from tuneplane.config import notify_settings
from tuneplane.logic.notify.alarms import AlarmNotification, is_sns_event, render_alarm, render_sns_message

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = SimpleNamespace(
    function_name="notify",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:notify",
    aws_request_id="req-1",
    get_remaining_time_in_millis=lambda: 90_000,
)
# The shape CloudWatch publishes to SNS on a state change (the AWS docs' alarm notification format).
ALARM = {
    "AlarmName": "tuneplane-dev-StartRunDeadLettersAlarm-1A2B3C4D",
    "AlarmDescription": "Upload events that could not start a run are waiting in the StartRun dead-letter queue",
    "AWSAccountId": "123456789012",
    "NewStateValue": "ALARM",
    "NewStateReason": "Threshold Crossed: 1 datapoint [3.0 (04/12/26 16:00:00)] was >= the threshold (1.0).",
    "StateChangeTime": "2026-12-04T16:05:12.345+0000",
    "Region": "US East (N. Virginia)",
    "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:tuneplane-dev-StartRunDeadLettersAlarm-1A2B3C4D",
    "OldStateValue": "OK",
    "Trigger": {
        "MetricName": "ApproximateNumberOfMessagesVisible",
        "Namespace": "AWS/SQS",
        "Statistic": "MAXIMUM",
        "Dimensions": [{"value": "tuneplane-dev-StartRunDeadLetterQueue-XYZ", "name": "QueueName"}],
        "Period": 300,
        "EvaluationPeriods": 1,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "Threshold": 1.0,
    },
}


def _sns_event(*messages: str, subject: str | None = None) -> dict[str, Any]:
    topic = "arn:aws:sns:us-east-1:123456789012:tuneplane-dev-AlarmTopic-ABC"
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": topic + ":sub",
                "Sns": {"Type": "Notification", "TopicArn": topic, "Subject": subject, "Message": message},
            }
            for message in messages
        ]
    }


def _text(message: dict[str, Any]) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def test_an_alarm_renders_its_state_metric_reason_what_to_do_and_console_link() -> None:
    # WHEN the StartRun dead-letter alarm's notification is rendered
    message = render_alarm(AlarmNotification.model_validate(ALARM))
    # THEN the header names the state and the alarm, and the body what it watches, why and what to do
    assert message["blocks"][0]["text"]["text"] == f":rotating_light: ALARM · {ALARM['AlarmName']}"
    text = _text(message)
    assert "OK → *ALARM*" in text
    assert "AWS/SQS/ApproximateNumberOfMessagesVisible (QueueName=tuneplane-dev-StartRunDeadLetterQueue-XYZ)" in text
    assert "Threshold Crossed" in text and "re-drive" in text
    [actions] = [block for block in message["blocks"] if block["type"] == "actions"]
    assert actions["elements"][0]["url"] == (
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1"
        f"#alarmsV2:alarm/{ALARM['AlarmName']}"
    )
    assert message["text"].startswith(":rotating_light: ALARM: tuneplane-dev-StartRunDeadLettersAlarm")


def test_a_recovery_says_ok_without_a_to_do() -> None:
    message = render_alarm(
        AlarmNotification.model_validate({**ALARM, "NewStateValue": "OK", "OldStateValue": "ALARM"})
    )
    assert message["blocks"][0]["text"]["text"].startswith(":white_check_mark: OK · ")
    assert "What to do" not in _text(message)


def test_text_from_the_alarm_is_escaped_and_cut() -> None:
    alarm = {**ALARM, "AlarmDescription": "<!channel> & co", "NewStateReason": "x" * 5000}
    text = _text(render_alarm(AlarmNotification.model_validate(alarm)))
    assert "&lt;!channel&gt; &amp; co" in text and "<!channel>" not in text
    assert "x" * 1001 not in text


def test_anything_else_on_the_topic_is_shown_as_it_is() -> None:
    message = render_sns_message("a test message <b>", "Hello")
    assert message["blocks"][0]["text"]["text"] == ":bell: Hello"
    assert "a test message &lt;b&gt;" in _text(message)


def test_only_sns_records_are_sns_events() -> None:
    assert is_sns_event(_sns_event("{}"))
    assert not is_sns_event({"detail-type": "Stage Started", "detail": {}})
    assert not is_sns_event({"Records": [{"eventSource": "aws:s3"}]})
    assert not is_sns_event({"Records": []})


@pytest.fixture
def notify(loopback: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """The Notify handler with its secret (moto) pointing at a local Slack receiver."""
    spec = importlib.util.spec_from_file_location("notify_app_alarms", ROOT / "functions" / "notify" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with mock_aws(), local_slack_webhook(echo=False) as slack:
        notify_settings.cache_clear()
        parameters.clear_caches()
        arn = boto3.client("secretsmanager").create_secret(Name="tuneplane/slack", SecretString=slack.url)["ARN"]
        monkeypatch.setenv("SLACK_WEBHOOK_SECRET_ARN", arn)
        monkeypatch.setenv("IDEMPOTENCY_TABLE", "unused-by-alarms")
        yield SimpleNamespace(handler=module.handler, slack=slack)
    notify_settings.cache_clear()
    parameters.clear_caches()


def test_the_notify_lambda_posts_each_alarm_of_an_sns_event(notify: SimpleNamespace) -> None:
    # WHEN the alarm topic delivers an ALARM and an OK notification in one event
    recovered = {**ALARM, "NewStateValue": "OK", "OldStateValue": "ALARM"}
    result = notify.handler(_sns_event(json.dumps(ALARM), json.dumps(recovered)), CONTEXT)
    # THEN Slack got one message per record, in order
    slack: LocalSlack = notify.slack
    headers = [message["blocks"][0]["text"]["text"] for message in slack.messages]
    assert headers == [
        f":rotating_light: ALARM · {ALARM['AlarmName']}",
        f":white_check_mark: OK · {ALARM['AlarmName']}",
    ]
    assert result["messages"] == 2 and result["alarms"] == [ALARM["AlarmName"]] * 2
