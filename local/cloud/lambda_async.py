"""Lambda's asynchronous invocation (``InvocationType=Event``) in the local cloud: retries and destinations.

EventBridge invokes a Lambda target asynchronously, so what happens after a function error is Lambda's business,
configured by the function's ``AWS::Lambda::EventInvokeConfig`` (SAM's ``EventInvokeConfig``). What AWS does, as the
AWS docs say it (Lambda developer guide, "How Lambda handles errors and retries with asynchronous invocation",
"Configuring error handling settings" and "Capturing records of Lambda asynchronous invocations"):

- a function error (raised by the code or the runtime) is retried up to ``MaximumRetryAttempts`` times (0 to 2,
  default 2), "with a one-minute wait between the first two attempts, and two minutes between the second and third";
- an event older than ``MaximumEventAgeInSeconds`` (60 to 21600, the default) is not tried again;
- when an event fails all processing attempts or exceeds the maximum age, an invocation record goes to the
  ``DestinationConfig.OnFailure`` destination (``requestContext.condition``: ``RetriesExhausted`` or
  ``EventAgeExceeded``), and one to ``OnSuccess`` after a success (``Success``); without a destination the event is
  discarded. The record is JSON: ``version`` "1.0", ``timestamp``, ``requestContext`` {``requestId``,
  ``functionArn`` (qualified, ``...:$LATEST``), ``condition``, ``approximateInvokeCount``}, ``requestPayload`` (the
  event), ``responseContext`` {``statusCode`` 200, ``executedVersion``, ``functionError``}, ``responsePayload`` (the
  function's result or error object). For an SQS queue it is the message body, sent with the function's execution
  role (which needs ``sqs:SendMessage``: SAM adds that policy for an SQS destination). A record that cannot be
  delivered is dropped (only a ``DestinationDeliveryFailures`` metric says so).

Here (``invoke_async``), as far as the pipeline can tell:

- the configuration is the one moto's Lambda keeps (``PutFunctionEventInvokeConfig``): ``deploy`` puts each
  ``AWS::Lambda::EventInvokeConfig`` of the stack, which moto's CloudFormation skips
  (``apply_event_invoke_configs``); a function without one gets the defaults (2 retries, 6 hours, no destination);
- retries wait 60 s, then 120 s of the local cloud's clock (``clock.sleep``: ``local_cloud(time_scale=0.01)`` makes
  that 0.6 s and 1.2 s). The event's age is counted in AWS seconds: those waits plus the attempts' own run time;
- the record goes to an SQS destination through ``SendMessage`` (boto3, so it lands in moto's queue and, with IAM
  enforcement on, is checked against the function's role); a failed delivery is logged and the record dropped.

The delivery is synchronous, on purpose: every attempt, wait and record is done before ``invoke_async`` returns,
so an EventBridge rule's delivery (and the ``PutEvents``/``PutObject`` that triggered it) returns only afterwards,
and a test can assert on the destination queue right after the call. On AWS the caller returns at once.

Not emulated: destinations other than SQS (SNS, Lambda, EventBridge, S3: logged and dropped), a function's own
``DeadLetterConfig``, throttling and system errors (which AWS retries for up to 6 hours), qualifiers other than
``$LATEST``, and the same request ID across attempts (each attempt gets its own in ``lambda_runtime``; the record's
``requestId`` is that of the asynchronous request). An ``EventAgeExceeded`` record carries the last attempt's
response (the AWS docs show only a ``RetriesExhausted`` record). moto appends a configuration on every put where AWS
overwrites it: the last one put is used.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from moto.awslambda.models import LambdaFunction
from moto.cloudformation.models import Stack
from moto.utilities.arns import parse_arn

from local.cloud import clock
from local.cloud.iam.enforce import acting_as
from local.cloud.moto_fixes import resolved_properties

LOG = logging.getLogger(__name__)

DEFAULT_MAXIMUM_RETRY_ATTEMPTS = 2
DEFAULT_MAXIMUM_EVENT_AGE_S = 21600
# AWS seconds waited before the first and the second retry (the AWS docs: one minute, then two minutes).
RETRY_WAITS_S = (60.0, 120.0)


@dataclass(frozen=True)
class AsyncConfig:
    """A function's asynchronous invocation settings (``FunctionEventInvokeConfig``), AWS's defaults where unset."""

    maximum_retry_attempts: int = DEFAULT_MAXIMUM_RETRY_ATTEMPTS
    maximum_event_age_s: int = DEFAULT_MAXIMUM_EVENT_AGE_S
    on_success: str | None = None  # destination ARN
    on_failure: str | None = None

    @classmethod
    def from_api(cls, config: Mapping[str, Any]) -> AsyncConfig:
        """From the ``PutFunctionEventInvokeConfig`` request (or CloudFormation) fields."""
        destinations = config.get("DestinationConfig") or {}
        return cls(
            maximum_retry_attempts=int(config.get("MaximumRetryAttempts", DEFAULT_MAXIMUM_RETRY_ATTEMPTS)),
            maximum_event_age_s=int(config.get("MaximumEventAgeInSeconds", DEFAULT_MAXIMUM_EVENT_AGE_S)),
            on_success=(destinations.get("OnSuccess") or {}).get("Destination") or None,
            on_failure=(destinations.get("OnFailure") or {}).get("Destination") or None,
        )

    @classmethod
    def of(cls, function: LambdaFunction) -> AsyncConfig:
        """The configuration moto keeps for the function: the last one put (AWS overwrites, moto appends)."""
        configs = getattr(function, "event_invoke_config", None) or []
        return cls.from_api(configs[-1].config) if configs else cls()


@dataclass(frozen=True)
class AsyncOutcome:
    """What became of one asynchronous invocation."""

    request_id: str
    attempts: int
    condition: str  # Success, RetriesExhausted or EventAgeExceeded
    function_error: str | None  # of the last attempt: Unhandled (or Handled), None after a success
    response_payload: Any  # of the last attempt
    record: dict[str, Any]  # the invocation record (sent to ``destination`` when there is one)
    destination: str | None  # where the record was sent; None: no destination for this outcome, or not delivered


def _qualified_arn(function: LambdaFunction) -> str:
    arn = str(function.function_arn)
    return arn if arn.count(":") >= 7 else f"{arn}:{function.version}"


def _parse(payload: str | bytes) -> Any:
    try:
        return json.loads(payload)
    except (TypeError, ValueError):
        return payload.decode() if isinstance(payload, bytes) else payload


def _error_summary(payload: Any) -> str:
    """``errorType: errorMessage`` of Lambda's error object (the whole payload when it is not one)."""
    if isinstance(payload, dict) and "errorType" in payload:
        return f"{payload['errorType']}: {payload.get('errorMessage', '')}"
    return str(payload)


