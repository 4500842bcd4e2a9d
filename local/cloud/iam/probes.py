"""Permission checks a service makes with the caller's identity before it accepts a request.

Application Auto Scaling, on ``RegisterScalableTarget``, calls the target service and CloudWatch as the caller and
fails the request with a ``ValidationException`` naming the missing permission when one is denied (Application Auto
Scaling user guide, "Permissions validation for API calls on target resources"): ``cloudwatch:PutMetricAlarm`` and
``cloudwatch:DeleteAlarms`` without any parameters (so no alarm name and no tags), ``cloudwatch:DescribeAlarms`` with
one record; for a SageMaker endpoint variant its identity-based policy example lists ``sagemaker:DescribeEndpoint``,
``sagemaker:DescribeEndpointConfig`` and ``sagemaker:UpdateEndpointWeightsAndCapacities``. A call without a resource
name is evaluated here against ``*``, as that example grants it.
"""

from __future__ import annotations

from local.cloud.iam.actions import Call, Check


def _endpoint_arn(call: Call) -> str | None:
    """``endpoint/<name>/variant/<variant>`` (the ResourceId of a SageMaker variant) -> the endpoint's ARN."""
    parts = str(call.params.get("ResourceId", "")).split("/")
    if len(parts) >= 2 and parts[0] == "endpoint":
        return call.arn("sagemaker", f"endpoint/{parts[1]}")
    return None


def probe_checks(call: Call) -> list[Check]:
    """What the service checks as the caller before it handles ``call`` (none for most calls)."""
    if (call.service, call.operation) != ("application-autoscaling", "RegisterScalableTarget"):
        return []
    probes = [
        Check("cloudwatch:PutMetricAlarm", "*", existing=False),
        Check("cloudwatch:DescribeAlarms", "*", existing=False),
        Check("cloudwatch:DeleteAlarms", "*", existing=False),
    ]
    endpoint = _endpoint_arn(call) if call.params.get("ServiceNamespace") == "sagemaker" else None
    if endpoint is not None:
        probes += [
            Check("sagemaker:DescribeEndpoint", endpoint),
            Check("sagemaker:UpdateEndpointWeightsAndCapacities", endpoint),
        ]
    return probes
