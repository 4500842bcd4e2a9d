"""The local cloud refuses requests as AWS refuses them: the service model's constraints and documented rules.

botocore's client-side validation checks types, required members and ``min`` only. AWS's (Coral) services also
enforce the model's ``max`` length, ``pattern``, ``enum`` and numeric ``max`` before the operation runs, and moto
checks almost none of it, so a request the product would have refused on AWS succeeds locally. Within
``aws_request_checks()`` (``local_cloud()`` enters it) every botocore client call, including the ones moto's Step
Functions interpreter makes with its own boto3 clients for ``arn:aws:states:::sagemaker:*`` and ``aws-sdk:*`` tasks,
is checked after botocore's own validation and before it reaches moto; a violation raises the ``ClientError`` AWS
sends: HTTP 400, code ``ValidationException`` (``ValidationError`` for query-protocol services such as IAM and
CloudFormation, as they answer), message ``N validation error(s) detected: <violation>; <violation>``.

How AWS words a violation, from error messages quoted in public GitHub issues (what we rely on):

- ``Value 'health_and_personal_care_inter_title-2018-09-06-05-57-49-470' at 'trainingJobName' failed to satisfy
  constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9])*`` (aws/sagemaker-python-sdk
  #384): the value starts with characters the pattern matches, yet it is refused, so a pattern must match the
  WHOLE value (Java's ``Matcher.matches()``), not a prefix; the same in ``Value 'MOJ D&T Cybersecurity' at
  'tags.10.member.value' ... pattern: [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*`` (ministryofjustice/cloud-platform-environments
  #22667), whose pattern matches the empty prefix of any value. Patterns are Java regexes: the ``regex`` module
  (Unicode property classes) compiles them; Java's UTF-16 surrogate pairs (``\\uD800\\uDC00-\\uDBFF\\uDFFF``) are
  rewritten to code points first.
- ``2 validation errors detected: Value '...' at 'trainingJobName' failed to satisfy constraint: Member must satisfy
  regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}; Value '...' at 'trainingJobName' failed to satisfy
  constraint: Member must have length less than or equal to 63`` (zenml-io/zenml #1502): count, ``; `` between
  violations, one violation per failed constraint.
- Member paths are the member names in lowerCamelCase, dotted; a list element is ``<list>.<1-based index>.member``:
  ``resourceConfig.instanceType`` (aws-samples/aws-sagemaker-heart-disease-prediction #1),
  ``tags.6.member.value`` (SWO-GS/auto-tag #90), ``pipeline.stages.1.member.actions.1.member.configuration``.
- ``Member must satisfy enum value set: [ml.p2.xlarge, ml.m5.4xlarge, ...]`` (heart-disease #1: SageMaker enforces
  its instance-type enums); ``Value '0' at 'limit' failed to satisfy constraint: Member must have value greater than
  or equal to 1`` (boto/boto #1584: numbers are quoted too); ``Member must have value less than or equal to 43200``
  (boto/botocore #3337).
- A map whose keys or values fail is one violation at the map, listing every constraint of the key or value shape:
  ``Value '{AutoTag_ClientInfo=SourceIP: ..., AutoTag_Creator=...}' at 'tags' failed to satisfy constraint: Map value
  must satisfy constraint: [Member must have length less than or equal to 256, Member must have length greater than
  or equal to 0, Member must satisfy regular expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$]``
  (SWO-GS/auto-tag #77; ``Map keys must satisfy constraint: [...]`` in aws-amplify/amplify-backend #2290); a list of
  scalars likewise: ``Value '[]' at 'layers' failed to satisfy constraint: Member must satisfy constraint: [...]``
  (appleboy/lambda-action #83). Values print as Java prints them: ``{k=v, k2=v2}``, ``[a, b]``.
- A sensitive member's value is not printed: ``Value at 'environment.variables' failed to satisfy constraint``.

Not emulated, for want of evidence: truncation of long values (none of the messages found shows AWS shortening a
value, so values print whole); the order of several violations (ours: members in model order; per member: pattern,
length, value range, enum); paths inside a map's structure values (ours: ``<map>.<key>``). S3 is not checked: it is
no Coral service and answers its own errors (``InvalidArgument``, ``KeyTooLongError``), not these. Resources that
moto's CloudFormation creates from the template are not checked (moto creates them without a client call).

Enums come from this botocore's model: an instance type newer than the model would be refused here though AWS takes
it (aws/aws-sdk-go #5229 shows SDK enums lagging the service); update botocore rather than loosen the check.

Documented rules no shape expresses (``DOCUMENTED_RULES``, each with its source) are checked when the model's
constraints pass (Coral validates the model before the operation's own checks run); their wording is ours, AWS
publishes none:

- SageMaker ``CreateTrainingJob`` ``ResourceConfig.VolumeKmsKeyId`` (and its ``InstanceGroups``),
  ``CreateProcessingJob`` ``ProcessingResources.ClusterConfig.VolumeKmsKeyId`` and ``CreateTransformJob``
  ``TransformResources.VolumeKmsKeyId``: the API reference (botocore's documentation of those members): "Certain
  Nitro-based instances include local storage ... You can't request a VolumeKmsKeyId when using an instance type with
  local storage." The families are ``LOCAL_STORAGE_FAMILIES``.
- SageMaker ``Tags`` (every operation that takes them): a key may not start with ``aws:``. SageMaker's ``Tag`` refers
  to "Tagging AWS resources" (AWS General Reference), which says "Do not use aws:, AWS:, or any upper or lowercase
  combination of such as a prefix ... it is reserved for AWS use"; SageMaker answers "System prefix 'aws:' reserved
  for AWS usage in tag key: aws:cloudformation:stack-name" (aws/sagemaker-python-sdk #1301). Values are not checked:
  no service answer refusing an ``aws:`` value was found.
- ``CreateModelPackage`` ``CustomerMetadataProperties`` needs no rule of its own: its map size (1-50), key (1-128) and
  value (1-256) lengths and patterns are in the model, so ``incoming/support (v2).jsonl`` (parentheses) is refused
  by the generic check.
- ``CreateEndpointConfig``: the fields the product sets (variant and model names, instance type, counts,
  ``ModelDataDownloadTimeoutInSeconds`` / ``ContainerStartupHealthCheckTimeoutInSeconds`` 60-3600) are all model
  constraints. ``KmsKeyId`` with local-storage instances is NOT refused: the current API reference says "If any of
  the models that you specify in the ProductionVariants parameter use nitro-based instances with local storage, the
  KmsKeyId parameter does not encrypt instance local storage" (older versions said the call fails).
"""

