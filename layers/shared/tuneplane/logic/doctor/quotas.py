"""The doctor's **quota** check: the SageMaker quotas of the instance types the stack uses (training, spot or
on-demand as ``UseSpotTraining`` says, with the fallbacks; processing; the endpoint with ``DeployTarget=vllm``)."""

from __future__ import annotations

from collections.abc import Mapping

from tuneplane.adapters.account import Quota
from tuneplane.logic.doctor.context import CheckContext, StackSettings
from tuneplane.logic.doctor.report import Finding, Level


def check_quotas(context: CheckContext) -> list[Finding]:
    """Training (each type; an ERROR only when no type has quota, since a run moves on to the next type on a quota
    error), processing, and the endpoint with ``DeployTarget=vllm``."""
    settings, region = context.settings, context.region
    quotas = context.account.sagemaker_quotas()
    usage = "spot training job usage" if settings.spot else "training job usage"
    kind = "spot: UseSpotTraining=true uses the spot quota" if settings.spot else "on-demand: UseSpotTraining=false"
    training = [(itype, quotas.get(f"{itype} for {usage}")) for itype in settings.training_types]
    usable = [index for index, (_, quota) in enumerate(training) if quota is not None and quota.value >= 1]
    findings: list[Finding] = []
    for index, (itype, quota) in enumerate(training):
        role = "TrainingInstanceType" if index == 0 else "FallbackTrainingInstanceTypes"
        name = f"{itype} for {usage}"
        if quota is None:
            findings.append(_unknown_quota(name, itype, "training", region))
            continue
        if quota.value >= 1:
            findings.append(Finding(Level.OK, "quota", name, f"{_number(quota.value)} ({role}, {kind.split(':')[0]})"))
            continue
        later = [training[i][0] for i in usable if i > index]
        earlier = [training[i][0] for i in usable if i < index]
        if later:
            level, consequence = Level.WARN, f"a run that reaches it fails on it, then moves on to {later[0]}"
        elif earlier:
            level = Level.WARN
            consequence = f"a run reaches it only when {', '.join(earlier)} had no capacity, and then fails"
        else:
            level, consequence = (
                Level.ERROR,
                "no training instance type of the stack has quota: every run fails at Train",
            )
        findings.append(
            Finding(
                level, "quota", name, f"0 in {region} ({role}, {kind}): {consequence}", _increase(quota, 1, region)
            )
        )
    if settings.processing_type:
        findings.append(
            _simple_quota(
                quotas,
                f"{settings.processing_type} for processing job usage",
                settings.processing_type,
                "ProcessingInstanceType: the merge, quantize and evaluate jobs",
                region,
            )
        )
    if settings.validation_type and settings.validation_type != settings.processing_type:
        findings.append(
            _simple_quota(
                quotas,
                f"{settings.validation_type} for processing job usage",
                settings.validation_type,
                "ValidationInstanceType: the validation jobs of datasets beyond the Validate Lambda",
                region,
                fails_at="a dataset too large for the Validate Lambda fails at Validate",
                level=Level.WARN,  # most datasets never need it
            )
        )
    if settings.deploy_target == "vllm" and settings.endpoint_type:
        findings.append(_endpoint_quota(quotas, settings, region))
    return findings


def _simple_quota(
    quotas: Mapping[str, Quota],
    name: str,
    itype: str,
    role: str,
    region: str,
    fails_at: str = "every run fails at Merge",
    level: Level = Level.ERROR,
) -> Finding:
    quota = quotas.get(name)
    if quota is None:
        return _unknown_quota(name, itype, "processing", region)
    if quota.value >= 1:
        return Finding(Level.OK, "quota", name, f"{_number(quota.value)} ({role})")
    return Finding(level, "quota", name, f"0 in {region} ({role}): {fails_at}", _increase(quota, 1, region))


def _endpoint_quota(quotas: Mapping[str, Quota], settings: StackSettings, region: str) -> Finding:
    name = f"{settings.endpoint_type} for endpoint usage"
    quota = quotas.get(name)
    if quota is None:
        return _unknown_quota(name, settings.endpoint_type, "endpoints", region)
    wanted = 2 * settings.endpoint_max  # a blue/green update runs the new fleet beside the old one
    role = (
        f"EndpointInstanceType, DeployTarget=vllm; EndpointMinInstances={settings.endpoint_min}, "
        f"EndpointMaxInstances={settings.endpoint_max}"
    )
    if quota.value < settings.endpoint_min:
        return Finding(
            Level.ERROR,
            "quota",
            name,
            f"{_number(quota.value)} in {region} ({role}): below EndpointMinInstances, the Deploy stage cannot create "
            "the endpoint",
            _increase(quota, wanted, region),
        )
    if quota.value < wanted:
        return Finding(
            Level.WARN,
            "quota",
            name,
            f"{_number(quota.value)} ({role}): below {wanted}, twice EndpointMaxInstances, so a blue/green update "
            "(the new fleet beside the old one) or autoscaling can hit the quota",
            _increase(quota, wanted, region),
        )
    return Finding(Level.OK, "quota", name, f"{_number(quota.value)} ({role})")


def _unknown_quota(name: str, itype: str, what: str, region: str) -> Finding:
    return Finding(
        Level.WARN,
        "quota",
        name,
        f"SageMaker has no quota of that name in {region} (applied or default): {itype} may not be offered for "
        f"{what} there, or the type is misspelt",
        f"aws service-quotas list-service-quotas --service-code sagemaker --region {region} "
        f"--query \"Quotas[?contains(QuotaName, '{itype}')].[QuotaName,Value,QuotaCode]\"",
    )


def _increase(quota: Quota, desired: int, region: str) -> str:
    if not quota.adjustable:
        return "this quota is not adjustable: choose another instance type (sam deploy --parameter-overrides ...)"
    return (
        "request an increase: Service Quotas console, or `aws service-quotas request-service-quota-increase "
        f"--service-code sagemaker --quota-code {quota.code} --desired-value {desired} --region {region}`"
    )


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)
