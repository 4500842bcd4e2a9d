"""Where moto's ASL interpreter is more lenient than Step Functions, made to fail as Step Functions fails.

- **A Choice rule on a path that is not there.** Step Functions fails the execution with ``States.Runtime`` when a
  comparison (``StringEquals``, ``NumericGreaterThan``, ...) reads a ``Variable`` path that does not exist in the
  state's input; only the ``Is*`` operators (``IsPresent`` above all, the documented guard, usually inside an ``And``
  that stops at the first false rule) take a missing path. ``States.Runtime`` is not matched by ``States.ALL`` in a
  ``Catch``, so the execution fails at once (the Step Functions developer guide, "Error names"). moto instead compares
  a placeholder and takes the rule as false, so a Pass state that drops a field goes unnoticed and the Choice quietly
  takes its ``Default``.
- **``States.ALL`` catches too much.** The Step Functions developer guide ("Error names"): "The States.ALL error type
  can't catch the States.DataLimitExceeded terminal error type and runtime error types" (``States.Runtime``). moto
  lets ``States.ALL`` match them, so a run whose state output passed the 256 KiB limit went down its Catch instead of
  failing. Here only a Retry or Catch that names them takes them.
- **The error names of ``aws-sdk:`` integrations.** Step Functions names an SDK integration's error
  ``<ServiceName>.<ExceptionName>`` in the service's Pascal case (``SageMaker.SageMakerException`` for an error the
  SDK has no class for, as the Step Functions developer guide's "AWS SDK service integrations" page writes them);
  moto knows the spelling of DynamoDB and Step Functions only and writes ``sagemaker.sagemakerException``, so a Retry
  on the AWS name never fired locally.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast
from unittest import mock

from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.error_equals_decl import ErrorEqualsDecl
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import StatesErrorNameType
from moto.stepfunctions.parser.asl.component.state.choice.comparison.comparison_operator_type import (
    ComparisonOperatorType,
)
from moto.stepfunctions.parser.asl.component.state.choice.comparison.comparison_variable import ComparisonVariable
from moto.stepfunctions.parser.asl.component.state.choice.comparison.variable import NoSuchVariable
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service_aws_sdk as aws_sdk_service,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

_ACCEPTS_MISSING = {operator for operator in ComparisonOperatorType if operator.name.startswith("Is")}


def _runtime_error(env: Any, cause: str) -> FailureEventException:
    name = StatesErrorNameType.StatesRuntime.to_name()
    # moto's EventDetails TypedDict is total, though each event carries one kind of details (as moto builds them).
    details = cast(EventDetails, {"taskFailedEventDetails": TaskFailedEventDetails(error=name, cause=cause)})
    return FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=StatesErrorNameType.StatesRuntime),
            event_type=HistoryEventType.TaskFailed,
            event_details=details,
        )
    )


def _eval_comparison(self: ComparisonVariable, env: Any) -> None:
    self.variable.eval(env)
    if isinstance(env.stack[-1], NoSuchVariable) and self.comparison_function.operator_type not in _ACCEPTS_MISSING:
        path = self.variable.string_sampler.literal_value
        raise _runtime_error(
            env, f"Invalid path '{path}': The choice state's condition path references an invalid value."
        )
    self.comparison_function.eval(env)


# botocore service name -> the service's name in Step Functions' SDK integration error names (see above).
SDK_ERROR_SERVICE_NAMES = {"sagemaker": "SageMaker"}


_UNCATCHABLE_BY_ALL = {StatesErrorNameType.StatesRuntime, StatesErrorNameType.StatesStatesDataLimitExceeded}
_original_error_equals = ErrorEqualsDecl._eval_body


def _error_equals(self: ErrorEqualsDecl, env: Any) -> None:
    error_name = env.stack[-1]
    terminal = isinstance(error_name, StatesErrorName) and error_name.typ in _UNCATCHABLE_BY_ALL
    if terminal and error_name not in self.error_names:
        env.stack.pop()
        env.stack.append(False)
        return
    _original_error_equals(self, env)


@contextmanager
def strict_choice_rules() -> Iterator[None]:
    """Within this block a Choice comparison on a missing path fails the execution with ``States.Runtime``,
    ``States.ALL`` does not catch ``States.Runtime`` or ``States.DataLimitExceeded``, and SDK integration errors carry
    the service's name as Step Functions spells it."""
    with (
        mock.patch.object(ComparisonVariable, "_eval_body", _eval_comparison),
        mock.patch.object(ErrorEqualsDecl, "_eval_body", _error_equals),
        mock.patch.dict(aws_sdk_service._SERVICE_ERROR_NAMES, SDK_ERROR_SERVICE_NAMES),
    ):
        yield