from __future__ import annotations

import datetime
import functools
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import regex  # type: ignore[import-untyped]  # no stubs published with it
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

# Services that do not answer Coral's ValidationException (see the module docstring).
UNCHECKED_SERVICES = frozenset({"s3"})

# SageMaker ML instance families with local NVMe instance storage (no EBS volume, so no VolumeKmsKeyId), each with
# the AWS documentation it comes from. "d" families: Amazon EC2 Instance Types guide, "Instance type naming
# conventions" ("d - Instance store volumes"), and the SageMaker Python SDK (aws/sagemaker-python-sdk,
# sagemaker.utils.volume_size_supported: "Any instance type with a 'd' in the instance family (i.e. c5d, p4d, etc) +
# g5 does not support attaching an EBS volume"). Others: the EC2 Instance Types guide's instance store
# specifications (docs.aws.amazon.com/ec2/latest/instancetypes/ac.html#ac_instance-store for accelerated computing,
# so.html for storage optimized), and the SageMaker developer guide ("ML instance families with the NVMe-type instance
# storage include ml.p4d, ml.g4dn, and ml.g5", model-train-storage-tips-considerations).
_EC2_NAMING = "EC2 Instance Types guide, instance type naming conventions: 'd' = instance store volumes"
_EC2_ACCELERATED = "EC2 Instance Types guide, accelerated computing, instance store specifications (NVMe SSD)"
LOCAL_STORAGE_FAMILIES: Mapping[str, str] = {
    # "d": instance store volumes
    "c5d": _EC2_NAMING,
    "c6gd": _EC2_NAMING,
    "c6id": _EC2_NAMING,
    "m5d": _EC2_NAMING,
    "m6gd": _EC2_NAMING,
    "m6id": _EC2_NAMING,
    "r5d": _EC2_NAMING,
    "r6gd": _EC2_NAMING,
    "r6id": _EC2_NAMING,
    "r7gd": _EC2_NAMING,
    "g4dn": _EC2_NAMING + "; SageMaker developer guide names ml.g4dn",
    "p3dn": _EC2_NAMING,
    "p4d": _EC2_NAMING + "; SageMaker developer guide names ml.p4d",
    "p4de": _EC2_NAMING,
    # NVMe instance store without the "d" in the name
    "g5": _EC2_ACCELERATED + "; SageMaker developer guide names ml.g5; SageMaker Python SDK names g5",
    "g6": _EC2_ACCELERATED,
    "g6e": _EC2_ACCELERATED,
    "gr6": _EC2_ACCELERATED,
    "p5": _EC2_ACCELERATED,
    "p5e": _EC2_ACCELERATED,
    "p5en": _EC2_ACCELERATED,
    "p6-b200": _EC2_ACCELERATED,
    "dl1": _EC2_ACCELERATED,
    "trn1": _EC2_ACCELERATED,
    "trn1n": _EC2_ACCELERATED,
    "trn2": _EC2_ACCELERATED,
    "i3en": "EC2 Instance Types guide, storage optimized, instance store specifications (NVMe SSD)",
    # Left out for want of an AWS source on their storage: p6-b300, p6e-gb200, g7, g7e (newer than what we found).
    # EBS-only (no instance store in the EC2 specifications): c5n, inf1, inf2, and every family not listed.
}
_INSTANCE_FAMILY = re.compile(r"^ml\.(?P<family>[a-z0-9-]+)\.[a-z0-9-]+$")


