"""The stack's CloudWatch alarms in Slack: an SNS notification from the alarm topic -> one Slack message per record.

Every alarm in ``template.yaml`` publishes its state changes to the stack's ``AlarmTopic``, to which the Notify
function is subscribed (and, with ``AlarmEmail``, an email address). SNS invokes the function asynchronously with
``{"Records": [{"EventSource": "aws:sns", "Sns": {"Message": ..., "Subject": ...}}]}``; a CloudWatch alarm's
``Message`` is a JSON document (the AWS docs' alarm notification format: ``AlarmName``, ``AlarmDescription``,
``NewStateValue``, ``OldStateValue``, ``NewStateReason``, ``StateChangeTime``, ``AlarmArn``, ``Trigger`` with the
metric). Anything else published to the topic is shown as its subject and text, so nothing sent there is lost.

Rendering is pure. A message Slack does not accept after the retries allowed raises ``SlackDeliveryFailed`` (the
invocation fails, Lambda retries it, then it lands in the function's dead-letter queue, which an alarm watches: the
email subscription is the way to hear about that one when Slack itself is what fails). Alarm notifications are not
deduplicated: SNS rarely delivers one twice, and a second copy of a state change is harmless.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneplane.adapters import secrets, slack
from tuneplane.config import NotifySettings
from tuneplane.logic.notify.notify import slack_retry_policy
from tuneplane.logic.notify.render import HEADER_MAX, TEXT_MAX, escape
from tuneplane.observability import logger

_STATE_EMOJI = {"ALARM": ":rotating_light:", "OK": ":white_check_mark:", "INSUFFICIENT_DATA": ":grey_question:"}
_REASON_MAX = 1000
_TEXT_SHOWN = 2500


def is_sns_event(event: Any) -> bool:
    """Whether a Lambda event is an SNS notification (``Records`` of ``EventSource`` ``aws:sns``)."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not records:
        return False
    return all(isinstance(r, dict) and r.get("EventSource") == "aws:sns" for r in records)


