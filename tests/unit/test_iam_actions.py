"""The authorization context of AWS calls (local/cloud/iam/actions.py): the non-obvious mappings, each check held to
the IAM service authorization data policy_sentry ships (the action exists, the resource has the ARN format of one of
the action's resource types, the service's condition keys are the action's), and every operation the product calls
mapped."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name
from local.cloud.iam.actions import MAPPERS, Call, Check, UnmappedOperation, checks
from policy_sentry.shared.iam_data import get_service_prefix_data

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, REGION = "123456789012", "us-east-1"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@dataclass
class Facts:
    """What the tests say exists: tags by ARN, objects, the bucket's default SSE-KMS key, scalable targets."""

    tags_by_arn: dict[str, dict[str, str]] = field(default_factory=dict)
    objects: set[str] = field(default_factory=set)  # "bucket/key"
    bucket_key: str | None = None
    bucket_key_enabled: bool = False
    targets: dict[str, str] = field(default_factory=dict)  # resource id -> ARN

    def tags(self, arn: str) -> Mapping[str, str] | None:
        return self.tags_by_arn.get(arn)

    def object_exists(self, bucket: str, key: str, version_id: str | None) -> bool:
        return f"{bucket}/{key}" in self.objects

    def object_encryption(self, bucket: str, key: str, version_id: str | None) -> tuple[str | None, bool]:
        return self.bucket_key, self.bucket_key_enabled

    def bucket_encryption(self, bucket: str) -> tuple[str | None, bool]:
        return self.bucket_key, self.bucket_key_enabled

    def kms_key_arn(self, key_id: str) -> str:
        return KEY_ARN if key_id in (KEY_ARN, "alias/data") else key_id

    def secret_arn(self, secret_id: str) -> str:
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret_id}-AbCdEf"

    def scalable_target_arn(self, namespace: str, resource_id: str, dimension: str) -> str | None:
        return self.targets.get(resource_id)


def _checks(service: str, operation: str, facts: Facts | None = None, **params: Any) -> list[Check]:
    found = checks(Call(service, operation, params, REGION, ACCOUNT), facts or Facts())
    for check in found:
        _assert_authorization_data_knows(check)
    return found


def _arn_pattern(arn_format: str) -> re.Pattern[str]:
    """``arn:${Partition}:s3:::${BucketName}/${ObjectName}`` as a regex; a ``*`` we put where a generated id goes
    matches too."""
    parts = re.split(r"\$\{[^}]+\}", arn_format)
    return re.compile("^" + ".+".join(re.escape(part) for part in parts) + "$")


def _assert_authorization_data_knows(check: Check) -> None:
    """The Service Authorization Reference (policy_sentry's copy) has the action, a resource type whose ARN format
    the resource has, and the service-specific condition keys."""
    prefix, _, name = check.action.partition(":")
    data = get_service_prefix_data(prefix)
    assert name in data["privileges"], f"{check.action} is not an IAM action"
    resource_types = data["privileges"][name]["resource_types"]
    formats = [data["resources"][r["resource_type"]]["arn"] for r in resource_types.values() if r["resource_type"]]
    if formats:
        assert any(_arn_pattern(f).match(check.resource) for f in formats), f"{check.action} on {check.resource}"
    else:
        assert check.resource == "*", f"{check.action} takes no resource, got {check.resource}"
    known = {key.split("${")[0].split("<")[0] for r in resource_types.values() for key in r["condition_keys"]}
    known |= {key.split("${")[0] for key in data["conditions"]}
    known = {key.lower() for key in known}  # condition keys are case-insensitive (s3:VersionId is s3:versionid)
    for key in check.context:
        if not key.startswith("aws:"):
            assert any(key.lower().startswith(k) for k in known), f"{key} is not a condition key of {check.action}"


def _one(found: Sequence[Check], action: str) -> Check:
    [check] = [c for c in found if c.action == action]
    return check


# ---------------------------------------------------------------------------------------------------------------------
# S3


