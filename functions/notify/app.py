"""Notify Lambda: a pipeline event from the stack's bus (source ``tuneplane``) -> one Slack message, once per event id
(a redelivered or retried event is answered from the idempotency table without posting again); an SNS notification
from the stack's alarm topic (a CloudWatch alarm's state change) -> one Slack message per record."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.config import notify_settings
from tuneplane.logic.notify import PipelineEventBridgeModel, notify_once
from tuneplane.logic.notify.alarms import is_sns_event, notify_alarms
from tuneplane.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)  # the Slack message quotes the run (masked)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if is_sns_event(event):  # the stack's alarm topic
        result = notify_alarms(event, notify_settings())
        metrics.add_metric(name="SlackAlarmMessagesSent", unit=MetricUnit.Count, value=result.messages)
        return result.model_dump(mode="json")
    return _pipeline_event(event, context)


@event_parser(model=PipelineEventBridgeModel)
def _pipeline_event(event: PipelineEventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    detail = event.detail
    logger.append_keys(event_id=event.id, run_id=detail.run_id, stage=detail.stage.value, status=detail.status.value)
    result = notify_once(event, notify_settings(), context)
    if result.duplicate:
        metrics.add_metric(name="SlackDuplicatesSkipped", unit=MetricUnit.Count, value=1)
    else:
        metrics.add_metric(name="SlackMessagesSent", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="SlackDeliveryAttempts", unit=MetricUnit.Count, value=result.attempts)
    return result.model_dump(mode="json")
