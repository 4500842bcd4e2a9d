"""Validate stage Lambda: parse the state input, run the validation logic, return the small summary.

Three calls: the state (validate here, or hand a dataset beyond this Lambda on to a Processing job);
``{"prepare": true, "state": ...}`` (pin that job's inputs); ``{"collect": true, "state": ...}`` once the job has
ended (its result as the stage's)."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.bounds import bounded_errors
from tuneplane.config import validate_settings
from tuneplane.logic.validation.scanner import ResourceBudget
from tuneplane.logic.validation_engine import collect, prepare_job_inputs, validate_in_lambda
from tuneplane.models.stage import (
    CollectValidationRequest,
    PrepareValidationRequest,
    ValidateRequest,
    ValidateSummary,
)
from tuneplane.observability import logger, metrics, tracer


@bounded_errors
@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)  # both may quote the data
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if isinstance(event, dict) and "prepare" in event:
        prepare = parse(event=event, model=PrepareValidationRequest)
        logger.append_keys(run_id=prepare.state.run_id)
        return prepare_job_inputs(prepare.state, validate_settings())
    if isinstance(event, dict) and "collect" in event:
        request = parse(event=event, model=CollectValidationRequest)
        logger.append_keys(run_id=request.state.run_id)
        result: Any = collect(request.state, validate_settings())
    else:
        state = parse(event=event, model=ValidateRequest)
        logger.append_keys(run_id=state.run_id)
        # The Lambda's remaining time and memory: a dataset beyond them goes to a Processing job, not a timeout.
        settings = validate_settings()
        budget = ResourceBudget.for_lambda(context, tmp_bytes=settings.lambda_tmp_bytes)
        result = validate_in_lambda(state, settings, budget)
    if isinstance(result, ValidateSummary):
        metrics.add_metric(name="ExamplesValidated", unit=MetricUnit.Count, value=result.examples_valid)
    return dict(result.model_dump(mode="json"))