def invocation_record(
    function: LambdaFunction,
    request_id: str,
    condition: str,
    attempts: int,
    request_payload: Any,
    response_payload: Any,
    function_error: str | None,
) -> dict[str, Any]:
    """The invocation record Lambda sends to a destination, with the fields of the AWS docs' example."""
    response_context: dict[str, Any] = {"statusCode": 200, "executedVersion": str(function.version)}
    if function_error:
        response_context["functionError"] = function_error
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": request_id,
            "functionArn": _qualified_arn(function),
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": request_payload,
        "responseContext": response_context,
        "responsePayload": response_payload,
    }


def _send_record(function: LambdaFunction, destination: str, record: dict[str, Any]) -> bool:
    """Deliver the record as Lambda does, with the function's execution role; False when it could not be sent."""
    arn = parse_arn(destination)
    if arn.service != "sqs":
        LOG.error(
            "%s: %s destination %s is not emulated; record dropped", function.function_name, arn.service, destination
        )
        return False
    sqs = boto3.client("sqs", region_name=arn.region)
    try:
        with acting_as(None):  # finding the URL is the emulator's plumbing: Lambda sends to the ARN
            url = sqs.get_queue_url(QueueName=arn.resource_id, QueueOwnerAWSAccountId=arn.account)["QueueUrl"]
        with acting_as(function.role, function.function_name):
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record))
    except (ClientError, BotoCoreError) as exc:  # AWS: DestinationDeliveryFailures, and the record is gone
        LOG.error("%s: invocation record not delivered to %s: %s", function.function_name, destination, exc)
        return False
    return True


