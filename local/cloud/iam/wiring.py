"""Who acts in the local cloud: the principals AWS would use for the calls the emulated services make.

- a Lambda invocation runs as the function's execution role (``lambda_runtime._invoke_in_process``, session name =
  the function's name);
- a state-machine execution runs as the state machine's role: moto starts each execution in a thread of its own
  (``Execution.start``), and ``enforce`` carries the principal into the threads started under it;
- moto's Application Auto Scaling ignores the tags a scalable target is registered with: they are kept here, for the
  ``aws:ResourceTag`` keys of later calls on the target (``remembered_scalable_target_tags``);
- a real-time endpoint downloads its model data as the model's ``ExecutionRoleArn`` (``endpoints.EndpointRegistry
  ._launch``, which runs in a thread started by the caller of CreateEndpoint/UpdateEndpoint);
- a SageMaker job reads its inputs and writes its outputs as the job's ``RoleArn`` (``sagemaker_jobs.JobRunner``,
  session name ``SageMaker``), and a ``sagemaker:*.sync`` task also needs what AWS's integration does with the
  managed EventBridge rule (``actions.sync_rule_checks``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from moto.applicationautoscaling.responses import ApplicationAutoScalingResponse
from moto.stepfunctions.parser.backend.execution import Execution

from local.cloud.endpoints import EndpointRegistry, model_execution_role
from local.cloud.iam.enforce import acting_as
from local.cloud.iam.moto_state import scalable_target_tags

_original_start = Execution.start


def _start_as_state_machine_role(self: Execution) -> None:
    with acting_as(self.role_arn, session_name=self.exec_arn.rsplit(":", 1)[-1][:64]):
        _original_start(self)


_original_launch = EndpointRegistry._launch


def _launch_as_model_role(self: EndpointRegistry, endpoint: Any, backend: Any, config_name: str) -> Any:
    with acting_as(model_execution_role(backend, config_name), "SageMaker"):
        return _original_launch(self, endpoint, backend, config_name)


@contextmanager
def executions_as_their_role() -> Iterator[None]:
    """State-machine executions act as the state machine's role, endpoints' model downloads as the model's role."""
    with (
        mock.patch.object(Execution, "start", _start_as_state_machine_role),
        mock.patch.object(EndpointRegistry, "_launch", _launch_as_model_role),
    ):
        yield


_original_register = ApplicationAutoScalingResponse.register_scalable_target


def _register_keeping_tags(self: ApplicationAutoScalingResponse) -> str:
    answer = _original_register(self)
    tags = self._get_param("Tags") or {}
    scalable_target_tags.setdefault(json.loads(answer)["ScalableTargetARN"], {}).update(tags)
    return answer


@contextmanager
def remembered_scalable_target_tags() -> Iterator[None]:
    scalable_target_tags.clear()
    with mock.patch.object(ApplicationAutoScalingResponse, "register_scalable_target", _register_keeping_tags):
        yield
    scalable_target_tags.clear()
