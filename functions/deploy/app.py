"""Deploy Lambda: one step of serving a model that passed the gate (begin, poll, smoke, rollback); the state
machine's Wait/Choice loop between the steps bounds how long a deployment may take."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.adapters import bedrock_import
from tuneplane.bounds import bounded_errors
from tuneplane.config import deploy_settings
from tuneplane.logic.deploy import handle
from tuneplane.models.deploy import DeployRequest
from tuneplane.observability import logger, tracer


@bounded_errors
@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)  # both may quote the data
@event_parser(model=DeployRequest)
def handler(event: DeployRequest, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.state.get("run_id"), action=event.action, target=event.target)
    return handle(event, deploy_settings(), bedrock_import.model_import_service())
