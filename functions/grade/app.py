"""Grade Lambda: one grading pass of the evaluation's judge and custom grader over the answers the Evaluate job
wrote (tuneplane/logic/grading.py). The state machine calls it again with ``next`` until it answers ``done``."""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from tuneplane.bounds import bounded_errors
from tuneplane.config import grade_settings
from tuneplane.logic.grading import grade_run
from tuneplane.models.pipeline import GradeRequest
from tuneplane.observability import logger, tracer


@bounded_errors
@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)  # both may quote the data
@event_parser(model=GradeRequest)
def handler(event: GradeRequest, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(run_id=event.state.get("run_id"), next=event.next)
    progress = grade_run(event, grade_settings(), context.get_remaining_time_in_millis)
    logger.info("grading pass", done=progress.done, graded=progress.graded, next=progress.next)
    return progress.model_dump(mode="json")
