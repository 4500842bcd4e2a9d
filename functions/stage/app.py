"""Stage Lambda: the state machine reports a stage's start, end, skip, rejection or failure; the run ledger and
the event bus hear about it, and a job stage's start gets its SageMaker request back.

It also hears Step Functions' "Execution Status Change" events of the pipeline (an EventBridge rule on the default
bus) and, hourly, sweeps the runs still "started" (logic/reconcile.py): a run whose execution was stopped, timed out
or failed without recording an outcome gets one."""

from typing import Any

from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.bounds import bounded_errors
from tuneplane.config import pipeline_settings
from tuneplane.logic.reconcile import reconcile_ended_execution, sweep_unended_runs
from tuneplane.logic.stages import handle
from tuneplane.models.pipeline import ExecutionStatusChange, StageRequest
from tuneplane.observability import logger, tracer

EXECUTION_STATUS_CHANGE = "Step Functions Execution Status Change"
SCHEDULED_SWEEP = "Scheduled Event"  # the hourly rule SweepUnendedRuns (EventBridge's detail-type for a schedule)


class ExecutionStatusChangeEvent(EventBridgeModel):
    detail: ExecutionStatusChange


@bounded_errors
@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)  # both may quote the data
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if isinstance(event, dict) and event.get("detail-type") == SCHEDULED_SWEEP:
        logger.append_keys(action="sweep")
        return sweep_unended_runs(pipeline_settings())
    if isinstance(event, dict) and event.get("detail-type") == EXECUTION_STATUS_CHANGE:
        change = parse(event=event, model=ExecutionStatusChangeEvent).detail
        logger.append_keys(execution=change.name, status=change.status, action="reconcile")
        return reconcile_ended_execution(change, pipeline_settings())
    request = parse(event=event, model=StageRequest)
    logger.append_keys(run_id=request.state.get("run_id"), stage=request.stage.value, action=request.action)
    return handle(request, pipeline_settings())
