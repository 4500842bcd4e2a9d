"""Notify: one pipeline event -> one Slack message (render it, link the chart, post it).

The Notify Lambda is invoked asynchronously by the stack's EventBridge rule for ``source: tuneplane``. Rendering is
pure; the webhook URL comes from Secrets Manager (cached by Powertools); an evaluation chart in ``runs/<run-id>/``
of the run's bucket is linked through a presigned URL (signed locally with the function's credentials: no AWS
call); a message Slack does not accept after the retries allowed raises ``SlackDeliveryFailed``, which sends the
event to the function's dead-letter queue.

``notify_once`` posts each EventBridge event at most once (Powertools idempotency, keyed on the event's ``id``, in a
DynamoDB table): EventBridge delivers at least once, and Lambda retries a failed asynchronous invocation, so the same
event can arrive more than once. A completed record answers a redelivery with the first result, marked
``duplicate``, without posting. A delivery that fails (``SlackDeliveryFailed``, an unreadable secret) leaves no
record (Powertools deletes the in-progress record when the function raises), so the retry posts. An invocation that
dies mid-post (timeout) leaves an in-progress record that expires with the invocation's remaining time.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from tuneplane.adapters import s3, secrets, slack
from tuneplane.config import NotifySettings
from tuneplane.errors import InvalidConfiguration
from tuneplane.logic.notify.render import chart_uri, render
from tuneplane.models.events import PipelineEvent, Stage, Status
from tuneplane.observability import logger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_s3 import S3Client

# The idempotency key: the EventBridge event's id, the same on every redelivery and retry of one event (and
# different for two events, even with the same detail). Records are stored as "notify#<md5 of the id>".
IDEMPOTENCY_KEY_JMESPATH = "id"
IDEMPOTENCY_KEY_PREFIX = "notify"


class PipelineEventBridgeModel(EventBridgeModel):
    """An EventBridge event whose ``detail`` is a ``PipelineEvent`` (what the Notify Lambda receives)."""

    detail: PipelineEvent


class NotifyResult(BaseModel):
    """What the Notify Lambda returns (and logs): which event went out, and how hard it was."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    stage: Stage
    status: Status
    detail_type: str
    attempts: int
    chart_linked: bool
    duplicate: bool = False  # the event id had been posted already: this is the first result, nothing was posted


@cache
def presign_client() -> S3Client:
    """An S3 client that signs with SigV4, which objects encrypted with KMS require (botocore's default presigned
    URL is SigV2). Presigning is local: no call to AWS. Created lazily; tests call presign_client.cache_clear()."""
    return boto3.client("s3", config=Config(signature_version="s3v4"))


def chart_link(event: PipelineEvent, expires_s: int) -> str | None:
    """A presigned https URL of the evaluation chart, when the event has one under ``runs/<run-id>/`` of its bucket.

    Anything else (another bucket or prefix, a malformed URI, no credentials to sign with) gives no link: the message
    then shows the s3:// URI, and still goes out.
    """
    uri = chart_uri(event)
    if uri is None:
        return None
    try:
        bucket, key = s3.parse_s3_uri(uri)
    except InvalidConfiguration:
        logger.warning("chart artifact is not an S3 URI", run_id=event.run_id, chart=uri)
        return None
    if bucket != event.bucket or not key.startswith(f"runs/{event.run_id}/"):
        logger.warning("chart artifact outside the run's folder, not linked", run_id=event.run_id, chart=uri)
        return None
    try:
        return str(
            presign_client().generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
            )
        )
    except (BotoCoreError, ClientError) as exc:
        logger.warning("cannot presign the chart", run_id=event.run_id, chart=uri, problem=type(exc).__name__)
        return None


def _implied_detail_type(event: PipelineEvent) -> str | None:
    try:
        return event.detail_type
    except ValueError:  # e.g. a run that "started": there is no such detail type
        return None


def slack_retry_policy(settings: NotifySettings) -> slack.RetryPolicy:
    """How hard a Slack post is tried (pipeline events and alarms alike), from the Notify function's settings."""
    return slack.RetryPolicy(
        max_attempts=settings.slack_max_attempts,
        max_wait_s=settings.slack_max_wait_s,
        backoff_s=settings.slack_backoff_s,
        timeout_s=settings.slack_timeout_s,
    )


def notify(event: PipelineEvent, detail_type: str, settings: NotifySettings) -> NotifyResult:
    """Render the event, link its chart, post it to the Slack webhook of ``settings``."""
    if detail_type != _implied_detail_type(event):
        logger.warning("detail-type does not match the event's stage and status", detail_type=detail_type)
    chart_url = chart_link(event, settings.chart_url_expiry_s)
    message = render(event, detail_type, console_region=settings.console_region, chart_url=chart_url)
    webhook_url = secrets.slack_webhook_url(settings.slack_webhook_secret_arn, settings.secret_max_age_s)
    policy = slack_retry_policy(settings)
    delivery = slack.post_message(webhook_url, message, policy)
    return NotifyResult(
        run_id=event.run_id,
        stage=event.stage,
        status=event.status,
        detail_type=detail_type,
        attempts=delivery.attempts,
        chart_linked=chart_url is not None,
    )


@cache
def idempotency_store(table_name: str) -> DynamoDBPersistenceLayer:
    """Powertools' DynamoDB persistence layer on ``table_name``. Created lazily (it creates a DynamoDB client), so
    tests start moto first; tests call idempotency_store.cache_clear()."""
    return DynamoDBPersistenceLayer(table_name=table_name)


def _mark_duplicate(response: NotifyResult, idempotent_data: DataRecord) -> NotifyResult:
    """Powertools' response hook: the stored result of an event id already posted, answered without posting."""
    logger.info("event already posted to Slack, not posted again", idempotency_key=idempotent_data.idempotency_key)
    return response.model_copy(update={"duplicate": True})


def _notify_event(*, event: PipelineEventBridgeModel, settings: NotifySettings) -> NotifyResult:
    return notify(event.detail, event.detail_type, settings)


def notify_once(
    event: PipelineEventBridgeModel, settings: NotifySettings, lambda_context: LambdaContext | None = None
) -> NotifyResult:
    """``notify`` for one EventBridge event, at most once per event ``id`` within ``settings.idempotency_expiry_s``.

    ``lambda_context`` bounds an in-progress record by the invocation's remaining time (a timed-out invocation does
    not block the retry). Raises what ``notify`` raises (no record is kept then), and Powertools'
    ``IdempotencyAlreadyInProgressError`` while another invocation is posting the same event (Lambda retries later).
    """
    config = IdempotencyConfig(
        event_key_jmespath=IDEMPOTENCY_KEY_JMESPATH,
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.idempotency_expiry_s,
        lambda_context=lambda_context,
        response_hook=_mark_duplicate,
    )
    once = idempotent_function(
        _notify_event,
        data_keyword_argument="event",
        persistence_store=idempotency_store(settings.idempotency_table),
        config=config,
        output_serializer=PydanticSerializer(NotifyResult),
        key_prefix=IDEMPOTENCY_KEY_PREFIX,
    )
    result: NotifyResult = once(event=event, settings=settings)
    return result
