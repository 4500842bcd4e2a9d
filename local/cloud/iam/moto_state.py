"""What enforcement reads from the local cloud: a role's policies, a resource's policy, and facts about resources.

- Identity policies: the role's inline policies and attached managed policies in moto's IAM, plus the
  ``ManagedPolicyArns`` of the ``AWS::IAM::Role`` in the stack that created it: moto's CloudFormation ignores that
  property (SAM puts ``AWSLambdaBasicExecutionRole`` there for every function) and moto loads no AWS managed policy
  unless told to, so their documents come from moto's copy of the AWS managed policies.
- Resource policies: S3 bucket policy, SQS queue policy and KMS key policy. moto's CloudFormation skips
  ``AWS::S3::BucketPolicy`` and ``AWS::SQS::QueuePolicy`` (see ``moto_fixes``), so when moto has none the one in the
  stack (its properties resolved against the created stack) is used.
- ``MotoFacts``: tags, object and bucket encryption, key and secret ARNs, asked through the services' own APIs as
  the operator (enforcement is off for these calls).

All lookups are per call, from the live backends: a policy changed during a test applies to the next call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto.cloudformation.models import Stack, cloudformation_backends
from moto.iam.aws_managed_policies import aws_managed_policies_data
from moto.iam.models import iam_backends
from moto.kms.models import kms_backends

from local.cloud.iam.evaluate import Policy

AWS_MANAGED_PREFIX = "arn:aws:iam::aws:policy/"


def _document(value: Any) -> Policy:
    return json.loads(value) if isinstance(value, str) else dict(value)


@cache
def _aws_managed_documents() -> dict[str, Policy]:
    return {name: data["Document"] for name, data in json.loads(aws_managed_policies_data).items()}


def managed_policy_document(arn: str, account: str) -> Policy:
    """A managed policy's default version: an AWS managed one from moto's copy of them, or the account's own."""
    backend = iam_backends[account]["global"]
    if arn in backend.managed_policies:
        policy = backend.managed_policies[arn]
        return _document(next(v.document for v in policy.versions if v.is_default))
    if arn.startswith(AWS_MANAGED_PREFIX):
        document = _aws_managed_documents().get(arn.rsplit("/", 1)[-1])
        if document is not None:
            return document
    raise LookupError(f"managed policy {arn} does not exist")


def _live_stacks(account: str, region: str) -> Iterator[Stack]:
    for stack in list(cloudformation_backends[account][region].stacks.values()):
        if stack.status != "DELETE_COMPLETE" and stack.template_dict:
            yield stack


def _resolved(stack: Stack, logical_id: str) -> dict[str, Any]:
    from local.cloud.moto_fixes import resolved_properties  # imported late: moto_fixes imports the Lambda runtime

    return resolved_properties(stack, stack.template_dict, logical_id)


def _stack_resources(account: str, region: str, kind: str) -> Iterator[tuple[Stack, str]]:
    for stack in _live_stacks(account, region):
        for logical_id, resource in stack.template_dict.get("Resources", {}).items():
            if resource.get("Type") == kind:
                yield stack, logical_id


def _physical_id(stack: Stack, logical_id: str) -> str | None:
    resource = stack.resource_map._parsed_resources.get(logical_id)
    return getattr(resource, "physical_resource_id", None) if resource is not None else None


def identity_policies(role_arn: str, region: str) -> list[Policy]:
    """Every identity-based policy of the role: inline, attached, and its stack's ``ManagedPolicyArns``."""
    account = role_arn.split(":")[4]
    role = iam_backends[account]["global"].get_role_by_arn(role_arn)
    policies = [_document(document) for document in role.policies.values()]
    attached = set(role.managed_policies)
    for stack, logical_id in _stack_resources(account, region, "AWS::IAM::Role"):
        if _physical_id(stack, logical_id) == role.name:
            arns = stack.template_dict["Resources"][logical_id].get("Properties", {}).get("ManagedPolicyArns", [])
            if not all(isinstance(arn, str) for arn in arns):  # SAM writes them as text; a template may !Sub them
                arns = _resolved(stack, logical_id).get("ManagedPolicyArns", [])
            attached |= set(arns)
    return policies + [managed_policy_document(arn, account) for arn in sorted(attached)]


