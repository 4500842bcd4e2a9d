"""Step Functions access for the pipeline: start an execution under a chosen name, tell whether one exists."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from tuneplane.errors import OrchestrationError, RunAlreadyStarted

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions import SFNClient


@cache
def sfn_client() -> SFNClient:
    """Created lazily so tests start moto first; call sfn_client.cache_clear() between tests."""
    return boto3.client("stepfunctions")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN an execution named ``name`` of that state machine has (or will have)."""
    prefix, sep, machine = state_machine_arn.rpartition(":stateMachine:")
    if not sep:
        raise OrchestrationError(f"not a state machine ARN: {state_machine_arn!r}")
    return f"{prefix}:execution:{machine}:{name}"


def execution_exists(arn: str) -> bool:
    try:
        sfn_client().describe_execution(executionArn=arn)
    except ClientError as exc:
        if _code(exc) == "ExecutionDoesNotExist":
            return False
        raise OrchestrationError(f"describe execution {arn}: {_code(exc) or exc}") from exc
    return True


def start_execution(state_machine_arn: str, name: str, execution_input: str) -> str:
    """Start the execution; returns its ARN. ``RunAlreadyStarted`` when one with that name exists (for a STANDARD
    machine, a running execution with the same name *and* input is returned instead, without an error)."""
    try:
        response = sfn_client().start_execution(stateMachineArn=state_machine_arn, name=name, input=execution_input)
    except ClientError as exc:
        if _code(exc) == "ExecutionAlreadyExists":
            raise RunAlreadyStarted(execution_arn(state_machine_arn, name)) from exc
        raise OrchestrationError(f"start execution {name} of {state_machine_arn}: {_code(exc) or exc}") from exc
    return str(response["executionArn"])


def describe_execution(arn: str) -> dict[str, Any] | None:
    """The execution's description (status, input, error, cause, dates), or None when there is no such execution."""
    try:
        return dict(sfn_client().describe_execution(executionArn=arn))
    except ClientError as exc:
        if _code(exc) == "ExecutionDoesNotExist":
            return None
        raise OrchestrationError(f"describe {arn}: {_code(exc) or exc}") from exc
