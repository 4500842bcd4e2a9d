"""EventBridge rules with Lambda and Step Functions targets, which moto 5.2.5 does not deliver to.

``moto.events.models.Rule.send_to_targets`` raises ``NotImplementedError`` for a Lambda function or a state
machine target (the S3 notification path swallows it, so an upload silently starts nothing). Within
``eventbridge_targets()`` a matching event reaches those targets as on AWS, as far as the pipeline can tell:

- the event is what the target gets on AWS: the whole event, or ``Input`` / ``InputPath`` / ``InputTransformer``
  applied, with ``time`` as an ISO-8601 string (moto keeps it as a Unix timestamp);
- a Lambda function is invoked (asynchronously on AWS: an error in the function is the function's business, it
  never fails the sender) only if its resource policy lets ``events.amazonaws.com`` invoke it for this rule, as
  the template's ``AWS::Lambda::Permission`` must; a function that is missing or does not allow it is a delivery
  failure: the event goes to the target's ``DeadLetterConfig`` queue with EventBridge's message attributes. The
  invocation is Lambda's asynchronous one (``lambda_async``): a function error is retried as the function's
  ``EventInvokeConfig`` says, then recorded in its on-failure destination;
- a state machine target starts an execution with the event as its input (the rule's ``RoleArn`` is not checked);
- rules that are not ``ENABLED`` deliver nothing (moto delivers for disabled rules too), and a rule with only a
  ``ScheduleExpression`` matches no event (moto's empty pattern matched every one); schedules do not fire here;
- every other target type is left to moto.

Not emulated: ``RetryPolicy`` (a failed delivery is not retried: it goes to the DLQ or is logged), and asynchrony
itself: the target runs (a Lambda function with all its retries) before the sending call (``PutObject``,
``PutEvents``) returns, which makes tests deterministic.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import boto3
from jsonpath_ng.ext.parser import parse as jsonpath
from moto.awslambda.exceptions import LambdaClientError
from moto.awslambda.models import lambda_backends
from moto.events.models import Rule
from moto.events.utils import EventTemplateParser
from moto.sqs.models import sqs_backends
from moto.utilities.arns import parse_arn

from local.cloud.lambda_async import invoke_async

LOG = logging.getLogger(__name__)
EVENTS_PRINCIPAL = "events.amazonaws.com"

_original_send_to_targets = Rule.send_to_targets


class DeliveryError(Exception):
    """EventBridge could not hand the event to the target (what a rule's DLQ receives)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _iso_time(value: Any) -> Any:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def target_input(target: dict[str, Any], event: dict[str, Any]) -> Any:
    """What the target receives for ``event``: the event itself, or the target's input settings applied."""
    event = {**copy.deepcopy(event), "time": _iso_time(event.get("time"))}
    if "Input" in target:
        return json.loads(target["Input"])
    if "InputPath" in target:
        matches = [match.value for match in jsonpath(target["InputPath"]).find(event)]
        return matches[0] if matches else None
    if "InputTransformer" in target:
        transformer = target["InputTransformer"]
        return EventTemplateParser.parse(
            input_template=transformer.get("InputTemplate"),
            input_paths_map=transformer.get("InputPathsMap", {}),
            event=event,  # type: ignore[arg-type]
        )
    return event


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allows_rule(statement: dict[str, Any], rule_arn: str) -> bool:
    """Does a resource-policy statement let EventBridge invoke the function for this rule?"""
    principal = statement.get("Principal")
    services = _as_list(principal.get("Service", [])) if isinstance(principal, dict) else _as_list(principal)
    actions = _as_list(statement.get("Action", []))
    if statement.get("Effect") != "Allow" or EVENTS_PRINCIPAL not in services:
        return False
    if not any(fnmatch.fnmatchcase("lambda:InvokeFunction", action) for action in actions):
        return False
    for operator, conditions in statement.get("Condition", {}).items():
        for key, expected in conditions.items():
            if key.lower() != "aws:sourcearn":
                continue
            patterns = _as_list(expected)
            if operator.startswith("ArnLike") or operator.startswith("StringLike"):
                matched = any(fnmatch.fnmatchcase(rule_arn, pattern) for pattern in patterns)
            else:
                matched = rule_arn in patterns
            if not matched:
                return False
    return True


def _invoke_function(rule: Rule, target: dict[str, Any], payload: Any) -> None:
    arn = parse_arn(target["Arn"])
    backend = lambda_backends[arn.account][arn.region]
    try:
        function = backend.get_function(target["Arn"])
    except LambdaClientError as exc:  # what Lambda answers (a missing function: ResourceNotFoundException)
        raise DeliveryError(exc.error_type, exc.message) from exc
    if not any(_allows_rule(statement, rule.arn) for statement in function.policy.statements):
        raise DeliveryError(
            "AccessDeniedException",
            f"{EVENTS_PRINCIPAL} is not allowed to invoke {function.function_name} for rule {rule.arn}",
        )
    invoke_async(function, payload)  # retries and destinations are Lambda's: the sender never sees a function error


def _start_execution(target: dict[str, Any], payload: Any) -> None:
    arn = parse_arn(target["Arn"])
    client = boto3.client("stepfunctions", region_name=arn.region)
    try:
        client.start_execution(stateMachineArn=target["Arn"], name=str(uuid.uuid4()), input=json.dumps(payload))
    except client.exceptions.ClientError as exc:
        raise DeliveryError(exc.response["Error"]["Code"], str(exc)) from exc


def _dead_letter(rule: Rule, target: dict[str, Any], event: dict[str, Any], error: DeliveryError) -> None:
    """Send the undeliverable event to the target's DLQ, as EventBridge does, or log it when there is none."""
    queue_arn = target.get("DeadLetterConfig", {}).get("Arn")
    if not queue_arn:
        LOG.error("rule %s: event not delivered to %s and no DLQ: %s", rule.name, target["Arn"], error)
        return
    arn = parse_arn(queue_arn)
    attributes = {
        "RULE_ARN": rule.arn,
        "TARGET_ARN": target["Arn"],
        "ERROR_CODE": error.code,
        "ERROR_MESSAGE": str(error),
    }
    sqs_backends[arn.account][arn.region].send_message(
        queue_name=arn.resource_id,
        message_body=json.dumps(event),
        message_attributes={name: {"DataType": "String", "StringValue": v} for name, v in attributes.items()},
    )


def _send_to_targets(self: Rule, original_event: dict[str, Any], transform_input: bool = True) -> None:
    """Replacement for ``Rule.send_to_targets``: Lambda and Step Functions targets here, the rest to moto."""
    if self.state != "ENABLED" or not self.event_pattern.matches_event(original_event):  # type: ignore[arg-type]
        return
    if self.scheduled_expression and not self.event_pattern.dump():
        # A rule with only a schedule matches no event (the EventBridge user guide: a rule has an event pattern or
        # a schedule); moto's empty pattern matches every event, so each S3 write offered it the rule's target.
        return
    others = []
    for target in self.targets:
        service = parse_arn(target["Arn"]).service
        if service not in ("lambda", "states"):
            others.append(target)
            continue
        try:
            payload = target_input(target, original_event)
            if service == "lambda":
                _invoke_function(self, target, payload)
            else:
                _start_execution(target, payload)
        except DeliveryError as exc:
            _dead_letter(self, target, original_event, exc)
    if others:
        rest = copy.copy(self)
        rest.targets = others
        _original_send_to_targets(rest, original_event, transform_input)  # type: ignore[arg-type]


@contextmanager
def eventbridge_targets() -> Iterator[None]:
    """Within this block, EventBridge rules deliver to Lambda functions and state machines."""
    with mock.patch.object(Rule, "send_to_targets", _send_to_targets):
        yield