def test_head_object_is_get_object_and_a_version_makes_it_get_object_version() -> None:
    facts = Facts(objects={"b/k"})
    [head] = _checks("s3", "HeadObject", facts, Bucket="b", Key="k")
    assert (head.action, head.resource) == ("s3:GetObject", "arn:aws:s3:::b/k")
    [versioned] = _checks("s3", "GetObject", facts, Bucket="b", Key="k", VersionId="v1")
    assert versioned.action == "s3:GetObjectVersion"
    assert versioned.context == {"s3:VersionId": ["v1"]}


def test_reading_a_missing_object_also_needs_list_bucket() -> None:
    # The AWS docs: without s3:ListBucket a missing key is 403, not 404.
    found = _checks("s3", "GetObject", Facts(), Bucket="b", Key="incoming/x.json")
    assert _one(found, "s3:ListBucket").resource == "arn:aws:s3:::b"


def test_list_objects_v2_is_list_bucket_with_the_prefix() -> None:
    [check] = _checks("s3", "ListObjectsV2", Bucket="b", Prefix="runs/r1/", MaxKeys=10)
    assert (check.action, check.resource) == ("s3:ListBucket", "arn:aws:s3:::b")
    assert check.context == {"s3:prefix": ["runs/r1/"], "s3:max-keys": ["10"]}


def test_sse_kms_writes_need_the_data_key_and_reads_decrypt_through_s3() -> None:
    # GIVEN a bucket whose default encryption is SSE-KMS with an S3 Bucket Key
    facts = Facts(objects={"b/k"}, bucket_key=KEY_ARN, bucket_key_enabled=True)
    # WHEN an object is written and read
    put = _one(_checks("s3", "PutObject", facts, Bucket="b", Key="k", Body=b""), "kms:GenerateDataKey")
    get = _one(_checks("s3", "GetObject", facts, Bucket="b", Key="k"), "kms:Decrypt")
    # THEN both are on the key, via S3, with the bucket's ARN as encryption context (Bucket Key)
    for check in (put, get):
        assert check.resource == KEY_ARN
        assert check.context["kms:ViaService"] == [f"s3.{REGION}.amazonaws.com"]
        assert check.context["kms:EncryptionContext:aws:s3:arn"] == ["arn:aws:s3:::b"]
    # AND a HEAD does not decrypt; SSE-S3 asked explicitly needs no key
    assert [c.action for c in _checks("s3", "HeadObject", facts, Bucket="b", Key="k")] == ["s3:GetObject"]
    plain = _checks("s3", "PutObject", facts, Bucket="b", Key="k", ServerSideEncryption="AES256")
    assert [c.action for c in plain] == ["s3:PutObject"]


def test_a_multipart_upload_with_sse_kms_needs_generate_data_key_and_decrypt() -> None:
    facts = Facts(bucket_key=KEY_ARN)
    found = _checks("s3", "CreateMultipartUpload", facts, Bucket="b", Key="big")
    assert [c.action for c in found] == ["s3:PutObject", "kms:GenerateDataKey", "kms:Decrypt"]
    assert found[1].context["kms:EncryptionContext:aws:s3:arn"] == ["arn:aws:s3:::b/big"]  # no Bucket Key


# ---------------------------------------------------------------------------------------------------------------------
# Other services


def test_invoke_is_invoke_function_on_the_qualified_function() -> None:
    [check] = _checks("lambda", "Invoke", FunctionName="fn", Qualifier="live")
    assert (check.action, check.resource) == (
        "lambda:InvokeFunction",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn:live",
    )
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn"
    assert _checks("lambda", "Invoke", FunctionName=arn)[0].resource == arn


def test_invoke_endpoint_is_sagemakers_action() -> None:
    [check] = _checks("sagemaker-runtime", "InvokeEndpoint", EndpointName="ep", Body=b"{}")
    assert (check.action, check.resource) == (
        "sagemaker:InvokeEndpoint",
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/ep",
    )


def test_put_events_is_checked_per_bus_with_sources_and_detail_types() -> None:
    entries = [
        {"EventBusName": "stack-events", "Source": "tuneplane", "DetailType": "Stage Started", "Detail": "{}"},
        {"Source": "other", "DetailType": "X", "Detail": "{}"},
    ]
    found = _checks("events", "PutEvents", Entries=entries)
    by_bus = {c.resource.rsplit("/", 1)[-1]: c.context for c in found}
    assert by_bus == {
        "stack-events": {"events:source": ["tuneplane"], "events:detail-type": ["Stage Started"]},
        "default": {"events:source": ["other"], "events:detail-type": ["X"]},
    }


