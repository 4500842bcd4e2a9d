"""Validate stage Lambda: parse the state input, run the validation logic, return the small summary."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.config import validate_settings
from tuneplane.logic.validate_stage import run_validate_stage
from tuneplane.models.stage import ValidateRequest
from tuneplane.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ValidateRequest)
def handler(event: ValidateRequest, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.run_id)
    summary = run_validate_stage(event, validate_settings())
    metrics.add_metric(name="ExamplesValidated", unit=MetricUnit.Count, value=summary.examples_valid)
    return summary.model_dump(mode="json")
