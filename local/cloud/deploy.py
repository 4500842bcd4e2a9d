"""``deploy``: the real ``template.yaml`` as a CloudFormation stack in moto, ready to run executions.

What ``sam build && sam deploy`` does on AWS, in process: package the local code folders into a local assets
bucket, transform the template (``template.py``), create the stack with moto's CloudFormation, then repair what
moto ignores (``moto_fixes.py``), so that the state machine executes with the real ASL and its substitutions, and
the Lambda functions run their real handlers in process (``lambda_runtime.py``).

Must be called inside ``mock_aws(config={"stepfunctions": {"execute_state_machine": True}})``; executions only
run handlers inside ``patched_lambda_runtime()`` (``local.cloud.local_cloud()`` enters both).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from moto.core.config import default_user_config
from moto.core.models import MockAWS

from local.cloud import lambda_async, moto_fixes
from local.cloud.template import TEMPLATE, CodeAsset, TransformedTemplate, transform_template

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
# Resource types moto's CloudFormation skips that we know about (see moto_fixes): their warning is noise. Any other
# skipped type still warns: a new resource in the template that the local cloud silently lacks.
KNOWN_SKIPPED_TYPES = (
    "AWS::S3::BucketPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::Lambda::EventInvokeConfig",
    "AWS::CloudWatch::Alarm",
    "AWS::SNS::TopicPolicy",
    "AWS::SNS::Subscription",
)


class _KnownSkippedTypes(logging.Filter):
    """Drops moto's "No Moto CloudFormation support for <type>" log line for the types in KNOWN_SKIPPED_TYPES."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "No Moto CloudFormation support for %s" and record.args in _SKIPPED_ARGS)


_SKIPPED_ARGS = {(kind,) for kind in KNOWN_SKIPPED_TYPES}
logging.getLogger("moto").addFilter(_KnownSkippedTypes())  # moto logs under the "moto" logger


REPAIRED_TYPES = ("AWS::S3::Bucket", "AWS::Lambda::Function", "AWS::StepFunctions::StateMachine", "AWS::IAM::Role")


class DeployError(RuntimeError):
    """The stack could not be created (or the local cloud is not running)."""


@dataclass(frozen=True)
class LocalDeployment:
    """Names and ARNs of a deployed stack, as its Outputs and resources report them."""

    stack_name: str
    account_id: str
    region: str
    bucket_name: str
    bus_name: str
    state_machine_arn: str
    function_names: dict[str, str]  # logical id -> function name
    outputs: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)  # logical id -> physical id
    parameters: dict[str, str] = field(default_factory=dict)


def _require_local_cloud() -> None:
    if not MockAWS._mocks_active:
        raise DeployError("deploy() needs moto: call it inside mock_aws(...) (or local.cloud.local_cloud())")
    if not default_user_config.get("stepfunctions", {}).get("execute_state_machine", False):
        raise DeployError('mock_aws needs config={"stepfunctions": {"execute_state_machine": True}}')


def _zip(directory: Path) -> bytes:
    """The folder's files, as ``sam package`` would upload them (no caches)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


def _upload_assets(bucket: str, assets: tuple[CodeAsset, ...], region: str) -> None:
    s3 = boto3.client("s3", region_name=region)
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})  # type: ignore[typeddict-item]
    for asset in assets:
        s3.put_object(Bucket=bucket, Key=asset.key, Body=_zip(asset.directory))


def _create_stack(stack_name: str, transformed: TransformedTemplate, region: str) -> dict[str, Any]:
    cloudformation = boto3.client("cloudformation", region_name=region)
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(transformed.template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in transformed.parameters.items()],
        Capabilities=CAPABILITIES,
    )
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise DeployError(f"stack {stack_name}: {stack['StackStatus']} {stack.get('StackStatusReason', '')}")
    return dict(stack)


def _repair(stack_name: str, transformed: TransformedTemplate, account_id: str, region: str) -> dict[str, str]:
    """Apply the repairs of ``moto_fixes`` to every resource that needs one; returns logical -> physical ids."""
    stack = moto_fixes.find_stack(stack_name, account_id, region)
    summaries = boto3.client("cloudformation", region_name=region).list_stack_resources(StackName=stack_name)
    physical = {  # resources moto skipped are listed with empty ids
        r["LogicalResourceId"]: r.get("PhysicalResourceId", "")
        for r in summaries["StackResourceSummaries"]
        if r["LogicalResourceId"]
    }
    for logical_id, resource in transformed.template["Resources"].items():
        kind = resource["Type"]
        if kind == "AWS::SNS::Subscription" and moto_fixes.condition_holds(stack, resource):
            moto_fixes.subscribe(moto_fixes.resolved_properties(stack, transformed.template, logical_id), region)
            continue
        if kind not in REPAIRED_TYPES:
            continue
        if not physical.get(logical_id):  # its Condition is false: not created
            continue
        if kind == "AWS::IAM::Role":
            moto_fixes.fix_role(physical[logical_id], account_id)
            continue
        properties = moto_fixes.resolved_properties(stack, transformed.template, logical_id)
        if kind == "AWS::S3::Bucket":
            moto_fixes.fix_bucket(physical[logical_id], properties, region)
        elif kind == "AWS::Lambda::Function":
            moto_fixes.fix_function(
                physical[logical_id], properties, transformed.function_code.get(logical_id), region
            )
        else:
            moto_fixes.fix_state_machine(physical[logical_id], properties, account_id, region)
    return physical


def deploy(
    parameters: Mapping[str, str],
    *,
    stack_name: str = "tuneplane-local",
    template: Path = TEMPLATE,
    region: str | None = None,
) -> LocalDeployment:
    """Deploy ``template`` with ``parameters`` (CloudFormation parameter values) into the running local cloud.

    ``region`` defaults to the environment's (``AWS_DEFAULT_REGION``), so plain ``boto3.client(...)`` calls find
    the stack's resources.
    """
    _require_local_cloud()
    region = region or boto3.session.Session().region_name or "us-east-1"
    assets_bucket = f"{stack_name.lower()}-assets"
    transformed = transform_template(parameters, path=template, region=region, assets_bucket=assets_bucket)
    account_id = boto3.client("sts", region_name=region).get_caller_identity()["Account"]
    _upload_assets(assets_bucket, transformed.assets, region)
    with moto_fixes.event_bus_ref_fix(), moto_fixes.model_package_group_support(), warnings.catch_warnings():
        for kind in KNOWN_SKIPPED_TYPES:  # moto warns each time it looks at the resource, during and after creation
            warnings.filterwarnings("ignore", message=f"Tried to parse {kind} ", category=UserWarning)
        stack = _create_stack(stack_name, transformed, region)
        physical = _repair(stack_name, transformed, account_id, region)
        lambda_async.apply_event_invoke_configs(
            moto_fixes.find_stack(stack_name, account_id, region), transformed.template, region
        )
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    try:
        bucket, bus, state_machine = outputs["DataBucketName"], outputs["EventBusName"], outputs["StateMachineArn"]
    except KeyError as missing:
        raise DeployError(f"the template has no output {missing}") from None
    return LocalDeployment(
        stack_name=stack_name,
        account_id=account_id,
        region=region,
        bucket_name=bucket,
        bus_name=bus,
        state_machine_arn=state_machine,
        function_names={
            logical_id: physical[logical_id]
            for logical_id, resource in transformed.template["Resources"].items()
            if resource["Type"] == "AWS::Lambda::Function" and physical.get(logical_id)
        },
        outputs=outputs,
        resources=physical,
        parameters=transformed.parameters,
    )
