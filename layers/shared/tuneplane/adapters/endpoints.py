"""SageMaker real-time endpoints: models, endpoint configs, endpoints, their alarms and autoscaling, and one
chat request through ``InvokeEndpoint``. Every call's ``ClientError`` becomes a ``DeployServiceError`` (or
``SmokeTestFailed`` for the model's own errors), so the state machine's Retry/Catch see our error names."""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING, Any, Final

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tuneplane.adapters.sagemaker import sagemaker_client as _sagemaker
from tuneplane.errors import DeployServiceError, SmokeTestFailed

if TYPE_CHECKING:
    from mypy_boto3_application_autoscaling import ApplicationAutoScalingClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_sagemaker_runtime import SageMakerRuntimeClient

VARIANT = "AllTraffic"


@cache
def _runtime() -> SageMakerRuntimeClient:
    # One smoke-test request: a cold model may take a while to answer, but never longer than Lambda allows.
    return boto3.client("sagemaker-runtime", config=Config(read_timeout=120, retries={"max_attempts": 2}))


@cache
def _autoscaling() -> ApplicationAutoScalingClient:
    return boto3.client("application-autoscaling")


@cache
def _cloudwatch() -> CloudWatchClient:
    return boto3.client("cloudwatch")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _exists_already(exc: ClientError) -> bool:
    return _code(exc) == "ValidationException" and "already exist" in str(exc)


def describe_endpoint(name: str) -> dict[str, Any] | None:
    """The endpoint's description, or None when no endpoint of that name exists."""
    try:
        return dict(_sagemaker().describe_endpoint(EndpointName=name))
    except ClientError as exc:
        if _code(exc) == "ValidationException" and "Could not find" in str(exc):
            return None
        raise DeployServiceError(f"describe endpoint {name}: {exc}") from exc


def create_model(
    name: str,
    image: str,
    role_arn: str,
    model_data_uri: str,
    environment: dict[str, str],
    tags: list[dict[str, str]],
    adapter_uri: str | None = None,
) -> None:
    """A model whose weights are an uncompressed S3 prefix mounted at /opt/ml/model (an adapter, if any, at
    /opt/ml/additional-model-data-sources/adapter). Network isolation: the container cannot reach the internet."""
    container: dict[str, Any] = {
        "Image": image,
        "ModelDataSource": {
            "S3DataSource": {"S3Uri": model_data_uri, "S3DataType": "S3Prefix", "CompressionType": "None"}
        },
        "Environment": environment,
    }
    if adapter_uri:  # the training job's model.tar.gz as it is, or an unpacked prefix
        packed = adapter_uri.endswith(".tar.gz")
        source = {
            "S3Uri": adapter_uri,
            "S3DataType": "S3Object" if packed else "S3Prefix",
            "CompressionType": "Gzip" if packed else "None",
        }
        container["AdditionalModelDataSources"] = [{"ChannelName": "adapter", "S3DataSource": source}]
    try:
        _sagemaker().create_model(
            ModelName=name,
            PrimaryContainer=container,  # type: ignore[arg-type]
            ExecutionRoleArn=role_arn,
            EnableNetworkIsolation=True,
            Tags=tags,  # type: ignore[arg-type]
        )
    except ClientError as exc:
        if not _exists_already(exc):  # a retried step: the same run made the same model
            raise DeployServiceError(f"create model {name}: {exc}") from exc


def create_endpoint_config(
    name: str, model_name: str, instance_type: str, instances: int, kms_key_arn: str | None, tags: list[dict[str, str]]
) -> None:
    variant: dict[str, Any] = {
        "VariantName": VARIANT,
        "ModelName": model_name,
        "InstanceType": instance_type,
        "InitialInstanceCount": instances,
        # Large models load slowly: give the container time before SageMaker declares it unhealthy.
        "ContainerStartupHealthCheckTimeoutInSeconds": 1800,
        "ModelDataDownloadTimeoutInSeconds": 1800,
    }
    extra: dict[str, Any] = {"KmsKeyId": kms_key_arn} if kms_key_arn else {}
    try:
        _sagemaker().create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[variant],  # type: ignore[list-item]
            Tags=tags,  # type: ignore[arg-type]
            **extra,
        )
    except ClientError as exc:
        if not _exists_already(exc):
            raise DeployServiceError(f"create endpoint config {name}: {exc}") from exc


def create_endpoint(name: str, config_name: str, tags: list[dict[str, str]]) -> None:
    try:
        _sagemaker().create_endpoint(EndpointName=name, EndpointConfigName=config_name, Tags=tags)  # type: ignore[arg-type]
    except ClientError as exc:
        raise DeployServiceError(f"create endpoint {name}: {exc}") from exc


