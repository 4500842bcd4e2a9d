"""The local cloud: the real template, ASL and handler code on moto, in this process (no Docker, no AWS).

    with local_cloud():
        deployment = deploy({"BaseModelS3Uri": "s3://models/tiny/"})
        boto3.client("stepfunctions").start_execution(stateMachineArn=deployment.state_machine_arn, name=..., ...)

- ``template.py``: SAM transform of ``template.yaml``, offline;
- ``deploy.py``: the stack in moto's CloudFormation, repaired where moto ignores things (``moto_fixes.py``);
- ``lambda_runtime.py``: Lambda invocations run the handlers in process instead of in Docker;
- ``s3_events.py``: S3's EventBridge notifications reach the default bus only (moto offers them to every bus);
- ``event_targets.py``: EventBridge rules deliver to Lambda functions and state machines (moto raises instead), so
  an upload reaches StartRun and starts the pipeline;
- ``sagemaker_jobs.py``: training and processing jobs run the real containers (or a test's executor) and
  ``sagemaker:*.sync`` tasks wait for them;
- ``endpoints.py``: real-time endpoints serve the model (``transformers serve`` on the CPU, or a test's scripted
  server) with blue/green updates and rollback, and sagemaker-runtime ``InvokeEndpoint`` asks it; while the local cloud
  runs, ``endpoint_url(name)`` is an endpoint's OpenAI-compatible base URL;
- ``request_checks.py``: every request is checked against the service model's constraints (length, pattern, enum,
  range) and documented rules that botocore leaves to the service, and refused with AWS's ValidationException;
- ``execution_events.py``: Step Functions' execution status changes reach the default bus, as on AWS;
- ``step_functions.py``: a Choice comparison on a missing path fails the execution (``States.Runtime``) as on AWS;
- ``clock.py``: Wait states and Retry intervals compressed, so tests of slow paths stay fast;
- ``iam/``: IAM enforcement (``enforce_iam``): every call the product makes, evaluated as the role that makes it on
  AWS (a Lambda function's, the state machine's, a SageMaker job's) against the deployed policies;
  ``current_enforcement().denials`` lists what was denied.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Literal

from moto import mock_aws

from local.cloud.clock import compressed_time
from local.cloud.deploy import DeployError, LocalDeployment, deploy
from local.cloud.endpoints import (
    EndpointBackend,
    EndpointRegistry,
    EndpointServer,
    ScriptedEndpointBackend,
    TransformersServeBackend,
    active_endpoints,
    endpoint_url,
    local_endpoints,
)
from local.cloud.event_targets import eventbridge_targets
from local.cloud.execution_events import execution_status_events
from local.cloud.iam import iam_enforcement
from local.cloud.lambda_runtime import patched_lambda_runtime
from local.cloud.request_checks import aws_request_checks
from local.cloud.s3_events import s3_events_on_default_bus
from local.cloud.sagemaker_jobs import (
    ContainerExecutor,
    JobExecutor,
    JobOutcome,
    JobRunner,
    LocalJob,
    local_sagemaker_jobs,
)
from local.cloud.step_functions import strict_choice_rules

__all__ = [
    "ContainerExecutor",
    "JobExecutor",
    "JobOutcome",
    "JobRunner",
    "LocalJob",
    "DeployError",
    "EndpointBackend",
    "EndpointRegistry",
    "EndpointServer",
    "LocalDeployment",
    "ScriptedEndpointBackend",
    "TransformersServeBackend",
    "active_endpoints",
    "compressed_time",
    "deploy",
    "endpoint_url",
    "eventbridge_targets",
    "local_endpoints",
    "local_sagemaker_jobs",
    "local_cloud",
    "patched_lambda_runtime",
    "s3_events_on_default_bus",
]


@contextmanager
def local_cloud(
    time_scale: float = 1.0,
    executor: JobExecutor | None = None,
    work_root: Path | None = None,
    endpoint_backend: EndpointBackend | None = None,
    enforce_iam: bool | Literal["audit"] = True,
) -> Iterator[JobRunner]:
    """moto with executing state machines, in-process Lambda handlers, S3 events on the default bus only, EventBridge
    Lambda and Step Functions targets, SageMaker jobs run by ``executor`` (default: the real containers, with
    their work directories under ``work_root``), SageMaker endpoints served by ``endpoint_backend`` (default:
    ``transformers serve``; servers under ``work_root/endpoints``, all stopped on exit; ``endpoint_url(name)`` or
    ``active_endpoints()`` while it runs) and Wait/Retry times multiplied by ``time_scale``. ``enforce_iam``: every
    call made as a role is checked against its deployed policies and denied as AWS would (``"audit"``: only recorded,
    in ``local.cloud.iam.current_enforcement()``; False: off, for tests of the emulator itself)."""
    with (
        tempfile.TemporaryDirectory(prefix="tuneplane-jobs-") as scratch,
        mock_aws(config={"stepfunctions": {"execute_state_machine": True}}),
        strict_choice_rules(),
        aws_request_checks(),
        patched_lambda_runtime(),
        s3_events_on_default_bus(),
        execution_status_events(),
        eventbridge_targets(),
        local_sagemaker_jobs(executor or ContainerExecutor(), work_root or Path(scratch)) as runner,
        local_endpoints(endpoint_backend or TransformersServeBackend(), work_root or Path(scratch)),
        compressed_time(time_scale),
        ExitStack() as stack,
    ):
        if enforce_iam:
            stack.enter_context(iam_enforcement("audit" if enforce_iam == "audit" else "enforce"))
        yield runner