class AlarmTrigger(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    metric_name: str | None = Field(default=None, alias="MetricName")
    namespace: str | None = Field(default=None, alias="Namespace")
    dimensions: list[dict[str, Any]] = Field(default_factory=list, alias="Dimensions")
    statistic: str | None = Field(default=None, alias="Statistic")
    period: int | None = Field(default=None, alias="Period")
    comparison: str | None = Field(default=None, alias="ComparisonOperator")
    threshold: float | None = Field(default=None, alias="Threshold")


class AlarmNotification(BaseModel):
    """The JSON ``Message`` CloudWatch publishes to SNS when an alarm changes state."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(alias="AlarmName", min_length=1)
    description: str | None = Field(default=None, alias="AlarmDescription")
    new_state: str = Field(alias="NewStateValue")
    old_state: str | None = Field(default=None, alias="OldStateValue")
    reason: str | None = Field(default=None, alias="NewStateReason")
    changed_at: str | None = Field(default=None, alias="StateChangeTime")
    arn: str | None = Field(default=None, alias="AlarmArn")
    trigger: AlarmTrigger | None = Field(default=None, alias="Trigger")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, TEXT_MAX)}}


def alarm_console_url(alarm: AlarmNotification) -> str | None:
    """The alarm's page in the CloudWatch console (its region from the alarm ARN)."""
    parts = (alarm.arn or "").split(":")
    if len(parts) < 7 or parts[0] != "arn" or parts[2] != "cloudwatch":
        return None
    partition, region = parts[1], parts[3]
    host = {"aws": f"{region}.console.aws.amazon.com", "aws-cn": "console.amazonaws.cn"}.get(partition)
    if host is None:
        return None
    from urllib.parse import quote

    return f"https://{host}/cloudwatch/home?region={region}#alarmsV2:alarm/{quote(alarm.name, safe='')}"


def _dimension(trigger: AlarmTrigger, name: str) -> str | None:
    for dimension in trigger.dimensions:
        if str(dimension.get("name") or dimension.get("Name")) == name:
            value = dimension.get("value", dimension.get("Value"))
            return str(value) if value is not None else None
    return None


def _what_to_do(alarm: AlarmNotification) -> str | None:
    """What the platform team does about each of the stack's alarms (by the metric it watches)."""
    if alarm.new_state != "ALARM" or alarm.trigger is None:
        return None
    trigger = alarm.trigger
    if trigger.namespace == "AWS/SQS":
        queue = _dimension(trigger, "QueueName") or "the queue"
        return (
            f"*What to do:* read the messages in `{escape(queue)}` (each says which event could not be handled and "
            "why), fix the cause, then re-drive them (SQS console: *Start DLQ redrive*) or upload the dataset again. "
            "The alarm clears once the queue is empty."
        )
    if trigger.namespace == "AWS/States":
        return (
            "*What to do:* each failed or rejected run has its own Slack message with the cause; "
            "a run that failed (not rejected) is for the platform team."
        )
    return None


def render_alarm(alarm: AlarmNotification) -> dict[str, Any]:
    """The Slack message for one alarm state change."""
    emoji = _STATE_EMOJI.get(alarm.new_state, ":bell:")
    header = _cut(f"{emoji} {alarm.new_state} · {alarm.name}", HEADER_MAX)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}]
    if alarm.description:
        blocks.append(_section(escape(alarm.description)))
    fields = [f"*State*\n{escape(alarm.old_state or '?')} → *{escape(alarm.new_state)}*"]
    if alarm.trigger and alarm.trigger.metric_name:
        trigger = alarm.trigger
        dims = ", ".join(
            f"{d.get('name', d.get('Name'))}={d.get('value', d.get('Value'))}" for d in trigger.dimensions
        )
        metric = f"{trigger.namespace}/{trigger.metric_name}" + (f" ({dims})" if dims else "")
        fields.append(f"*Metric*\n`{escape(_cut(metric, 300))}`")
    if alarm.changed_at:
        fields.append(f"*Since*\n{escape(alarm.changed_at)}")
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": _cut(f, 1000)} for f in fields]})
    if alarm.reason:
        blocks.append(_section(f"*Reason:* {escape(_cut(alarm.reason, _REASON_MAX))}"))
    if todo := _what_to_do(alarm):
        blocks.append(_section(todo))
    if url := alarm_console_url(alarm):
        button = {
            "type": "button",
            "text": {"type": "plain_text", "text": "Open alarm"},
            "url": url,
            "action_id": "open_alarm",
        }
        blocks.append({"type": "actions", "elements": [button]})
    text = f"{emoji} {alarm.new_state}: {alarm.name}" + (f": {alarm.description}" if alarm.description else "")
    return {"text": escape(_cut(text, 500)), "blocks": blocks}


def render_sns_message(message: str, subject: str | None) -> dict[str, Any]:
    """One SNS message as Slack text: an alarm notification rendered as such, anything else shown as it is."""
    try:
        return render_alarm(AlarmNotification.model_validate_json(message))
    except ValidationError:
        pass
    title = _cut(f":bell: {subject or 'Notification from the alarm topic'}", HEADER_MAX)
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}},
        _section(escape(_cut(message, _TEXT_SHOWN)) or "(empty message)"),
    ]
    return {"text": escape(_cut(title, 500)), "blocks": blocks}


class AlarmNotifyResult(BaseModel):
    """What the Notify function did with one SNS notification."""

    messages: int
    attempts: int
    alarms: list[str] = Field(default_factory=list)


def notify_alarms(event: dict[str, Any], settings: NotifySettings) -> AlarmNotifyResult:
    """Post every record of an SNS event to the Slack webhook of ``settings``."""
    webhook_url = secrets.slack_webhook_url(settings.slack_webhook_secret_arn, settings.secret_max_age_s)
    policy = slack_retry_policy(settings)
    attempts, names = 0, []
    for record in event["Records"]:
        sns = record.get("Sns") or {}
        raw = str(sns.get("Message") or "")
        message = render_sns_message(raw, sns.get("Subject"))
        try:
            names.append(json.loads(raw).get("AlarmName") or "")
        except (ValueError, AttributeError):
            names.append("")
        attempts += slack.post_message(webhook_url, message, policy).attempts
    logger.info("alarm notifications posted", alarms=names, messages=len(names))
    return AlarmNotifyResult(messages=len(names), attempts=attempts, alarms=[n for n in names if n])