def _stack_policy(
    account: str, region: str, kind: str, targets: Callable[[Mapping[str, Any]], list[str]], target: str
) -> Policy | None:
    for stack, logical_id in _stack_resources(account, region, kind):
        properties = _resolved(stack, logical_id)
        if target in targets(properties):
            return _document(properties["PolicyDocument"])
    return None


def resource_policy(resource: str, region: str, account: str) -> tuple[Policy | None, bool]:
    """(the resource's policy, whether it is a KMS key policy, which must allow on its own or delegate to IAM)."""
    parts = resource.split(":", 5)
    if len(parts) < 6:
        return None, False
    service = parts[2]
    if service == "s3":
        bucket = parts[5].split("/", 1)[0]
        try:
            return _document(_operator("s3", region).get_bucket_policy(Bucket=bucket)["Policy"]), False
        except ClientError:
            return _stack_policy(
                account, region, "AWS::S3::BucketPolicy", lambda p: [str(p.get("Bucket"))], bucket
            ), False
    if service == "sqs":
        url = f"https://sqs.{parts[3]}.amazonaws.com/{parts[4]}/{parts[5]}"
        try:
            attributes = _operator("sqs", region).get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
        except ClientError:
            return None, False
        if attributes.get("Attributes", {}).get("Policy"):
            return _document(attributes["Attributes"]["Policy"]), False
        return _stack_policy(account, region, "AWS::SQS::QueuePolicy", lambda p: list(p.get("Queues", [])), url), False
    if service == "kms":
        key = _kms_key(resource, parts[4], parts[3])
        return (_document(key.policy) if key is not None and key.policy else None), True  # no key: nothing allows
    return None, False


def _kms_key(key_id: str, account: str, region: str) -> Any:
    """moto's key (from its backend: moto's KMS API fails on keys CloudFormation created, whose policy it keeps as
    a dict, not JSON text); None if there is none."""
    if key_id.startswith("arn:"):
        account, region = key_id.split(":")[4], key_id.split(":")[3]
    backend = kms_backends[account][region]
    try:
        return backend.keys[backend.any_id_to_key_id(key_id)]
    except (KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Facts about resources, asked as the operator


_clients: dict[tuple[str, str], Any] = {}


def _operator(service: str, region: str) -> Any:
    """A client whose calls are never checked (``enforce`` skips clients marked so)."""
    key = (service, region)
    if key not in _clients:
        client = boto3.client(service, region_name=region)  # type: ignore[call-overload]
        client.meta.events.register_first("before-call", _mark_operator)
        _clients[key] = client
    return _clients[key]


def _mark_operator(context: dict[str, Any], **_: Any) -> None:
    context["tuneplane_operator"] = True


def is_operator_call(context: Mapping[str, Any]) -> bool:
    return bool(context.get("tuneplane_operator"))


def _pairs(tags: Any) -> dict[str, str]:
    if isinstance(tags, Mapping):
        return {str(k): str(v) for k, v in tags.items()}
    return {str(t.get("Key", t.get("key"))): str(t.get("Value", t.get("value", ""))) for t in tags or []}


# service -> (client name, call returning the tags)
_TAG_READERS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "sagemaker": ("sagemaker", lambda c, arn: c.list_tags(ResourceArn=arn)["Tags"]),
    "lambda": ("lambda", lambda c, arn: c.list_tags(Resource=arn)["Tags"]),
    "states": ("stepfunctions", lambda c, arn: c.list_tags_for_resource(resourceArn=arn)["tags"]),
    "events": ("events", lambda c, arn: c.list_tags_for_resource(ResourceARN=arn)["Tags"]),
    "dynamodb": ("dynamodb", lambda c, arn: c.list_tags_of_resource(ResourceArn=arn.split("/index/")[0])["Tags"]),
    "secretsmanager": ("secretsmanager", lambda c, arn: c.describe_secret(SecretId=arn).get("Tags", [])),
    "kms": ("kms", lambda c, arn: c.list_resource_tags(KeyId=arn)["Tags"]),  # ListResourceTags checks no policy
    "bedrock": ("bedrock", lambda c, arn: c.list_tags_for_resource(resourceARN=arn)["tags"]),
}


