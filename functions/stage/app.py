"""Stage Lambda: the state machine reports a stage's start, end, skip, rejection or failure; the run ledger and
the event bus hear about it, and a job stage's start gets its SageMaker request back."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.bounds import bounded_errors
from tuneplane.config import pipeline_settings
from tuneplane.logic.stages import handle
from tuneplane.models.pipeline import StageRequest
from tuneplane.observability import logger, tracer


@bounded_errors
@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)  # both may quote the data
@event_parser(model=StageRequest)
def handler(event: StageRequest, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.state.get("run_id"), stage=event.stage.value, action=event.action)
    return handle(event, pipeline_settings())
