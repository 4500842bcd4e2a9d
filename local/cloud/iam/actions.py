"""The authorization context of an AWS call: which IAM actions on which resources, with which condition keys.

``checks(call, facts)`` turns one botocore call (service, operation, parameters, region, account) into the
``Check``s AWS makes for it. Most operations are one action of the same name on one resource; the exceptions are
where the AWS docs ("Actions, resources, and condition keys" of each service, the Service Authorization
Reference) say otherwise, e.g.:

- S3: ``HeadObject`` is ``s3:GetObject``, a ``VersionId`` makes it ``s3:GetObjectVersion``, ``ListObjectsV2`` is
  ``s3:ListBucket`` on the bucket with ``s3:prefix``/``s3:delimiter``/``s3:max-keys``, every multipart call is
  ``s3:PutObject``, a copy (``CopyObject``, ``UploadPartCopy``) also reads its source (``s3:GetObjectVersion`` for a
  version); an object written with SSE-KMS (asked for, or the bucket's default) also needs
  ``kms:GenerateDataKey`` and one read ``kms:Decrypt``, on the key, with ``kms:ViaService`` = ``s3.<region>
  .amazonaws.com`` and the encryption context ``aws:s3:arn`` (the bucket's ARN when it uses an S3 Bucket Key);
- Lambda ``Invoke`` is ``lambda:InvokeFunction``; SageMaker Runtime ``InvokeEndpoint`` is ``sagemaker:InvokeEndpoint``;
  Bedrock Runtime ``InvokeModel`` and ``Converse`` are ``bedrock:InvokeModel``;
- EventBridge ``PutEvents`` is ``events:PutEvents`` on each entry's bus, with ``events:source``/``events:detail-type``;
- a request that passes a role (SageMaker ``RoleArn``/``ExecutionRoleArn``, Bedrock ``roleArn``) needs
  ``iam:PassRole`` on it with ``iam:PassedToService``; one with ``Tags`` needs the service's ``AddTags``/
  ``TagResource`` and carries ``aws:RequestTag/<key>`` and ``aws:TagKeys``;
- a call on an existing resource carries its tags as ``aws:ResourceTag/<key>`` (a resource that does not exist has
  none).

An operation that is not in the table raises ``UnmappedOperation``: enforcement must never allow by omission.
Global keys that depend on the caller (``aws:PrincipalArn``, ``aws:SecureTransport``, ...) are added by ``enforce``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

PASSED_TO = {"sagemaker": "sagemaker.amazonaws.com", "bedrock": "bedrock.amazonaws.com"}


class UnmappedOperation(LookupError):
    """An operation whose IAM authorization is not known here."""


class Facts(Protocol):
    """What the mapping needs to know about existing resources (the local cloud reads it from moto's backends)."""

    def tags(self, arn: str) -> Mapping[str, str] | None:
        """The resource's tags; None when the resource does not exist (or has no tagging)."""

    def object_encryption(self, bucket: str, key: str, version_id: str | None) -> tuple[str | None, bool]:
        """(KMS key ARN, S3 Bucket Key on) of a stored object; (None, False) when it is not SSE-KMS."""

    def object_exists(self, bucket: str, key: str, version_id: str | None) -> bool:
        """Whether the object (version) exists: a read of a missing one also needs s3:ListBucket."""

    def scalable_target_arn(self, namespace: str, resource_id: str, dimension: str) -> str | None:
        """The ARN of a registered scalable target (None: not registered)."""

    def bucket_encryption(self, bucket: str) -> tuple[str | None, bool]:
        """(KMS key ARN, S3 Bucket Key on) of the bucket's default encryption; (None, False) when not SSE-KMS."""

    def kms_key_arn(self, key_id: str) -> str:
        """The key's ARN from a key id, key ARN, alias name or alias ARN."""

    def secret_arn(self, secret_id: str) -> str:
        """The secret's full ARN from its name or (partial) ARN."""


@dataclass(frozen=True)
class Call:
    service: str  # botocore's service name, as boto3.client() takes it: "s3", "stepfunctions", "sagemaker-runtime"
    operation: str  # "PutObject"
    params: Mapping[str, Any]
    region: str
    account: str

    def arn(self, service: str, resource: str, region: str | None = None, account: str | None = None) -> str:
        region = self.region if region is None else region
        account = self.account if account is None else account
        return f"arn:aws:{service}:{region}:{account}:{resource}"


@dataclass(frozen=True)
class Check:
    """One authorization: ``action`` on ``resource`` with the request's condition keys (names as AWS writes them).
    ``existing``: the resource is expected to exist (its tags become ``aws:ResourceTag/...``)."""

    action: str
    resource: str
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)
    existing: bool = True