# moto's Application Auto Scaling keeps no tags: the tags each scalable target was registered with (``wiring``).
scalable_target_tags: dict[str, dict[str, str]] = {}


class MotoFacts:
    """``actions.Facts`` from the local cloud's services, in one region."""

    def __init__(self, region: str, account: str) -> None:
        self.region = region
        self.account = account

    def tags(self, arn: str) -> Mapping[str, str] | None:
        if arn.split(":")[2] == "application-autoscaling":
            return scalable_target_tags.get(arn)
        reader = _TAG_READERS.get(arn.split(":")[2])
        if reader is None:
            return None
        try:
            return _pairs(reader[1](_operator(reader[0], self.region), arn))
        except (ClientError, KeyError, ValueError, AttributeError):
            return None  # no such resource: no aws:ResourceTag keys

    def object_encryption(self, bucket: str, key: str, version_id: str | None) -> tuple[str | None, bool]:
        try:
            head = _operator("s3", self.region).head_object(
                Bucket=bucket, Key=key, **({"VersionId": version_id} if version_id else {})
            )
        except ClientError:
            return None, False
        if head.get("ServerSideEncryption") not in ("aws:kms", "aws:kms:dsse") or not head.get("SSEKMSKeyId"):
            return None, False
        return self.kms_key_arn(head["SSEKMSKeyId"]), bool(head.get("BucketKeyEnabled"))

    def object_exists(self, bucket: str, key: str, version_id: str | None) -> bool:
        try:
            _operator("s3", self.region).head_object(
                Bucket=bucket, Key=key, **({"VersionId": version_id} if version_id else {})
            )
        except ClientError:
            return False
        return True

    def scalable_target_arn(self, namespace: str, resource_id: str, dimension: str) -> str | None:
        dimension_filter = {"ScalableDimension": dimension} if dimension else {}
        try:
            found = _operator("application-autoscaling", self.region).describe_scalable_targets(
                ServiceNamespace=namespace, ResourceIds=[resource_id], **dimension_filter
            )["ScalableTargets"]
        except ClientError:
            return None
        return str(found[0]["ScalableTargetARN"]) if found else None

    def bucket_encryption(self, bucket: str) -> tuple[str | None, bool]:
        try:
            rules = _operator("s3", self.region).get_bucket_encryption(Bucket=bucket)
        except ClientError:
            return None, False
        for rule in rules["ServerSideEncryptionConfiguration"]["Rules"]:
            default = rule.get("ApplyServerSideEncryptionByDefault", {})
            if default.get("SSEAlgorithm") in ("aws:kms", "aws:kms:dsse") and default.get("KMSMasterKeyID"):
                return self.kms_key_arn(default["KMSMasterKeyID"]), bool(rule.get("BucketKeyEnabled"))
        return None, False

    def kms_key_arn(self, key_id: str) -> str:
        key = _kms_key(key_id, self.account, self.region)
        if key is not None:
            return str(key.arn)
        return key_id if key_id.startswith("arn:") else f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"

    def secret_arn(self, secret_id: str) -> str:
        try:
            return str(_operator("secretsmanager", self.region).describe_secret(SecretId=secret_id)["ARN"])
        except ClientError:
            return secret_id
