"""What moto's CloudFormation gets wrong or leaves out for our template, and the repairs ``deploy`` applies.

Below, every resource type in ``template.yaml`` that moto 5.2.5 skips, does not know, or creates with a fault
(checked against its source and by deploying the template); the types not listed are created as declared:

- ``Ref`` to an ``AWS::Events::EventBus`` gives the Python object instead of the bus name (the model has no
  ``physical_resource_id``): every ``!Ref EventBus`` (DefinitionSubstitutions, Outputs) would be garbage.
  Repaired while the stack is created and fixed up (``event_bus_ref_fix``).
- ``AWS::S3::Bucket``: only ``BucketEncryption`` and ``Tags`` are applied. Versioning, the EventBridge
  notification switch, the public access block and ownership controls are applied here. Lifecycle rules and
  access logging are left out: moto neither expires objects nor writes access logs, so they would change nothing.
- ``AWS::S3::BucketPolicy`` is skipped (with a warning). It stays skipped: moto evaluates a bucket policy on
  object requests but treats a statement whose ``Condition`` does not hold as a match, so the TLS-only ``Deny``
  (``aws:SecureTransport: false``) would deny every PutObject/GetObject. No other IAM is enforced here either.
- ``AWS::SQS::QueuePolicy`` is skipped too, and stays skipped: no IAM is enforced here.
- ``AWS::Lambda::EventInvokeConfig`` is skipped; ``deploy`` puts each one through moto's Lambda API afterwards
  (``lambda_async.apply_event_invoke_configs``), where ``lambda_async`` reads it for asynchronous invocations.
- ``AWS::Lambda::Function``: ``Tags`` (and ``Layers``, ``Architectures``, ``EphemeralStorage``, ``LoggingConfig``,
  ``TracingConfig``) are ignored. The tags are applied here, plus the tag that tells the in-process runtime where
  the function's code lives (``lambda_runtime.CODE_DIR_TAG``); the rest has no effect on an in-process run.
- ``AWS::SageMaker::ModelPackageGroup`` is unknown to moto's CloudFormation (and a ``!GetAtt`` of it fails the
  stack): ``LocalModelPackageGroup`` creates it in moto's SageMaker (``model_package_group_support``). Its ``Ref``
  is the group's ARN, as the resource schema's primaryIdentifier says (a test holds every resource's ``Ref`` to it).
- ``AWS::IAM::Role``: inline ``Policies`` are stored as Python objects, so ``GetRolePolicy`` answers their ``repr``;
  they are stored again as JSON (``fix_role``).
- ``AWS::CloudWatch::Alarm`` is skipped (with a warning): nothing here would ever set it off.
- ``AWS::SNS::TopicPolicy`` is skipped (with a warning): the only publisher it admits is CloudWatch, which never
  publishes here (the alarms are skipped); a test publishes to the alarm topic itself.
- ``AWS::SNS::Subscription`` is unknown to moto's CloudFormation: ``subscribe`` makes each one (whose Condition
  holds) through moto's SNS API, so the alarm topic reaches the Notify function (moto invokes a ``lambda``
  endpoint through the in-process runtime).
- ``AWS::StepFunctions::StateMachine``: ``DefinitionSubstitutions``, ``LoggingConfiguration``,
  ``TracingConfiguration`` and ``StateMachineType`` are ignored and the machine is created in the backend that
  never executes anything. It is re-created here, substitutions applied, in the executing backend, same ARN.

The repairs work from the resource's properties as the stack resolved them (moto's own ``clean_json`` over the
stack's resource map), so intrinsic functions (``!Ref``, ``!GetAtt``, ``!Sub``) mean exactly what they meant at
creation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import boto3
from moto.cloudformation import parsing as cf_parsing
from moto.cloudformation.exceptions import UnformattedGetAttTemplateException
from moto.cloudformation.models import Stack, cloudformation_backends
from moto.cloudformation.parsing import clean_json
from moto.core.common_models import CloudFormationModel
from moto.events.models import EventBus
from moto.iam.models import iam_backends
from moto.sagemaker.models import sagemaker_backends
from moto.stepfunctions.models import stepfunctions_backends

from local.cloud.lambda_runtime import CODE_DIR_TAG

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions.type_defs import TagTypeDef


@contextmanager
def event_bus_ref_fix() -> Iterator[None]:
    """``Ref`` of an event bus is its name (moto returns the model object instead)."""
    with mock.patch.object(EventBus, "physical_resource_id", property(lambda bus: bus.name), create=True):
        yield


def find_stack(stack_name: str, account_id: str, region: str) -> Stack:
    """moto's live stack object (the resource map lives on it)."""
    for stack in cloudformation_backends[account_id][region].stacks.values():
        if stack.name == stack_name and stack.status != "DELETE_COMPLETE":
            return stack
    raise LookupError(f"no stack named {stack_name} in {account_id}/{region}")


def resolved_properties(stack: Stack, template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """The resource's ``Properties`` with every intrinsic function resolved against the created stack."""
    properties = template["Resources"][logical_id].get("Properties", {})
    resolved: dict[str, Any] = clean_json(json.loads(json.dumps(properties)), stack.resource_map)
    return resolved


def _true(value: Any) -> bool:
    """A CloudFormation boolean: true, "true" or "True"."""
    return str(value).lower() == "true"


def fix_bucket(name: str, properties: Mapping[str, Any], region: str) -> None:
    s3 = boto3.client("s3", region_name=region)
    if "VersioningConfiguration" in properties:
        s3.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": properties["VersioningConfiguration"]["Status"]}
        )
    notifications = properties.get("NotificationConfiguration", {})
    if _true(notifications.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled")):
        s3.put_bucket_notification_configuration(
            Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
    if "PublicAccessBlockConfiguration" in properties:
        block = {key: _true(value) for key, value in properties["PublicAccessBlockConfiguration"].items()}
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=block)  # type: ignore[arg-type]
    if "OwnershipControls" in properties:
        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=properties["OwnershipControls"])