def test_create_training_job_passes_its_role_and_tags_it() -> None:
    role = f"arn:aws:iam::{ACCOUNT}:role/jobs"
    found = _checks(
        "sagemaker",
        "CreateTrainingJob",
        TrainingJobName="r1-train0",
        RoleArn=role,
        ResourceConfig={"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        EnableNetworkIsolation=True,
        Tags=[{"Key": "tuneplane:stack", "Value": "s"}],
    )
    job = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/r1-train0"
    create = _one(found, "sagemaker:CreateTrainingJob")
    assert create.resource == job
    assert create.context["aws:RequestTag/tuneplane:stack"] == ["s"]
    assert create.context["aws:TagKeys"] == ["tuneplane:stack"]
    assert create.context["sagemaker:InstanceTypes"] == ["ml.g5.2xlarge"]
    assert create.context["sagemaker:NetworkIsolation"] == ["true"]
    assert _one(found, "sagemaker:AddTags").resource == job
    pass_role = _one(found, "iam:PassRole")
    assert pass_role.resource == role
    assert pass_role.context == {
        "iam:PassedToService": ["sagemaker.amazonaws.com"],
        "iam:AssociatedResourceArn": [job],
    }


def test_calls_on_existing_resources_carry_their_tags_and_missing_ones_none() -> None:
    job = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/"
    facts = Facts(tags_by_arn={job + "mine": {"tuneplane:stack": "s"}})
    [mine] = _checks("sagemaker", "StopTrainingJob", facts, TrainingJobName="mine")
    [missing] = _checks("sagemaker", "DescribeTrainingJob", facts, TrainingJobName="gone")
    assert mine.context == {"aws:ResourceTag/tuneplane:stack": ["s"]}
    assert missing.context == {}


def test_create_endpoint_is_on_the_endpoint_and_its_config_both_with_the_request_tags() -> None:
    found = _checks(
        "sagemaker", "CreateEndpoint", EndpointName="ep", EndpointConfigName="cfg", Tags=[{"Key": "k", "Value": "v"}]
    )
    creates = [c for c in found if c.action == "sagemaker:CreateEndpoint"]
    assert sorted(c.resource.rsplit(":", 1)[-1] for c in creates) == ["endpoint-config/cfg", "endpoint/ep"]
    assert all(c.context["aws:RequestTag/k"] == ["v"] for c in creates)


def test_scaling_an_endpoint_is_on_its_scalable_target() -> None:
    resource_id = "endpoint/ep/variant/AllTraffic"
    target = f"arn:aws:application-autoscaling:{REGION}:{ACCOUNT}:scalable-target/0123456789abcdef"
    facts = Facts(targets={resource_id: target}, tags_by_arn={target: {"tuneplane:stack": "s"}})
    dimension = "sagemaker:variant:DesiredInstanceCount"
    [policy] = _checks(
        "application-autoscaling", "PutScalingPolicy", facts,
        PolicyName="p", ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=dimension,
    )  # fmt: skip
    assert policy.resource == target
    assert policy.context["aws:ResourceTag/tuneplane:stack"] == ["s"]
    assert policy.context["application-autoscaling:scalable-dimension"] == [dimension]
    register = _checks(
        "application-autoscaling", "RegisterScalableTarget", Facts(),
        ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=dimension, Tags={"k": "v"},
    )  # fmt: skip
    assert [c.action for c in register] == [
        "application-autoscaling:RegisterScalableTarget",
        "application-autoscaling:TagResource",
    ]
    assert register[0].context["aws:RequestTag/k"] == ["v"]


def test_converse_is_invoke_model_and_through_a_profile_also_on_its_foundation_model() -> None:
    # GIVEN the judge's Converse calls: a foundation model id, then a system cross-region inference profile id
    messages = [{"role": "user", "content": [{"text": "grade"}]}]
    [direct] = _checks("bedrock-runtime", "Converse", modelId="anthropic.claude-judge-v1:0", messages=messages)
    profile, foundation = _checks(
        "bedrock-runtime", "Converse", modelId="us.anthropic.claude-judge-v1:0", messages=messages
    )
    # THEN each is bedrock:InvokeModel: on the foundation model (no account in its ARN), or on the profile and on the
    # model behind it with bedrock:InferenceProfileArn, as the Bedrock user guide's inference-profile prerequisites say
    assert (direct.action, direct.resource) == (
        "bedrock:InvokeModel",
        f"arn:aws:bedrock:{REGION}::foundation-model/anthropic.claude-judge-v1:0",
    )
    profile_arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:inference-profile/us.anthropic.claude-judge-v1:0"
    assert (profile.action, profile.resource) == ("bedrock:InvokeModel", profile_arn)
    assert foundation.resource == f"arn:aws:bedrock:{REGION}::foundation-model/anthropic.claude-judge-v1:0"
    assert foundation.context == {"bedrock:InferenceProfileArn": [profile_arn]}


def test_kms_secrets_bedrock_and_sqs_resolve_their_resources() -> None:
    assert _checks("kms", "Decrypt", KeyId="alias/data", CiphertextBlob=b"x")[0].resource == KEY_ARN
    secret = _checks("secretsmanager", "GetSecretValue", SecretId="slack")[0]
    assert secret.resource.endswith(":secret:slack-AbCdEf")
    model = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:imported-model/abc"
    assert _checks("bedrock-runtime", "InvokeModel", modelId=model, body=b"{}")[0].resource == model
    url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/dlq"
    assert (
        _checks("sqs", "SendMessage", QueueUrl=url, MessageBody="m")[0].resource
        == f"arn:aws:sqs:{REGION}:{ACCOUNT}:dlq"
    )


def test_an_operation_without_a_mapping_is_an_error() -> None:
    with pytest.raises(UnmappedOperation, match="s3:PutBucketPolicy"):
        checks(Call("s3", "PutBucketPolicy", {"Bucket": "b", "Policy": "{}"}, REGION, ACCOUNT), Facts())


# ---------------------------------------------------------------------------------------------------------------------
# Coverage of what the product calls

PRODUCT = [ROOT / "layers/shared/tuneplane", ROOT / "functions", ROOT / "containers/common"]
SERVICES = sorted(MAPPERS)
# High-level helpers and what they call (boto3's transfer manager, Powertools' parameters).
HELPERS = {
    "upload_file": [("s3", "PutObject"), ("s3", "CreateMultipartUpload"), ("s3", "UploadPart")],
    "download_file": [("s3", "HeadObject"), ("s3", "GetObject")],
    "get_secret": [("secretsmanager", "GetSecretValue")],
}
# Methods of the product's own or of the standard library that share a name with an AWS operation.
NOT_AWS = {"list_keys": "tuneplane.adapters.model_store.list_keys", "search": "re.Pattern.search"}


def _operations_by_method() -> dict[str, list[tuple[str, str]]]:
    session = botocore.session.get_session()
    found: dict[str, list[tuple[str, str]]] = {}
    for service in SERVICES:
        for operation in session.get_service_model(service).operation_names:
            found.setdefault(xform_name(operation), []).append((service, operation))
    return found


def test_every_operation_the_product_calls_is_mapped() -> None:
    # GIVEN every method name the product calls, or asks a paginator for, that is an operation of a mapped service
    operations = _operations_by_method()
    called: dict[str, set[str]] = {}
    for root in PRODUCT:
        for path in root.rglob("*.py"):
            text = path.read_text()
            for name in re.findall(r"\.([a-z_0-9]+)\(", text) + re.findall(r"get_paginator\(\"([a-z_0-9]+)\"", text):
                if (name in operations or name in HELPERS) and name not in NOT_AWS:
                    called.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    # THEN each is mapped for at least one service that has it
    unmapped = {
        name: sorted(files)
        for name, files in called.items()
        if not any(operation in MAPPERS[service] for service, operation in HELPERS.get(name) or operations[name])
    }
    assert not unmapped
    assert {"get_object", "put_events", "invoke_endpoint", "start_execution", "update_item"} <= set(called)