def update_endpoint(name: str, config_name: str, deployment_config: dict[str, Any] | None) -> None:
    """Switch an endpoint to another config: blue/green, with the guardrails in ``deployment_config``."""
    extra: dict[str, Any] = {"DeploymentConfig": deployment_config} if deployment_config else {}
    try:
        _sagemaker().update_endpoint(EndpointName=name, EndpointConfigName=config_name, **extra)
    except ClientError as exc:
        raise DeployServiceError(f"update endpoint {name} to {config_name}: {exc}") from exc


def delete_endpoint(name: str) -> None:
    try:
        _sagemaker().delete_endpoint(EndpointName=name)
    except ClientError as exc:
        if describe_endpoint(name) is None:  # gone already
            return
        raise DeployServiceError(f"delete endpoint {name}: {exc}") from exc


def put_alarm(
    name: str,
    endpoint: str,
    metric: str,
    statistic: str,
    threshold: float,
    tags: list[dict[str, str]],
    actions: list[str] | None = None,
) -> None:
    """An alarm on one of the endpoint's AWS/SageMaker metrics, breaching for 2 of 2 minutes; ``actions`` (the stack's
    alarm topic) are told when it fires and when it clears, long after the deployment it guarded."""
    stat: dict[str, Any] = {"ExtendedStatistic": statistic} if statistic.startswith("p") else {"Statistic": statistic}
    try:
        _cloudwatch().put_metric_alarm(
            AlarmName=name,
            AlarmDescription=f"tuneplane: rolls back a deployment of {endpoint} when {metric} breaches",
            Namespace="AWS/SageMaker",
            MetricName=metric,
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}],
            Period=60,
            EvaluationPeriods=2,
            DatapointsToAlarm=2,
            Threshold=threshold,
            ComparisonOperator="GreaterThanThreshold",
            TreatMissingData="notBreaching",
            AlarmActions=actions or [],
            OKActions=actions or [],
            Tags=tags,  # type: ignore[arg-type]
            **stat,
        )
    except ClientError as exc:
        raise DeployServiceError(f"put alarm {name}: {exc}") from exc


SCALABLE_DIMENSION: Final = "sagemaker:variant:DesiredInstanceCount"


def stop_scaling(endpoint: str) -> bool:
    """Deregister the endpoint variant's scalable target (Application Auto Scaling deletes its scaling policies with
    it); False when none is registered."""
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    try:
        targets = _autoscaling().describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])
        if not targets["ScalableTargets"]:
            return False
        _autoscaling().deregister_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        )
    except ClientError as exc:
        raise DeployServiceError(f"stop autoscaling of {endpoint}: {exc}") from exc
    return True


def endpoint_config_instance_type(config_name: str) -> str | None:
    """The instance type of an endpoint config's variant (None when it has none)."""
    try:
        variants = _sagemaker().describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    except ClientError as exc:
        raise DeployServiceError(f"describe endpoint config {config_name}: {exc}") from exc
    return next(
        (str(v["InstanceType"]) for v in variants if v.get("VariantName") == VARIANT and "InstanceType" in v), None
    )


def scale_between(
    endpoint: str, minimum: int, maximum: int, invocations_per_instance: float, tags: list[dict[str, str]]
) -> None:
    """Target tracking on invocations per instance; registering again updates the bounds. The scalable target
    carries the stack's tags: the Deploy function may change only targets that do."""
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    dimension: Final = SCALABLE_DIMENSION
    try:
        _autoscaling().register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=dimension,
            MinCapacity=minimum,
            MaxCapacity=maximum,
            Tags={tag["Key"]: tag["Value"] for tag in tags},
        )
        _autoscaling().put_scaling_policy(
            PolicyName=f"{endpoint}-invocations",
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=dimension,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": invocations_per_instance,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": 600,
                "ScaleOutCooldown": 120,
            },
        )
    except ClientError as exc:
        raise DeployServiceError(f"autoscaling of {endpoint}: {exc}") from exc


def chat(endpoint: str, messages: list[dict[str, str]], max_tokens: int, model: str | None = None) -> str:
    """One OpenAI-format chat completion through ``/invocations``; the answer's text. ``model`` names a LoRA
    adapter the server was started with (vLLM's ``--lora-modules``); without it the base model answers."""
    body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    if model:
        body["model"] = model
    try:
        response = _runtime().invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Accept="application/json", Body=json.dumps(body)
        )
        document = json.loads(response["Body"].read())
    except ClientError as exc:
        if _code(exc) in {"ModelError", "ModelNotReadyException", "ValidationError"}:
            raise SmokeTestFailed(f"{endpoint} did not answer: {exc}") from exc
        raise DeployServiceError(f"invoke endpoint {endpoint}: {exc}") from exc
    except (BotoCoreError, ValueError) as exc:
        raise SmokeTestFailed(f"{endpoint} did not answer with JSON: {exc}") from exc
    try:
        return str(document["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError) as exc:
        raise SmokeTestFailed(
            f"{endpoint} answered without choices[0].message.content: {str(document)[:200]}"
        ) from exc