Mapper = Callable[[Call, Facts], list[Check]]


def _tag_context(tags: Mapping[str, str]) -> dict[str, list[str]]:
    context: dict[str, list[str]] = {f"aws:RequestTag/{key}": [value] for key, value in tags.items()}
    if tags:
        context["aws:TagKeys"] = list(tags)
    return context


def _tag_list(value: Any) -> dict[str, str]:
    """Tags as the APIs take them: ``[{"Key", "Value"}]`` (SageMaker, CloudWatch, ...), ``[{"key", "value"}]``
    (Bedrock) or a plain mapping (Lambda, SQS, Step Functions' ``tags``)."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    return {str(t.get("Key", t.get("key"))): str(t.get("Value", t.get("value", ""))) for t in value or []}


def _pass_role(call: Call, role_arn: str | None, service: str, resource: str) -> list[Check]:
    if not role_arn:
        return []
    context = {"iam:PassedToService": [PASSED_TO[service]], "iam:AssociatedResourceArn": [resource]}
    return [Check("iam:PassRole", role_arn, context)]


# ---------------------------------------------------------------------------------------------------------------------
# S3


def _s3_object(call: Call) -> str:
    return f"arn:aws:s3:::{call.params['Bucket']}/{call.params['Key']}"


def _s3_kms(call: Call, action: str, key_arn: str | None, bucket_key: bool) -> list[Check]:
    """The KMS call S3 makes for the caller; the AWS docs: encryption context ``aws:s3:arn`` is the object's ARN,
    or the bucket's with an S3 Bucket Key."""
    if not key_arn:
        return []
    bucket_arn = f"arn:aws:s3:::{call.params['Bucket']}"
    context = {
        "kms:ViaService": [f"s3.{call.region}.amazonaws.com"],
        "kms:CallerAccount": [call.account],
        "kms:EncryptionContext:aws:s3:arn": [bucket_arn if bucket_key else _s3_object(call)],
        "kms:EncryptionContextKeys": ["aws:s3:arn"],
    }
    return [Check(action, key_arn, context)]


def _s3_write(call: Call, facts: Facts, kms_action: str = "kms:GenerateDataKey") -> list[Check]:
    """PutObject and the multipart calls: s3:PutObject, and the data key when the object is SSE-KMS."""
    params = call.params
    context: dict[str, list[str]] = {}
    if "ServerSideEncryption" in params:
        context["s3:x-amz-server-side-encryption"] = [params["ServerSideEncryption"]]
    if "SSEKMSKeyId" in params:
        context["s3:x-amz-server-side-encryption-aws-kms-key-id"] = [params["SSEKMSKeyId"]]
    default_key, default_bucket_key = facts.bucket_encryption(params["Bucket"])
    key_arn = default_key
    if params.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse"):
        key_arn = facts.kms_key_arn(params["SSEKMSKeyId"]) if "SSEKMSKeyId" in params else default_key
    elif params.get("ServerSideEncryption") == "AES256":
        key_arn = None
    bucket_key = bool(params.get("BucketKeyEnabled", default_bucket_key))
    return [Check("s3:PutObject", _s3_object(call), context, existing=False)] + _s3_kms(
        call, kms_action, key_arn, bucket_key
    )


def _s3_read(call: Call, facts: Facts, decrypts: bool) -> list[Check]:
    """The AWS docs (GetObject): "If the object that you request doesn't exist, the error that Amazon S3 returns
    depends on whether you also have the s3:ListBucket permission": 404 with it, 403 without."""
    bucket, key, version = call.params["Bucket"], call.params["Key"], call.params.get("VersionId")
    action = "s3:GetObjectVersion" if version else "s3:GetObject"
    context = {"s3:VersionId": [version]} if version else {}
    checks = [Check(action, _s3_object(call), context)]
    if not facts.object_exists(bucket, key, version):
        return checks + [Check("s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": [key]})]
    if decrypts:
        key_arn, bucket_key = facts.object_encryption(bucket, key, version)
        checks += _s3_kms(call, "kms:Decrypt", key_arn, bucket_key)
    return checks


def _s3_list(call: Call, facts: Facts) -> list[Check]:
    context = {
        f"s3:{name}": [str(call.params[param])]
        for name, param in (("prefix", "Prefix"), ("delimiter", "Delimiter"), ("max-keys", "MaxKeys"))
        if param in call.params
    }
    action = "s3:ListBucketVersions" if call.operation == "ListObjectVersions" else "s3:ListBucket"
    return [Check(action, f"arn:aws:s3:::{call.params['Bucket']}", context)]