def has_local_storage(instance_type: str) -> bool:
    """True when the ML instance type (``ml.g5.2xlarge``) comes with NVMe instance storage instead of an EBS
    volume, per ``LOCAL_STORAGE_FAMILIES``."""
    match = _INSTANCE_FAMILY.match(instance_type)
    return match is not None and match["family"] in LOCAL_STORAGE_FAMILIES


@dataclass(frozen=True)
class Violation:
    """One failed constraint, worded as AWS words it. ``value`` is None for a sensitive member (not printed)."""

    path: str
    value: str | None
    constraint: str

    def __str__(self) -> str:
        shown = "Value" if self.value is None else f"Value '{self.value}'"
        return f"{shown} at '{self.path}' failed to satisfy constraint: {self.constraint}"


def validation_message(violations: list[Violation]) -> str:
    """``1 validation error detected: ...`` / ``N validation errors detected: ...; ...``, as AWS sends it."""
    count = len(violations)
    noun = "error" if count == 1 else "errors"
    return f"{count} validation {noun} detected: " + "; ".join(str(violation) for violation in violations)


def validation_error(operation: OperationModel, message: str) -> ClientError:
    """The ``ClientError`` botocore raises for AWS's HTTP 400 validation answer to ``operation``."""
    metadata = operation.service_model.metadata
    query = metadata.get("protocol") == "query" or "awsQueryCompatible" in metadata
    response: Any = {
        "Error": {"Code": "ValidationError" if query else "ValidationException", "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": 400, "RequestId": str(uuid.uuid4()), "HTTPHeaders": {}},
    }
    return ClientError(response, operation.name)


# ----------------------------------------------------------------------------------------------------- the model


@functools.cache
def _compiled(pattern: str) -> regex.Pattern[str]:
    # Java strings are UTF-16: a supplementary character is a surrogate pair, which Python's str has no use for.
    def code_point(match: re.Match[str]) -> str:
        high, low = int(match[1], 16), int(match[2], 16)
        return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"

    translated = re.sub(r"\\u(D[89AB][0-9A-Fa-f]{2})\\u(D[C-Fc-f][0-9A-Fa-f]{2})", code_point, pattern)
    return regex.compile(translated)


def _member_path(parent: str, name: str) -> str:
    segment = name[:1].lower() + name[1:]
    return f"{parent}.{segment}" if parent else segment


