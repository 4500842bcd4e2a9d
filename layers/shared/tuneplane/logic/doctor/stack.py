"""The doctor's run: read the stack (the one precondition: without its parameters no other check knows what to look
at), report its state, then run every other check, each guarded so that one that cannot run is a WARN naming the IAM
action it needs and the next checks run all the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tuneplane.adapters.account import StackDescription
from tuneplane.errors import PermissionDenied, ServiceUnavailable
from tuneplane.logic.doctor.base_model import check_base_model
from tuneplane.logic.doctor.context import PARAMETERS, AccountReader, CheckContext, StackSettings
from tuneplane.logic.doctor.images import check_images
from tuneplane.logic.doctor.quotas import check_quotas
from tuneplane.logic.doctor.report import DoctorReport, Finding, Level
from tuneplane.logic.doctor.services import check_bedrock, check_judge_secret, check_slack_secret

_USABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
_STILL_USABLE = {"UPDATE_ROLLBACK_COMPLETE"}  # the last update failed; the stack runs on its previous settings


def diagnose(account: AccountReader, stack_name: str) -> DoctorReport:
    """Run every check against the stack ``stack_name`` in ``account.region``."""
    region = account.region
    try:
        stack = account.stack(stack_name)
    except (PermissionDenied, ServiceUnavailable) as exc:
        finding = Finding(
            Level.ERROR,
            "stack",
            stack_name,
            f"cannot read the stack, so nothing else can be checked: {exc}",
            f"use credentials that may call {exc.permission} "
            "(and the other reads docs/deploy-to-aws.md lists for doctor)",
        )
        return DoctorReport(stack_name, region, None, (finding,))
    if stack is None:
        finding = Finding(
            Level.ERROR,
            "stack",
            stack_name,
            f"no stack named {stack_name} in {region}",
            "deploy it first (sam build && sam deploy --guided), or pass the stack's --stack-name and --region",
        )
        return DoctorReport(stack_name, region, None, (finding,))
    context = CheckContext(account, stack, StackSettings.from_parameters(stack.parameters))
    findings = _stack_findings(stack)
    checks: Sequence[tuple[str, str, Callable[[CheckContext], list[Finding]]]] = (
        ("quota", "SageMaker quotas", check_quotas),
        ("image", "container images", check_images),
        ("bedrock", "Bedrock Custom Model Import", check_bedrock),
        ("slack", stack.parameters.get("SlackWebhookSecretArn") or "Slack webhook secret", check_slack_secret),
        ("judge", stack.parameters.get("JudgeEndpointSecretArn") or "judge endpoint key", check_judge_secret),
        ("base-model", stack.parameters.get("BaseModelS3Uri") or "base model", check_base_model),
    )
    for check, subject, run in checks:
        findings += _guarded(check, subject, run, context)
    return DoctorReport(stack.name, region, stack.status, tuple(findings))


def _guarded(
    check: str, subject: str, run: Callable[[CheckContext], list[Finding]], context: CheckContext
) -> list[Finding]:
    """The check's findings, or one WARN when it could not run (the next checks run all the same)."""
    try:
        return run(context)
    except PermissionDenied as exc:
        return [
            Finding(
                Level.WARN, check, subject, f"not checked, access denied: {exc}", f"allow {exc.permission} to check it"
            )
        ]
    except ServiceUnavailable as exc:
        return [
            Finding(
                Level.WARN,
                check,
                subject,
                f"not checked, the service did not answer: {exc}",
                f"run doctor again later (the call needs {exc.permission})",
            )
        ]


def _stack_findings(stack: StackDescription) -> list[Finding]:
    status = stack.status
    reason = f" ({stack.status_reason})" if stack.status_reason else ""
    if status in _USABLE:
        findings = [Finding(Level.OK, "stack", stack.name, status)]
    elif status in _STILL_USABLE:
        findings = [
            Finding(
                Level.WARN,
                "stack",
                stack.name,
                f"{status}: the last update failed and was rolled back, the stack runs on its previous settings"
                f"{reason}",
                "see the stack's events (aws cloudformation describe-stack-events), fix the cause, sam deploy again",
            )
        ]
    elif status.endswith("_IN_PROGRESS"):
        findings = [
            Finding(Level.WARN, "stack", stack.name, f"{status}{reason}", "run doctor again when the operation ends")
        ]
    else:
        findings = [
            Finding(
                Level.ERROR,
                "stack",
                stack.name,
                f"{status}: the stack is not usable{reason}",
                "see the stack's events (aws cloudformation describe-stack-events); a stack in ROLLBACK_COMPLETE "
                "must be deleted (sam delete) and deployed again",
            )
        ]
    missing = [p for p in PARAMETERS if p not in stack.parameters]
    if missing:
        findings.append(
            Finding(
                Level.ERROR,
                "stack",
                stack.name,
                f"the stack has no parameter {', '.join(missing)}: not a stack of this template.yaml "
                "(or of an older one)",
                "deploy this version of template.yaml (sam build && sam deploy), or check --stack-name",
            )
        )
    return findings
