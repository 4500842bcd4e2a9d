"""What every doctor check reads: the :class:`AccountReader` port (the only way to AWS), the stack's parameters the
checks need (:class:`StackSettings`), and the :class:`CheckContext` a check receives."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tuneplane.adapters.account import ImageState, Quota, SecretDescription, StackDescription, StackResource

# Parameters of template.yaml the checks read; a stack without them is not (this version of) a tuneplane stack.
PARAMETERS = (
    "BaseModelS3Uri",
    "TrainingInstanceType",
    "FallbackTrainingInstanceTypes",
    "UseSpotTraining",
    "ProcessingInstanceType",
    "QuantizeEnabled",
    "DeployTarget",
    "EndpointInstanceType",
    "EndpointMinInstances",
    "EndpointMaxInstances",
    "ImageTag",
    "ServeImageUri",
    "SlackWebhookSecretArn",
    "JudgeEndpointUrl",
    "JudgeEndpointSecretArn",
)
_INSTANCE_TYPE = re.compile(r"ml\.[a-z0-9-]+\.[a-z0-9]+")


class AccountReader(Protocol):
    """The reads the doctor makes (``tuneplane.adapters.account.AwsAccount``)."""

    region: str

    def stack(self, name: str) -> StackDescription | None: ...

    def stack_resources(self, name: str) -> list[StackResource]: ...

    def sagemaker_quotas(self) -> Mapping[str, Quota]: ...

    def image_state(
        self, repository: str, *, tag: str | None = None, digest: str | None = None, registry_id: str | None = None
    ) -> ImageState: ...

    def custom_model_import_unavailable(self) -> str | None: ...

    def secret(self, arn: str) -> SecretDescription | None: ...

    def bucket_region(self, bucket: str) -> str | None: ...

    def read_object(self, bucket: str, key: str, max_bytes: int) -> bytes | None: ...

    def object_sizes(self, bucket: str, prefix: str) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class StackSettings:
    """The stack's parameters that the checks need (as DescribeStacks reports them: strings)."""

    base_model_uri: str
    training_types: tuple[str, ...]
    spot: bool
    processing_type: str
    validation_type: str
    quantize: bool
    deploy_target: str
    endpoint_type: str
    endpoint_min: int
    endpoint_max: int
    image_tag: str
    serve_image_uri: str
    slack_secret_arn: str
    judge_endpoint_url: str
    judge_secret_arn: str

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> StackSettings:
        def get(name: str) -> str:
            return parameters.get(name, "").strip()

        # A CommaDelimitedList parameter is reported as one comma-separated string (moto: a Python list's repr), so
        # the types are picked out by the template's AllowedPattern of an instance type.
        fallbacks = _INSTANCE_TYPE.findall(get("FallbackTrainingInstanceTypes"))
        training = list(dict.fromkeys([t for t in [get("TrainingInstanceType"), *fallbacks] if t]))
        return cls(
            base_model_uri=get("BaseModelS3Uri"),
            training_types=tuple(training),
            spot=get("UseSpotTraining").lower() == "true",
            processing_type=get("ProcessingInstanceType"),
            validation_type=get("ValidationInstanceType"),
            quantize=get("QuantizeEnabled").lower() == "true",
            deploy_target=get("DeployTarget") or "none",
            endpoint_type=get("EndpointInstanceType"),
            endpoint_min=_int(get("EndpointMinInstances"), 1),
            endpoint_max=_int(get("EndpointMaxInstances"), 1),
            image_tag=get("ImageTag"),
            serve_image_uri=get("ServeImageUri"),
            slack_secret_arn=get("SlackWebhookSecretArn"),
            judge_endpoint_url=get("JudgeEndpointUrl"),
            judge_secret_arn=get("JudgeEndpointSecretArn"),
        )


def _int(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a check receives: the port, the stack as DescribeStacks reported it, and its parsed parameters."""

    account: AccountReader
    stack: StackDescription
    settings: StackSettings

    @property
    def region(self) -> str:
        return self.account.region