def fix_function(name: str, properties: Mapping[str, Any], code_dir: Path | None, region: str) -> None:
    client = boto3.client("lambda", region_name=region)
    arn = client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    tags = {tag["Key"]: str(tag["Value"]) for tag in properties.get("Tags", [])}
    if code_dir is not None:
        tags[CODE_DIR_TAG] = str(code_dir)
    if tags:
        client.tag_resource(Resource=arn, Tags=tags)


def fix_role(name: str, account_id: str) -> None:
    """Store the role's inline policies as the JSON text IAM keeps: moto's CloudFormation stores a role's ``Policies``
    as Python objects, and ``GetRolePolicy`` then answers their ``repr``. (Not through moto's ``PutRolePolicy``: its
    validator refuses a document without ``Version``, which IAM accepts as 2008-10-17, and SAM's policy templates
    have none.)"""
    role = iam_backends[account_id]["global"].get_role(name)
    for policy_name, document in list(role.policies.items()):
        if not isinstance(document, str):
            role.put_policy(policy_name, json.dumps(document))


def substitute(definition: str, substitutions: Mapping[str, Any]) -> str:
    """``DefinitionSubstitutions``: every ``${Name}`` in the definition becomes the substitution's value."""
    for name, value in substitutions.items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        definition = definition.replace("${" + name + "}", text)
    return definition


def _camel_case_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key[:1].lower() + key[1:]: _camel_case_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_camel_case_keys(item) for item in value]
    return value


def fix_state_machine(arn: str, properties: Mapping[str, Any], account_id: str, region: str) -> None:
    """Move the state machine into the executing backend, with its substitutions and settings applied."""
    definition = properties.get("DefinitionString")
    if not isinstance(definition, str):
        definition = json.dumps(properties.get("Definition", {}))
    stepfunctions_backends[account_id][region].delete_state_machine(arn)
    extra: dict[str, Any] = {}
    if "LoggingConfiguration" in properties:  # same fields as the API, but PascalCase
        extra["loggingConfiguration"] = _camel_case_keys(properties["LoggingConfiguration"])
    if "TracingConfiguration" in properties:
        extra["tracingConfiguration"] = {"enabled": bool(properties["TracingConfiguration"].get("Enabled"))}
    tags: list[TagTypeDef] = [{"key": tag["Key"], "value": str(tag["Value"])} for tag in properties.get("Tags", [])]
    created = boto3.client("stepfunctions", region_name=region).create_state_machine(
        name=arn.rsplit(":", 1)[1],
        definition=substitute(definition, properties.get("DefinitionSubstitutions", {})),
        roleArn=properties["RoleArn"],
        type=properties.get("StateMachineType", "STANDARD"),
        tags=tags,
        **extra,
    )
    if created["stateMachineArn"] != arn:
        raise RuntimeError(f"state machine re-created as {created['stateMachineArn']}, expected {arn}")


class LocalModelPackageGroup(CloudFormationModel):
    """``AWS::SageMaker::ModelPackageGroup``, which moto's CloudFormation lacks: created in moto's SageMaker."""

    def __init__(self, name: str, arn: str) -> None:
        self.name, self.arn = name, arn

    @staticmethod
    def cloudformation_name_type() -> str:
        return "ModelPackageGroupName"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::SageMaker::ModelPackageGroup"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in ("ModelPackageGroupArn", "CreationTime", "ModelPackageGroupStatus")

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
    ) -> LocalModelPackageGroup:
        properties = cloudformation_json.get("Properties", {})
        name = properties.get("ModelPackageGroupName", resource_name)
        backend = sagemaker_backends[account_id][region_name]
        arn = backend.create_model_package_group(name, properties.get("ModelPackageGroupDescription", ""), [])
        return cls(name, arn)

    @property
    def physical_resource_id(self) -> str:
        """``Ref`` returns the resource schema's primaryIdentifier: this type's is ``ModelPackageGroupArn``."""
        return self.arn

    def get_cfn_attribute(self, attribute_name: str) -> str:
        if attribute_name == "ModelPackageGroupArn":
            return self.arn
        raise UnformattedGetAttTemplateException()


@contextmanager
def model_package_group_support() -> Iterator[None]:
    """moto's CloudFormation creates ``AWS::SageMaker::ModelPackageGroup`` resources (``LocalModelPackageGroup``)."""
    original = cf_parsing.get_model_map

    def with_model_package_group() -> dict[str, Any]:
        return {**original(), LocalModelPackageGroup.cloudformation_type(): LocalModelPackageGroup}

    with mock.patch.object(cf_parsing, "get_model_map", with_model_package_group):
        yield


def condition_holds(stack: Stack, resource: Mapping[str, Any]) -> bool:
    """Whether the resource's ``Condition`` (if any) is true in the created stack."""
    condition = resource.get("Condition")
    return not condition or bool(stack.resource_map.lazy_condition_map[condition])


def subscribe(properties: Mapping[str, Any], region: str) -> None:
    """Create an ``AWS::SNS::Subscription`` from its resolved properties."""
    boto3.client("sns", region_name=region).subscribe(
        TopicArn=str(properties["TopicArn"]),
        Protocol=str(properties["Protocol"]),
        Endpoint=str(properties["Endpoint"]),
        ReturnSubscriptionArn=True,
    )