def invoke_async(function: LambdaFunction, payload: Any) -> AsyncOutcome:
    """Invoke ``function`` with ``payload`` as Lambda runs an asynchronous invocation: the attempts its
    configuration allows, then the invocation record to the destination for the outcome. Synchronous (see above)."""
    config = AsyncConfig.of(function)
    request_id = str(uuid.uuid4())
    age_s = 0.0  # AWS seconds since the event was queued
    attempts = 0
    while True:
        attempts += 1
        response_headers: dict[str, str] = {}
        started = time.monotonic()
        result = function.invoke(json.dumps(payload), {"x-amz-invocation-type": "Event"}, response_headers)
        age_s += time.monotonic() - started
        function_error = response_headers.get("x-amz-function-error")
        response_payload = _parse(result)
        if not function_error:
            condition = "Success"
            break
        LOG.warning(
            "%s: asynchronous invocation %s, attempt %d failed: %s",
            function.function_name,
            request_id,
            attempts,
            _error_summary(response_payload),
        )
        if attempts > config.maximum_retry_attempts:
            condition = "RetriesExhausted"
            break
        wait_s = RETRY_WAITS_S[min(attempts, len(RETRY_WAITS_S)) - 1]
        if age_s + wait_s > config.maximum_event_age_s:
            condition = "EventAgeExceeded"
            break
        clock.sleep(wait_s)
        age_s += wait_s
    record = invocation_record(function, request_id, condition, attempts, payload, response_payload, function_error)
    destination = config.on_success if condition == "Success" else config.on_failure
    if destination is None:
        if condition != "Success":
            LOG.error(
                "%s: event %s discarded (%s, no on-failure destination)", function.function_name, request_id, condition
            )
    elif not _send_record(function, destination, record):
        destination = None
    return AsyncOutcome(
        request_id=request_id,
        attempts=attempts,
        condition=condition,
        function_error=function_error,
        response_payload=response_payload,
        record=record,
        destination=destination,
    )


def apply_event_invoke_configs(stack: Stack, template: Mapping[str, Any], region: str) -> dict[str, str]:
    """Put every ``AWS::Lambda::EventInvokeConfig`` of the created stack (skipped by moto's CloudFormation) through
    moto's ``PutFunctionEventInvokeConfig``; returns logical id -> function name of those applied (a resource whose
    ``Condition`` is false is left out, as CloudFormation does)."""
    client = boto3.client("lambda", region_name=region)
    conditions = stack.resource_map.lazy_condition_map
    applied: dict[str, str] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Lambda::EventInvokeConfig":
            continue
        if "Condition" in resource and not conditions[resource["Condition"]]:
            continue
        properties = resolved_properties(stack, template, logical_id)
        request: dict[str, Any] = {"FunctionName": properties["FunctionName"]}
        if "Qualifier" in properties:
            request["Qualifier"] = properties["Qualifier"]
        for name in ("MaximumRetryAttempts", "MaximumEventAgeInSeconds"):
            if name in properties:
                request[name] = int(properties[name])
        if "DestinationConfig" in properties:
            request["DestinationConfig"] = properties["DestinationConfig"]
        client.put_function_event_invoke_config(**request)
        applied[logical_id] = str(properties["FunctionName"])
    return applied