def _s3_bucket(action: str) -> Mapper:
    return lambda call, facts: [Check(action, f"arn:aws:s3:::{call.params['Bucket']}")]


def _s3_delete(call: Call, facts: Facts) -> list[Check]:
    versioned = "VersionId" in call.params
    return [Check("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject", _s3_object(call))]


def _s3_delete_objects(call: Call, facts: Facts) -> list[Check]:
    bucket = call.params["Bucket"]
    return [
        Check(
            "s3:DeleteObjectVersion" if "VersionId" in item else "s3:DeleteObject",
            f"arn:aws:s3:::{bucket}/{item['Key']}",
        )
        for item in call.params["Delete"]["Objects"]
    ]


def _copy_source(call: Call) -> Call:
    """The read of a copy's source, as a GetObject of it. The hook sees ``CopySource`` after botocore's
    ``handle_copy_source_param`` has turned it into the header's value, ``bucket/<percent-encoded key>?versionId=ID``
    (the AWS docs, CopySource: "The value must be URL-encoded"; a version is named by appending ``?versionId=``):
    the key is decoded back, because IAM matches the object's ARN, which holds the key itself."""
    source = call.params["CopySource"]
    if isinstance(source, str):
        bucket, _, rest = source.lstrip("/").partition("/")
        key, _, version = rest.partition("?versionId=")
        source = {"Bucket": bucket, "Key": unquote(key), **({"VersionId": version} if version else {})}
    params = {name: source[name] for name in ("Bucket", "Key", "VersionId") if source.get(name)}
    return Call(call.service, "GetObject", params, call.region, call.account)


def _s3_copy(call: Call, facts: Facts) -> list[Check]:
    """The AWS docs (CopyObject): s3:GetObject to read the source and s3:PutObject to write the copy; a source that
    names a version is a read of that version, s3:GetObjectVersion (as for GetObject with a VersionId)."""
    return _s3_write(call, facts) + _s3_read(_copy_source(call), facts, decrypts=True)


def _s3_upload_part_copy(call: Call, facts: Facts) -> list[Check]:
    """The AWS docs (UploadPartCopy): "you must have the s3:GetObject permission to read the source object" and
    "the s3:PutObject permission to write the object copy to the destination bucket" (s3:GetObjectVersion for a
    source version, as for CopyObject). With SSE-KMS the requester "needs permissions for the kms:Decrypt action on
    the UploadPart and UploadPartCopy APIs": the destination's is checked when the upload starts
    (CreateMultipartUpload), the source's here, with the source object's key and encryption context."""
    return [Check("s3:PutObject", _s3_object(call), existing=False)] + _s3_read(
        _copy_source(call), facts, decrypts=True
    )


S3: dict[str, Mapper] = {
    "GetObject": lambda call, facts: _s3_read(call, facts, decrypts=True),
    "HeadObject": lambda call, facts: _s3_read(call, facts, decrypts=False),
    "PutObject": _s3_write,
    # The AWS docs (CreateMultipartUpload): a multipart upload with SSE-KMS needs kms:GenerateDataKey and
    # kms:Decrypt, "because Amazon S3 must decrypt and read data from the encrypted file parts before it completes
    # the multipart upload". Both are checked when it starts; the parts and the completion are s3:PutObject.
    "CreateMultipartUpload": lambda call, facts: _s3_write(call, facts) + _s3_write(call, facts, "kms:Decrypt")[1:],
    "UploadPart": lambda call, facts: [Check("s3:PutObject", _s3_object(call), existing=False)],
    "UploadPartCopy": _s3_upload_part_copy,
    "CompleteMultipartUpload": lambda call, facts: [Check("s3:PutObject", _s3_object(call), existing=False)],
    "AbortMultipartUpload": lambda call, facts: [Check("s3:AbortMultipartUpload", _s3_object(call))],
    "CopyObject": _s3_copy,
    "DeleteObject": _s3_delete,
    "DeleteObjects": _s3_delete_objects,
    "ListObjectsV2": _s3_list,
    "ListObjects": _s3_list,
    "ListObjectVersions": _s3_list,
    "GetBucketVersioning": _s3_bucket("s3:GetBucketVersioning"),
    "GetBucketLocation": _s3_bucket("s3:GetBucketLocation"),
    "GetObjectTagging": lambda call, facts: [Check("s3:GetObjectTagging", _s3_object(call))],
    "PutObjectTagging": lambda call, facts: [Check("s3:PutObjectTagging", _s3_object(call))],
}


# ---------------------------------------------------------------------------------------------------------------------
# Services whose action is the operation's name on one resource


