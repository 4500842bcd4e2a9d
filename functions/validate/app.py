"""Validate stage Lambda: parse the state input, run the validation logic, return the small summary."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.bounds import bounded_errors
from tuneplane.config import validate_settings
from tuneplane.logic.validate_stage import run_validate_stage
from tuneplane.logic.validation.scanner import ResourceBudget
from tuneplane.models.stage import ValidateRequest
from tuneplane.observability import logger, metrics, tracer


@bounded_errors
@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)  # both may quote the data
@metrics.log_metrics
@event_parser(model=ValidateRequest)
def handler(event: ValidateRequest, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.run_id)
    # The Lambda's remaining time and memory: validation stops with a clear rejection before either runs out.
    summary = run_validate_stage(event, validate_settings(), ResourceBudget.for_lambda(context))
    metrics.add_metric(name="ExamplesValidated", unit=MetricUnit.Count, value=summary.examples_valid)
    return summary.model_dump(mode="json")