def _render(value: Any) -> str:
    """A value as Java's ``toString`` shows it in AWS's messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_render(key)}={_render(item)}" for key, item in value.items()) + "}"
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


def _sensitive(shape: Shape) -> bool:
    if shape.metadata.get("sensitive"):
        return True
    if isinstance(shape, ListShape):
        return _sensitive(shape.member)
    if isinstance(shape, MapShape):
        return _sensitive(shape.key) or _sensitive(shape.value)
    return False


def _constraints(shape: Shape) -> list[str]:
    """Every constraint of a scalar shape that AWS lists in a ``[...]`` for a map's keys/values or a list's
    members, in the order AWS lists them (length max, length min, pattern)."""
    meta = shape.metadata
    texts: list[str] = []
    if shape.type_name in ("string", "blob"):
        if "max" in meta:
            texts.append(f"Member must have length less than or equal to {meta['max']}")
        if "min" in meta:
            texts.append(f"Member must have length greater than or equal to {meta['min']}")
        if "pattern" in meta:
            texts.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
        if _enum(shape):
            texts.append(f"Member must satisfy enum value set: [{', '.join(_enum(shape))}]")
    elif shape.type_name in ("integer", "long", "float", "double"):
        if "max" in meta:
            texts.append(f"Member must have value less than or equal to {meta['max']}")
        if "min" in meta:
            texts.append(f"Member must have value greater than or equal to {meta['min']}")
    return texts


def _failures(shape: Shape, value: Any) -> list[str]:
    """The constraints of ``shape`` that ``value`` fails (for scalars: pattern, length, value range, enum; for
    lists and maps: their own size). A value of the wrong type is botocore's to refuse, not ours."""
    meta = shape.metadata
    failed: list[str] = []
    kind = shape.type_name
    if kind == "string" and isinstance(value, str):
        if "pattern" in meta and _compiled(meta["pattern"]).fullmatch(value) is None:
            failed.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    if (kind in ("string", "list", "map") and isinstance(value, str | list | tuple | Mapping)) or (
        kind == "blob" and isinstance(value, bytes | bytearray)
    ):
        # Java measures a string in UTF-16 code units (a character outside the BMP counts 2), as AWS's services do.
        length = len(value.encode("utf-16-le")) // 2 if isinstance(value, str) else len(value)
        if "max" in meta and length > meta["max"]:
            failed.append(f"Member must have length less than or equal to {meta['max']}")
        if "min" in meta and length < meta["min"]:
            failed.append(f"Member must have length greater than or equal to {meta['min']}")
    if (
        kind in ("integer", "long", "float", "double")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ):
        if "max" in meta and value > meta["max"]:
            failed.append(f"Member must have value less than or equal to {meta['max']}")
        if "min" in meta and value < meta["min"]:
            failed.append(f"Member must have value greater than or equal to {meta['min']}")
    if kind == "string" and isinstance(value, str) and _enum(shape) and value not in _enum(shape):
        failed.append(f"Member must satisfy enum value set: [{', '.join(_enum(shape))}]")
    return failed


def _enum(shape: Shape) -> list[str]:
    return list(shape.metadata.get("enum", []))


def _is_container(shape: Shape) -> bool:
    return isinstance(shape, StructureShape | ListShape | MapShape)


def _check(shape: Shape, value: Any, path: str, found: list[Violation]) -> None:
    shown = None if _sensitive(shape) else _render(value)
    found.extend(Violation(path, shown, text) for text in _failures(shape, value))
    if isinstance(shape, StructureShape) and isinstance(value, Mapping):
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                _check(member, value[name], _member_path(path, name), found)
    elif isinstance(shape, ListShape) and isinstance(value, list | tuple):
        _check_list(shape, value, path, shown, found)
    elif isinstance(shape, MapShape) and isinstance(value, Mapping):
        _check_map(shape, value, path, shown, found)


def _check_list(
    shape: ListShape, value: list[Any] | tuple[Any, ...], path: str, shown: str | None, found: list[Violation]
) -> None:
    if _is_container(shape.member):
        for index, item in enumerate(value, start=1):
            _check(shape.member, item, f"{path}.{index}.member", found)
    elif any(_failures(shape.member, item) for item in value):
        listed = ", ".join(_constraints(shape.member))
        found.append(Violation(path, shown, f"Member must satisfy constraint: [{listed}]"))


def _check_map(
    shape: MapShape, value: Mapping[Any, Any], path: str, shown: str | None, found: list[Violation]
) -> None:
    if any(_failures(shape.key, key) for key in value):
        listed = ", ".join(_constraints(shape.key))
        found.append(Violation(path, shown, f"Map keys must satisfy constraint: [{listed}]"))
    if _is_container(shape.value):
        for key, item in value.items():
            _check(shape.value, item, f"{path}.{key}", found)
    elif any(_failures(shape.value, item) for item in value.values()):
        listed = ", ".join(_constraints(shape.value))
        found.append(Violation(path, shown, f"Map value must satisfy constraint: [{listed}]"))


def model_violations(operation: OperationModel, params: Mapping[str, Any]) -> list[Violation]:
    """Every constraint of ``operation``'s input model that ``params`` (unserialised, as passed to the client)
    fails, recursively through structures, lists and maps."""
    found: list[Violation] = []
    if operation.input_shape is not None:
        _check(operation.input_shape, params, "", found)
    return found


