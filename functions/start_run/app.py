"""StartRun Lambda: an S3 ``Object Created`` event (via EventBridge) for incoming/<name>.jsonl[.gz] starts one run;
any other upload under incoming/ is ignored (sidecars) or answered with a Run Rejected event (a name that starts
nothing)."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.config import start_run_settings
from tuneplane.logic.start_run import start_run
from tuneplane.models.run import ObjectVersion
from tuneplane.observability import logger, metrics, tracer

_METRIC = {
    "started": "RunsStarted",
    "duplicate": "DuplicateDeliveries",
    "ignored": "IgnoredObjects",
    "rejected": "UploadsRejected",
}


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)  # names the uploaded key, which may quote the data
@metrics.log_metrics
@event_parser(model=S3EventNotificationEventBridgeModel)
def handler(event: S3EventNotificationEventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    detail = event.detail
    logger.append_keys(event_id=event.id, key=detail.object.key, version_id=detail.object.version_id)
    uploaded = ObjectVersion(
        bucket=detail.bucket.name,
        key=detail.object.key,
        version_id=detail.object.version_id,
        etag=detail.object.etag,
        sequencer=detail.object.sequencer,
    )
    # The event's time is the upload's: a sidecar is waited for only shortly after it (not on a late redelivery).
    time_left_s = context.get_remaining_time_in_millis() / 1000
    result = start_run(uploaded, start_run_settings(), uploaded_at=event.time, time_left_s=time_left_s)
    metrics.add_metric(name=_METRIC[result.status], unit=MetricUnit.Count, value=1)
    return result.model_dump(mode="json")