def _same_name(prefix: str, resource: Callable[[Call], str], existing: bool = True) -> Mapper:
    return lambda call, facts: [Check(f"{prefix}:{call.operation}", resource(call), existing=existing)]


def _table(call: Call) -> str:
    table = call.params["TableName"]
    arn = table if table.startswith("arn:") else call.arn("dynamodb", f"table/{table}")
    return f"{arn}/index/{call.params['IndexName']}" if call.params.get("IndexName") else arn


def _dynamodb_batch(call: Call, facts: Facts) -> list[Check]:
    action = "dynamodb:BatchWriteItem" if call.operation == "BatchWriteItem" else "dynamodb:BatchGetItem"
    return [
        Check(action, _table(Call(call.service, "", {"TableName": t}, call.region, call.account)))
        for t in call.params["RequestItems"]
    ]


DYNAMODB: dict[str, Mapper] = {
    **{
        op: _same_name("dynamodb", _table)
        for op in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan")
    },
    "DescribeTable": _same_name("dynamodb", _table),
    "BatchWriteItem": _dynamodb_batch,
    "BatchGetItem": _dynamodb_batch,
}


def _bus(call: Call, name: str | None) -> str:
    name = name or "default"
    return name if name.startswith("arn:") else call.arn("events", f"event-bus/{name}")


def _put_events(call: Call, facts: Facts) -> list[Check]:
    """One events:PutEvents per bus the entries go to; the AWS docs: events:source and events:detail-type."""
    by_bus: dict[str, list[Mapping[str, Any]]] = {}
    for entry in call.params["Entries"]:
        by_bus.setdefault(_bus(call, entry.get("EventBusName")), []).append(entry)
    return [
        Check(
            "events:PutEvents",
            bus,
            {
                "events:source": sorted({e["Source"] for e in entries if "Source" in e}),
                "events:detail-type": sorted({e["DetailType"] for e in entries if "DetailType" in e}),
            },
        )
        for bus, entries in by_bus.items()
    ]


def _rule(call: Call) -> str:
    name, bus = call.params.get("Name") or call.params["Rule"], call.params.get("EventBusName")
    if name.startswith("arn:"):
        return str(name)
    bus_name = bus.rsplit("/", 1)[-1] if bus else "default"
    return call.arn("events", f"rule/{name}" if bus_name == "default" else f"rule/{bus_name}/{name}")


EVENTS: dict[str, Mapper] = {
    "PutEvents": _put_events,
    "PutRule": lambda call, facts: [
        Check("events:PutRule", _rule(call), _tag_context(_tag_list(call.params.get("Tags"))))
    ],
    **{
        op: _same_name("events", _rule)
        for op in (
            "PutTargets",
            "DescribeRule",
            "RemoveTargets",
            "DeleteRule",
            "EnableRule",
            "DisableRule",
            "ListTargetsByRule",
        )
    },
}


STATES: dict[str, Mapper] = {
    "StartExecution": _same_name("states", lambda call: call.params["stateMachineArn"]),
    "StartSyncExecution": _same_name("states", lambda call: call.params["stateMachineArn"]),
    "DescribeStateMachine": _same_name("states", lambda call: call.params["stateMachineArn"]),
    "ListExecutions": _same_name("states", lambda call: call.params["stateMachineArn"]),
    "DescribeExecution": _same_name("states", lambda call: call.params["executionArn"]),
    "StopExecution": _same_name("states", lambda call: call.params["executionArn"]),
    "GetExecutionHistory": _same_name("states", lambda call: call.params["executionArn"]),
    **{
        op: _same_name("states", lambda call: "*")
        for op in ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat")
    },
}


def _function(call: Call) -> str:
    """``FunctionName`` may be a name, an ARN or a partial ARN (``ACCOUNT:function:NAME``), each with a qualifier."""
    name, qualifier = str(call.params["FunctionName"]), call.params.get("Qualifier")
    if name.startswith("arn:"):
        arn = name
    elif ":function:" in name:
        arn = f"arn:aws:lambda:{call.region}:{name}"
    else:
        arn = call.arn("lambda", f"function:{name}")
    return f"{arn}:{qualifier}" if qualifier and arn.count(":") == 6 else arn


LAMBDA: dict[str, Mapper] = {
    "Invoke": lambda call, facts: [Check("lambda:InvokeFunction", _function(call))],
    "InvokeAsync": lambda call, facts: [Check("lambda:InvokeFunction", _function(call))],
    **{
        op: _same_name("lambda", _function)
        for op in ("GetFunction", "GetFunctionConfiguration", "UpdateFunctionConfiguration")
    },
}