# ------------------------------------------------------------------------------------------- documented rules


def _volume_kms_on_local_storage(resources: Any, what: str) -> str | None:
    if not isinstance(resources, Mapping) or not resources.get("VolumeKmsKeyId"):
        return None
    groups = resources.get("InstanceGroups") or []
    types = [resources.get("InstanceType")] + [group.get("InstanceType") for group in groups]
    for instance_type in types:
        if isinstance(instance_type, str) and has_local_storage(instance_type):
            return (
                f"{what}.VolumeKmsKeyId cannot be specified for instance type {instance_type}: it has local instance "
                "storage, which is encrypted by a hardware module on the instance"
            )
    return None


def _training_volume_kms(params: Mapping[str, Any]) -> str | None:
    return _volume_kms_on_local_storage(params.get("ResourceConfig"), "ResourceConfig")


def _processing_volume_kms(params: Mapping[str, Any]) -> str | None:
    cluster = (params.get("ProcessingResources") or {}).get("ClusterConfig")
    return _volume_kms_on_local_storage(cluster, "ProcessingResources.ClusterConfig")


def _transform_volume_kms(params: Mapping[str, Any]) -> str | None:
    return _volume_kms_on_local_storage(params.get("TransformResources"), "TransformResources")


def _reserved_tag_prefix(params: Mapping[str, Any]) -> str | None:
    tags = params.get("Tags")
    keys = (
        list(tags) if isinstance(tags, Mapping) else [tag.get("Key") for tag in tags or [] if isinstance(tag, Mapping)]
    )
    for key in keys:
        if isinstance(key, str) and key.lower().startswith("aws:"):
            return f"System prefix 'aws:' reserved for AWS usage in tag key: {key}"
    return None


Rule = Callable[[Mapping[str, Any]], str | None]
# (service, operation or "*") -> rules; each returns AWS's refusal message, or None. Sources: the module docstring.
DOCUMENTED_RULES: Mapping[tuple[str, str], tuple[Rule, ...]] = {
    ("sagemaker", "CreateTrainingJob"): (_training_volume_kms,),
    ("sagemaker", "CreateProcessingJob"): (_processing_volume_kms,),
    ("sagemaker", "CreateTransformJob"): (_transform_volume_kms,),
    ("sagemaker", "*"): (_reserved_tag_prefix,),
}


def documented_rule_refusals(operation: OperationModel, params: Mapping[str, Any]) -> list[str]:
    """The messages of every documented rule (``DOCUMENTED_RULES``) that refuses ``params``."""
    service = operation.service_model.service_name
    rules = DOCUMENTED_RULES.get((service, operation.name), ()) + DOCUMENTED_RULES.get((service, "*"), ())
    return [message for rule in rules if (message := rule(params)) is not None]


def check_request(operation: OperationModel, params: Mapping[str, Any]) -> None:
    """Raise the ``ClientError`` AWS answers when it refuses ``params`` for ``operation``: the model's constraints
    first (all violations in one message), then the first documented rule that refuses them."""
    if operation.service_model.service_name in UNCHECKED_SERVICES:
        return
    violations = model_violations(operation, params)
    if violations:
        raise validation_error(operation, validation_message(violations))
    refusals = documented_rule_refusals(operation, params)
    if refusals:
        raise validation_error(operation, refusals[0])


# ------------------------------------------------------------------------------------------------------ the hook


@contextmanager
def aws_request_checks() -> Iterator[None]:
    """Within this block every botocore client call (any client, whenever created, in any thread) is checked by
    ``check_request`` after botocore's own parameter validation and before anything is sent: botocore's
    ``BaseClient._convert_to_request_dict`` serialises (and validates) every request of ``_make_api_call``."""
    original = getattr(BaseClient, "_convert_to_request_dict")  # noqa: B009  # private: mypy's stubs lack it

    def convert_and_check(
        self: BaseClient, api_params: dict[str, Any], operation_model: OperationModel, *args: Any, **kwargs: Any
    ) -> Any:
        request = original(self, api_params, operation_model, *args, **kwargs)  # botocore's ParamValidationError
        check_request(operation_model, api_params)
        return request

    with mock.patch.object(BaseClient, "_convert_to_request_dict", convert_and_check):
        yield
