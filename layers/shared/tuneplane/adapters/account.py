"""Read-only AWS calls of `tuneplane doctor`: the deployed stack, SageMaker quotas, images, Bedrock, the Slack
secret and the staged base model.

Every call is a read (Describe*/List*/Get*) made with the caller's own credentials. A refused call becomes
:class:`~tuneplane.errors.PermissionDenied` and a call that got no usable answer
:class:`~tuneplane.errors.ServiceUnavailable`, both naming the IAM action the call needs, so that the doctor can
report "could not check, needs <action>" instead of stopping. Things that do not exist are answers, not errors:
``None``, ``False`` or ``"missing"``.

Clients are created lazily (tests start moto first) and cached per service and region; call
``_client.cache_clear()`` between tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal

import boto3
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from tuneplane.errors import PermissionDenied, ServiceUnavailable, TuneplaneError

ImageState = Literal["present", "missing", "no-repository"]

# Error codes with which AWS services say "not allowed" (or "these credentials are not valid").
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnauthorizedException",
        "AuthorizationError",
        "Forbidden",
        "403",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
_MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET = frozenset({"NoSuchBucket"})
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:.+$")


@dataclass(frozen=True, slots=True)
class StackDescription:
    name: str
    stack_id: str  # arn:aws:cloudformation:<region>:<account>:stack/<name>/<uuid>
    status: str
    status_reason: str
    parameters: dict[str, str]
    outputs: dict[str, str]

    @property
    def account_id(self) -> str:
        parts = self.stack_id.split(":")
        return parts[4] if len(parts) > 4 else ""


@dataclass(frozen=True, slots=True)
class StackResource:
    logical_id: str
    resource_type: str
    physical_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Quota:
    name: str  # e.g. "ml.g5.2xlarge for spot training job usage"
    code: str  # e.g. "L-..."
    value: float
    adjustable: bool
    applied: bool  # False: the AWS default (ListAWSDefaultServiceQuotas), the account has no applied value listed


@dataclass(frozen=True, slots=True)
class SecretDescription:
    arn: str
    name: str
    deleted_date: datetime | None
    kms_key_id: str | None
    has_current_version: bool  # a version labelled AWSCURRENT: what GetSecretValue returns by default


@cache
def _client(service: str, region: str) -> Any:
    """One client per service and region (typed Any: no stubs are installed for several of these services)."""
    return boto3.client(service, region_name=region)  # type: ignore[call-overload]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _failure(exc: Exception, what: str, permission: str) -> TuneplaneError:
    """The domain error for a failed read: refused (PermissionDenied) or unanswered (ServiceUnavailable)."""
    if isinstance(exc, NoCredentialsError):
        return PermissionDenied(
            f"{what}: no AWS credentials found (set AWS_PROFILE or run aws configure)", permission=permission
        )
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = f"{what}: {code or status} {message}".rstrip()
        if code in _DENIED or status == 403:
            return PermissionDenied(text, permission=permission)
        return ServiceUnavailable(text, permission=permission)
    return ServiceUnavailable(f"{what}: {exc}", permission=permission)


class AwsAccount:
    """The doctor's view of one account and region (``region``: the stack's)."""

    def __init__(self, region: str) -> None:
        self.region = region

    # --- CloudFormation -------------------------------------------------------------------------------------------

    def stack(self, name: str) -> StackDescription | None:
        """The stack's status, parameters and outputs; None when no stack of that name exists in the region."""
        permission = "cloudformation:DescribeStacks"
        try:
            stacks = _client("cloudformation", self.region).describe_stacks(StackName=name)["Stacks"]
        except ClientError as exc:
            # CloudFormation answers a missing stack with ValidationError "Stack with id X does not exist".
            if _code(exc) == "ValidationError" and "does not exist" in str(exc):
                return None
            raise _failure(exc, f"describe stack {name}", permission) from exc
        except BotoCoreError as exc:
            raise _failure(exc, f"describe stack {name}", permission) from exc
        if not stacks:
            return None
        stack = stacks[0]
        return StackDescription(
            name=stack["StackName"],
            stack_id=stack.get("StackId", ""),
            status=stack.get("StackStatus", ""),
            status_reason=stack.get("StackStatusReason", ""),
            parameters={p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])},
            outputs={o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])},
        )

    def stack_resources(self, name: str) -> list[StackResource]:
        permission = "cloudformation:ListStackResources"
        resources: list[StackResource] = []
        try:
            pages = (
                _client("cloudformation", self.region).get_paginator("list_stack_resources").paginate(StackName=name)
            )
            for page in pages:
                resources += [
                    StackResource(
                        logical_id=r.get("LogicalResourceId", ""),
                        resource_type=r.get("ResourceType", ""),
                        physical_id=r.get("PhysicalResourceId", ""),
                        status=r.get("ResourceStatus", ""),
                    )
                    for r in page.get("StackResourceSummaries", [])
                ]
        except (ClientError, BotoCoreError) as exc:
            raise _failure(exc, f"list the resources of stack {name}", permission) from exc
        return resources

    # --- Service Quotas -------------------------------------------------------------------------------------------

    def sagemaker_quotas(self) -> dict[str, Quota]:
        """Every SageMaker quota of the region by name: the applied values over the AWS defaults.

        The AWS docs say ListServiceQuotas "Lists the applied quota values ... If the applied quota value is not
        available for a quota, the quota is not retrieved", so the defaults (ListAWSDefaultServiceQuotas) fill in
        the quotas it leaves out.
        """
        defaults = self._quotas("list_aws_default_service_quotas", "servicequotas:ListAWSDefaultServiceQuotas")
        applied = self._quotas("list_service_quotas", "servicequotas:ListServiceQuotas")
        merged = {name: Quota(q.name, q.code, q.value, q.adjustable, applied=False) for name, q in defaults.items()}
        return merged | applied

    def _quotas(self, operation: str, permission: str) -> dict[str, Quota]:
        quotas: dict[str, Quota] = {}
        try:
            pages = _client("service-quotas", self.region).get_paginator(operation).paginate(ServiceCode="sagemaker")
            for page in pages:
                for item in page.get("Quotas", []):
                    if "QuotaName" in item and "Value" in item:
                        quotas[item["QuotaName"]] = Quota(
                            name=item["QuotaName"],
                            code=item.get("QuotaCode", ""),
                            value=float(item["Value"]),
                            adjustable=bool(item.get("Adjustable", True)),
                            applied=True,
                        )
        except (ClientError, BotoCoreError) as exc:
            raise _failure(exc, "list the SageMaker quotas", permission) from exc
        return quotas

    # --- ECR ------------------------------------------------------------------------------------------------------

    def image_state(
        self, repository: str, *, tag: str | None = None, digest: str | None = None, registry_id: str | None = None
    ) -> ImageState:
        """Whether ``repository`` holds the image with ``tag`` (or ``digest``)."""
        image_id = {"imageDigest": digest} if digest else {"imageTag": tag}
        extra = {"registryId": registry_id} if registry_id else {}
        try:
            _client("ecr", self.region).describe_images(repositoryName=repository, imageIds=[image_id], **extra)
        except ClientError as exc:
            code = _code(exc)
            if code == "ImageNotFoundException":
                return "missing"
            if code == "RepositoryNotFoundException":
                return "no-repository"
            raise _failure(exc, f"describe image {repository}:{tag or digest}", "ecr:DescribeImages") from exc
        except BotoCoreError as exc:
            raise _failure(exc, f"describe image {repository}:{tag or digest}", "ecr:DescribeImages") from exc
        return "present"

    # --- Bedrock --------------------------------------------------------------------------------------------------

    def custom_model_import_unavailable(self) -> str | None:
        """None when Bedrock Custom Model Import answers in the region (ListImportedModels), else why not.

        A refusal for lack of permission or a throttled/failed call raises: that says nothing about availability.
        """
        permission = "bedrock:ListImportedModels"
        try:
            _client("bedrock", self.region).list_imported_models(maxResults=1)
        except EndpointConnectionError as exc:
            return f"no Bedrock endpoint answers in {self.region} ({exc})"
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if _code(exc) in _DENIED or status == 403 or status == 429 or status >= 500 or "Throttl" in _code(exc):
                raise _failure(exc, "list imported Bedrock models", permission) from exc
            message = exc.response.get("Error", {}).get("Message", "")
            return f"ListImportedModels was refused in {self.region}: {_code(exc)} {message}".rstrip()
        except BotoCoreError as exc:
            raise _failure(exc, "list imported Bedrock models", permission) from exc
        return None

    # --- Secrets Manager ------------------------------------------------------------------------------------------

    def secret(self, arn: str) -> SecretDescription | None:
        """The secret's metadata (DescribeSecret: never its value); None when it does not exist."""
        match = _SECRET_ARN.match(arn)
        region = match["region"] if match else self.region
        permission = "secretsmanager:DescribeSecret"
        try:
            secret = _client("secretsmanager", region).describe_secret(SecretId=arn)
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                return None
            raise _failure(exc, f"describe secret {arn}", permission) from exc
        except BotoCoreError as exc:
            raise _failure(exc, f"describe secret {arn}", permission) from exc
        stages = secret.get("VersionIdsToStages") or {}
        return SecretDescription(
            arn=secret.get("ARN", arn),
            name=secret.get("Name", ""),
            deleted_date=secret.get("DeletedDate"),
            kms_key_id=secret.get("KmsKeyId"),
            has_current_version=any("AWSCURRENT" in labels for labels in stages.values()),
        )

    # --- S3 -------------------------------------------------------------------------------------------------------

    def bucket_region(self, bucket: str) -> str | None:
        """The bucket's region; None when the bucket does not exist."""
        try:
            location = _client("s3", self.region).get_bucket_location(Bucket=bucket).get("LocationConstraint")
        except ClientError as exc:
            if _code(exc) in _MISSING_BUCKET:
                return None
            raise _failure(exc, f"get the region of bucket {bucket}", "s3:GetBucketLocation") from exc
        except BotoCoreError as exc:
            raise _failure(exc, f"get the region of bucket {bucket}", "s3:GetBucketLocation") from exc
        # The AWS docs say GetBucketLocation returns a null LocationConstraint for us-east-1 (and "EU" for old
        # eu-west-1 buckets).
        return str({None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location))

    def read_object(self, bucket: str, key: str, max_bytes: int) -> bytes | None:
        """The object's first ``max_bytes`` bytes; None when it (or the bucket) does not exist."""
        try:
            body = _client("s3", self.region).get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes - 1}")
            return bytes(body["Body"].read())
        except ClientError as exc:
            if _code(exc) in _MISSING_OBJECT | _MISSING_BUCKET:
                return None
            if _code(exc) == "InvalidRange":  # an empty object has no byte 0
                return b""
            raise _failure(exc, f"read s3://{bucket}/{key}", "s3:GetObject") from exc
        except BotoCoreError as exc:
            raise _failure(exc, f"read s3://{bucket}/{key}", "s3:GetObject") from exc

    def object_sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        """Key -> size of every object under ``prefix`` (none when the bucket does not exist)."""
        sizes: dict[str, int] = {}
        try:
            pages = _client("s3", self.region).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                sizes |= {o["Key"]: int(o.get("Size", 0)) for o in page.get("Contents", []) if "Key" in o}
        except ClientError as exc:
            if _code(exc) in _MISSING_BUCKET:
                return {}
            raise _failure(exc, f"list s3://{bucket}/{prefix}", "s3:ListBucket") from exc
        except BotoCoreError as exc:
            raise _failure(exc, f"list s3://{bucket}/{prefix}", "s3:ListBucket") from exc
        return sizes