# ---------------------------------------------------------------------------------------------------------------------
# SageMaker


def _sm(kind: str, param: str) -> Callable[[Call], str]:
    return lambda call: call.arn("sagemaker", f"{kind}/{call.params[param]}")


def _sagemaker_create(kind: str, param: str, role_param: str | None) -> Mapper:
    """A create with its tags (``sagemaker:AddTags`` and ``aws:RequestTag``) and the role it passes."""

    def mapper(call: Call, facts: Facts) -> list[Check]:
        resource = _sm(kind, param)(call)
        tags = _tag_list(call.params.get("Tags"))
        context = _tag_context(tags) | _sagemaker_job_keys(call.params)
        checks = [Check(f"sagemaker:{call.operation}", resource, context, existing=False)]
        if tags:
            checks.append(Check("sagemaker:AddTags", resource, _tag_context(tags), existing=False))
        return checks + _pass_role(call, call.params.get(role_param) if role_param else None, "sagemaker", resource)

    return mapper


def _sagemaker_job_keys(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The service's condition keys on a job request (the Service Authorization Reference lists them)."""
    keys: dict[str, list[str]] = {}
    resources = params.get("ResourceConfig") or params.get("ProcessingResources", {}).get("ClusterConfig") or {}
    if resources.get("InstanceType"):
        keys["sagemaker:InstanceTypes"] = [resources["InstanceType"]]
    if resources.get("VolumeKmsKeyId"):
        keys["sagemaker:VolumeKmsKey"] = [resources["VolumeKmsKeyId"]]
    output_key = (params.get("OutputDataConfig") or params.get("ProcessingOutputConfig") or {}).get("KmsKeyId")
    if output_key:
        keys["sagemaker:OutputKmsKey"] = [output_key]
    network = params.get("EnableNetworkIsolation", (params.get("NetworkConfig") or {}).get("EnableNetworkIsolation"))
    if network is not None:
        keys["sagemaker:NetworkIsolation"] = [str(bool(network)).lower()]
    encryption = params.get(
        "EnableInterContainerTrafficEncryption",
        (params.get("NetworkConfig") or {}).get("EnableInterContainerTrafficEncryption"),
    )
    if encryption is not None:
        keys["sagemaker:InterContainerTrafficEncryption"] = [str(bool(encryption)).lower()]
    runtime = (params.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    if runtime is not None:
        keys["sagemaker:MaxRuntimeInSeconds"] = [str(runtime)]
    return keys


def _model_package(call: Call, facts: Facts) -> list[Check]:
    group = call.params.get("ModelPackageGroupName")
    if group:
        name = group.rsplit("/", 1)[-1]
        resource = call.arn("sagemaker", f"model-package/{name}/*")  # the version number is not known before
        group_arn = call.arn("sagemaker", f"model-package-group/{name}")
    else:
        resource = group_arn = call.arn("sagemaker", f"model-package/{call.params['ModelPackageName']}")
    tags = _tag_list(call.params.get("Tags"))
    context = _tag_context(tags)
    if "ModelApprovalStatus" in call.params:
        context["sagemaker:ModelApprovalStatus"] = [call.params["ModelApprovalStatus"]]
    for key, value in (call.params.get("CustomerMetadataProperties") or {}).items():
        context[f"sagemaker:CustomerMetadataProperties/{key}"] = [value]
    # The Service Authorization Reference: on the model package and on its group.
    checks = [Check("sagemaker:CreateModelPackage", resource, context, existing=False)]
    if group:
        checks.append(Check("sagemaker:CreateModelPackage", group_arn, context))
    if tags:
        checks.append(Check("sagemaker:AddTags", resource, _tag_context(tags), existing=False))
    return checks


SAGEMAKER: dict[str, Mapper] = {
    "CreateTrainingJob": _sagemaker_create("training-job", "TrainingJobName", "RoleArn"),
    "CreateProcessingJob": _sagemaker_create("processing-job", "ProcessingJobName", "RoleArn"),
    "CreateModel": _sagemaker_create("model", "ModelName", "ExecutionRoleArn"),
    "CreateEndpointConfig": _sagemaker_create("endpoint-config", "EndpointConfigName", None),
    # The Service Authorization Reference: CreateEndpoint is on the endpoint and on the endpoint config it uses; the
    # request's tags are keys of the whole request, so they are in both checks.
    "CreateEndpoint": lambda call, facts: (
        _sagemaker_create("endpoint", "EndpointName", None)(call, facts)
        + [
            Check(
                "sagemaker:CreateEndpoint",
                _sm("endpoint-config", "EndpointConfigName")(call),
                _tag_context(_tag_list(call.params.get("Tags"))),
            )
        ]
    ),
    "UpdateEndpoint": lambda call, facts: [
        Check("sagemaker:UpdateEndpoint", _sm("endpoint", "EndpointName")(call)),
        Check("sagemaker:UpdateEndpoint", _sm("endpoint-config", "EndpointConfigName")(call)),
    ],
    "CreateModelPackage": _model_package,
    **{
        op: _same_name("sagemaker", _sm(kind, param))
        for op, kind, param in (
            ("DescribeTrainingJob", "training-job", "TrainingJobName"),
            ("StopTrainingJob", "training-job", "TrainingJobName"),
            ("DescribeProcessingJob", "processing-job", "ProcessingJobName"),
            ("StopProcessingJob", "processing-job", "ProcessingJobName"),
            ("DescribeEndpoint", "endpoint", "EndpointName"),
            ("DeleteEndpoint", "endpoint", "EndpointName"),
            ("DescribeEndpointConfig", "endpoint-config", "EndpointConfigName"),
            ("DeleteEndpointConfig", "endpoint-config", "EndpointConfigName"),
            ("DescribeModel", "model", "ModelName"),
            ("DeleteModel", "model", "ModelName"),
            ("DescribeModelPackageGroup", "model-package-group", "ModelPackageGroupName"),
        )
    },
    "DescribeModelPackage": _same_name(
        "sagemaker",
        lambda call: (
            n
            if (n := call.params["ModelPackageName"]).startswith("arn:")
            else call.arn("sagemaker", f"model-package/{n}")
        ),
    ),
    **{
        op: _same_name("sagemaker", lambda call: "*")
        for op in ("ListTrainingJobs", "ListProcessingJobs", "ListEndpoints", "ListModelPackages")
    },
    "ListTags": _same_name("sagemaker", lambda call: call.params["ResourceArn"]),
    "AddTags": lambda call, facts: [
        Check("sagemaker:AddTags", call.params["ResourceArn"], _tag_context(_tag_list(call.params["Tags"])))
    ],
}

SAGEMAKER_RUNTIME: dict[str, Mapper] = {
    "InvokeEndpoint": lambda call, facts: [Check("sagemaker:InvokeEndpoint", _sm("endpoint", "EndpointName")(call))],
}


# ---------------------------------------------------------------------------------------------------------------------
# Application Auto Scaling, CloudWatch, KMS, Secrets Manager, Bedrock, SQS, ECR, Logs


def _scaling(call: Call, facts: Facts) -> list[Check]:
    """On the scalable target (named by a generated id: a target not registered yet is ``scalable-target/*``), with
    the service's ``application-autoscaling:service-namespace``/``scalable-dimension`` keys; tags passed to
    RegisterScalableTarget also need ``TagResource`` (a dependent action in the Service Authorization Reference)."""
    params = call.params
    namespace, dimension = params.get("ServiceNamespace", ""), params.get("ScalableDimension", "")
    target = facts.scalable_target_arn(namespace, params.get("ResourceId", ""), dimension)
    context: dict[str, list[str]] = {"application-autoscaling:service-namespace": [namespace]}
    if dimension:
        context["application-autoscaling:scalable-dimension"] = [dimension]
    tags = _tag_list(params.get("Tags"))
    resource = target or call.arn("application-autoscaling", "scalable-target/*")
    checks = [Check(f"application-autoscaling:{call.operation}", resource, context | _tag_context(tags), bool(target))]
    if tags:
        checks.append(Check("application-autoscaling:TagResource", resource, _tag_context(tags), bool(target)))
    return checks


APPLICATION_AUTOSCALING: dict[str, Mapper] = {
    **{
        op: _scaling
        for op in ("RegisterScalableTarget", "DeregisterScalableTarget", "PutScalingPolicy", "DeleteScalingPolicy")
    },
    **{
        op: _same_name("application-autoscaling", lambda call: "*")
        for op in ("DescribeScalableTargets", "DescribeScalingPolicies")
    },
}


def _alarm(call: Call) -> str:
    return call.arn("cloudwatch", f"alarm:{call.params['AlarmName']}")


CLOUDWATCH: dict[str, Mapper] = {
    "PutMetricAlarm": lambda call, facts: [
        Check(
            "cloudwatch:PutMetricAlarm", _alarm(call), _tag_context(_tag_list(call.params.get("Tags"))), existing=False
        )
    ],
    "DeleteAlarms": lambda call, facts: [
        Check("cloudwatch:DeleteAlarms", call.arn("cloudwatch", f"alarm:{name}")) for name in call.params["AlarmNames"]
    ],
    "DescribeAlarms": lambda call, facts: (
        [  # on each named alarm (the reference's alarm resource), else on "*"
            Check("cloudwatch:DescribeAlarms", call.arn("cloudwatch", f"alarm:{name}"))
            for name in call.params.get("AlarmNames") or []
        ]
        or [Check("cloudwatch:DescribeAlarms", "*")]
    ),
    "PutMetricData": lambda call, facts: [
        Check("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": [call.params["Namespace"]]})
    ],
}


def _kms(call: Call, facts: Facts) -> list[Check]:
    context: dict[str, list[str]] = {"kms:CallerAccount": [call.account]}
    encryption_context = call.params.get("EncryptionContext") or {}
    for key, value in encryption_context.items():
        context[f"kms:EncryptionContext:{key}"] = [value]
    if encryption_context:
        context["kms:EncryptionContextKeys"] = list(encryption_context)
    return [Check(f"kms:{call.operation}", facts.kms_key_arn(call.params["KeyId"]), context)]


KMS: dict[str, Mapper] = {
    op: _kms
    for op in (
        "Decrypt",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "DescribeKey",
        "CreateGrant",
    )
}

SECRETSMANAGER: dict[str, Mapper] = {
    op: lambda call, facts: [
        Check(
            f"secretsmanager:{call.operation}",
            facts.secret_arn(call.params["SecretId"]),
            {"secretsmanager:SecretId": [call.params["SecretId"]]},
        )
    ]
    for op in ("GetSecretValue", "DescribeSecret")
}


def _bedrock_id(kind: str, param: str) -> Callable[[Call], str]:
    return lambda call: v if (v := str(call.params[param])).startswith("arn:") else call.arn("bedrock", f"{kind}/{v}")


def _model_import_job(call: Call, facts: Facts) -> list[Check]:
    job = call.arn("bedrock", "model-import-job/*")  # the job id is generated
    tags = _tag_list(call.params.get("jobTags")) | _tag_list(call.params.get("importedModelTags"))
    # The Service Authorization Reference lists no resource type for CreateModelImportJob: it is authorized on "*".
    checks = [Check("bedrock:CreateModelImportJob", "*", _tag_context(tags), existing=False)]
    if tags:
        checks.append(Check("bedrock:TagResource", job, _tag_context(tags), existing=False))
    return checks + _pass_role(call, call.params.get("roleArn"), "bedrock", job)


BEDROCK: dict[str, Mapper] = {
    "CreateModelImportJob": _model_import_job,
    "GetModelImportJob": _same_name("bedrock", _bedrock_id("model-import-job", "jobIdentifier")),
    "GetImportedModel": _same_name("bedrock", _bedrock_id("imported-model", "modelIdentifier")),
    "DeleteImportedModel": _same_name("bedrock", _bedrock_id("imported-model", "modelIdentifier")),
    "ListImportedModels": _same_name("bedrock", lambda call: "*"),
    "ListModelImportJobs": _same_name("bedrock", lambda call: "*"),
}


# A system-defined cross-region inference profile's id starts with its geography (the Bedrock user guide, "Supported
# Regions and models for inference profiles": us., eu., apac., global., ...).
_PROFILE_ID = re.compile(r"^(us|eu|apac|us-gov|ca|jp|au|global)\.")


def _model(call: Call) -> str:
    """``modelId``: an ARN (an imported model's, a profile's), an inference profile's id (its ARN has the account),
    or a foundation model's id (its ARN has no account)."""
    model = str(call.params["modelId"])
    if model.startswith("arn:"):
        return model
    if _PROFILE_ID.match(model):
        return call.arn("bedrock", f"inference-profile/{model}")
    return call.arn("bedrock", f"foundation-model/{model}", account="")


def _converse(call: Call, facts: Facts) -> list[Check]:
    """Converse is authorized as bedrock:InvokeModel (its API reference: "This operation requires permission for the
    bedrock:InvokeModel action"). Through a system inference profile, the Bedrock user guide ("Prerequisites for
    inference profiles") requires it on the profile and on the foundation model in the Regions the profile routes
    to, where the request carries ``bedrock:InferenceProfileArn``; this Region stands for them here."""
    resource = _model(call)
    checks = [Check("bedrock:InvokeModel", resource)]
    model = str(call.params["modelId"])
    if ":inference-profile/" in resource and not model.startswith("arn:"):
        foundation = call.arn("bedrock", f"foundation-model/{model.split('.', 1)[1]}", account="")
        checks.append(Check("bedrock:InvokeModel", foundation, {"bedrock:InferenceProfileArn": [resource]}))
    return checks


BEDROCK_RUNTIME: dict[str, Mapper] = {"InvokeModel": _same_name("bedrock", _model), "Converse": _converse}


def _queue(call: Call) -> str:
    url = urlparse(str(call.params["QueueUrl"]))
    account, name = url.path.strip("/").split("/")[-2:]
    return call.arn("sqs", name, account=account)


SQS: dict[str, Mapper] = {
    **{
        op: _same_name("sqs", _queue)
        for op in (
            "SendMessage",
            "ReceiveMessage",
            "DeleteMessage",
            "GetQueueAttributes",
            "PurgeQueue",
            "ChangeMessageVisibility",
        )
    },
    "SendMessageBatch": lambda call, facts: [Check("sqs:SendMessage", _queue(call))],
    "DeleteMessageBatch": lambda call, facts: [Check("sqs:DeleteMessage", _queue(call))],
    "GetQueueUrl": _same_name("sqs", lambda call: call.arn("sqs", call.params["QueueName"])),
}

ECR: dict[str, Mapper] = {
    "GetAuthorizationToken": _same_name("ecr", lambda call: "*"),
    **{
        op: _same_name("ecr", lambda call: call.arn("ecr", f"repository/{call.params['repositoryName']}"))
        for op in ("BatchGetImage", "GetDownloadUrlForLayer", "BatchCheckLayerAvailability", "DescribeImages")
    },
}


def _log_group(call: Call) -> str:
    stream = call.params.get("logStreamName")
    group = call.arn("logs", f"log-group:{call.params['logGroupName']}")
    return f"{group}:log-stream:{stream}" if stream else group


LOGS: dict[str, Mapper] = {
    op: _same_name("logs", _log_group) for op in ("CreateLogGroup", "CreateLogStream", "PutLogEvents")
}

# Calls that need no permission (the AWS docs: "No permissions are required to perform this operation").
STS: dict[str, Mapper] = {"GetCallerIdentity": lambda call, facts: []}

MAPPERS: dict[str, Mapping[str, Mapper]] = {
    "s3": S3,
    "dynamodb": DYNAMODB,
    "events": EVENTS,
    "stepfunctions": STATES,
    "lambda": LAMBDA,
    "sagemaker": SAGEMAKER,
    "sagemaker-runtime": SAGEMAKER_RUNTIME,
    "application-autoscaling": APPLICATION_AUTOSCALING,
    "cloudwatch": CLOUDWATCH,
    "kms": KMS,
    "secretsmanager": SECRETSMANAGER,
    "bedrock": BEDROCK,
    "bedrock-runtime": BEDROCK_RUNTIME,
    "sqs": SQS,
    "ecr": ECR,
    "logs": LOGS,
    "sts": STS,
}


# The AWS docs ("IAM policies for Amazon SageMaker AI" in the Step Functions guide): a .sync task manages the rule
# StepFunctionsGetEventsForSageMaker{Training,Processing}JobsRule, with events:PutTargets, PutRule and DescribeRule.
_SYNC_RULES = {
    "create_training_job": "StepFunctionsGetEventsForSageMakerTrainingJobsRule",
    "create_processing_job": "StepFunctionsGetEventsForSageMakerProcessingJobsRule",
}


def sync_rule_checks(action: str, region: str, account: str) -> list[Check]:
    """What a ``sagemaker:<action>.sync`` task needs besides the create and describe calls themselves."""
    rule = f"arn:aws:events:{region}:{account}:rule/{_SYNC_RULES[action]}"
    return [Check(f"events:{name}", rule) for name in ("PutTargets", "PutRule", "DescribeRule")]


def checks(call: Call, facts: Facts) -> list[Check]:
    """Every authorization ``call`` needs, each with ``aws:ResourceTag/...`` of an existing resource's tags."""
    mapper = MAPPERS.get(call.service, {}).get(call.operation)
    if mapper is None:
        raise UnmappedOperation(f"no IAM mapping for {call.service}:{call.operation} (local/cloud/iam/actions.py)")
    return [with_resource_tags(check, facts) for check in mapper(call, facts)]


def with_resource_tags(check: Check, facts: Facts) -> Check:
    if not check.existing or check.resource == "*" or check.resource.endswith("/*"):
        return check
    tags = facts.tags(check.resource) or {}
    resource_tags = {f"aws:ResourceTag/{key}": [value] for key, value in tags.items()}
    return Check(check.action, check.resource, {**check.context, **resource_tags}, check.existing)


def operations() -> Iterable[tuple[str, str]]:
    """Every mapped (service, operation)."""
    return ((service, operation) for service, table in MAPPERS.items() for operation in table)
