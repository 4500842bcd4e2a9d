"""The doctor's checks of the services a stack's settings depend on: **bedrock** (Custom Model Import answers in the
region, with ``DeployTarget=bedrock``), **slack** and **judge** (the ``SlackWebhookSecretArn`` and
``JudgeEndpointSecretArn`` secrets exist in the stack's region, are not being deleted and have a value; DescribeSecret
only: the values themselves are never read)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneplane.logic.doctor.context import CheckContext
from tuneplane.logic.doctor.report import Finding, Level

# --- Bedrock -----------------------------------------------------------------------------------------------------


def check_bedrock(context: CheckContext) -> list[Finding]:
    target, region = context.settings.deploy_target, context.region
    subject = f"Custom Model Import in {region}"
    if target != "bedrock":
        return [
            Finding(
                Level.OK,
                "bedrock",
                subject,
                f"not needed (DeployTarget={target}; a dataset's sidecar deploy.target=bedrock would need it)",
            )
        ]
    why = context.account.custom_model_import_unavailable()
    if why is None:
        return [Finding(Level.OK, "bedrock", subject, "available (ListImportedModels answers; DeployTarget=bedrock)")]
    return [
        Finding(
            Level.ERROR,
            "bedrock",
            subject,
            f"not available, and DeployTarget=bedrock: {why}",
            "deploy the stack in a region that offers Bedrock Custom Model Import, or choose another target: "
            "sam deploy --parameter-overrides DeployTarget=vllm (or none)",
        )
    ]


# --- Secrets: the Slack webhook, the judge endpoint's key ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SecretUse:
    """Who reads a secret parameter's value, for the findings' words."""

    check: str
    parameter: str
    function: str  # the function whose role may read it
    fails: str  # what that function cannot do without it
    name: str  # a name to create it under
    value: str  # what its secret string is


_SLACK = _SecretUse(
    "slack", "SlackWebhookSecretArn", "Notify", "post anything", "tuneplane/slack-webhook", "webhook-url"
)
_JUDGE = _SecretUse("judge", "JudgeEndpointSecretArn", "Grade", "call the judge", "tuneplane/judge-key", "api-key")


def check_slack_secret(context: CheckContext) -> list[Finding]:
    """DescribeSecret only: the value is never read, so it cannot be printed."""
    arn = context.settings.slack_secret_arn
    if not arn:
        return [Finding(Level.OK, "slack", "SlackWebhookSecretArn", "empty: the stack has no Slack notifier")]
    return _secret_findings(context, _SLACK, arn)


def check_judge_secret(context: CheckContext) -> list[Finding]:
    """DescribeSecret only, as for Slack; a key without a JudgeEndpointUrl is never sent."""
    arn, url = context.settings.judge_secret_arn, context.settings.judge_endpoint_url
    if not arn:
        return [Finding(Level.OK, "judge", "JudgeEndpointSecretArn", "empty: no key is sent to a judge endpoint")]
    if not url:
        return [
            Finding(
                Level.WARN,
                "judge",
                arn,
                "JudgeEndpointSecretArn is set but JudgeEndpointUrl is empty: the key is never read nor sent (the "
                "Grade function's role may not read it either)",
                "sam deploy --parameter-overrides JudgeEndpointUrl=<https://.../v1>, or JudgeEndpointSecretArn=''",
            )
        ]
    return _secret_findings(context, _JUDGE, arn)


def _secret_findings(context: CheckContext, use: _SecretUse, arn: str) -> list[Finding]:
    secret = context.account.secret(arn)
    check, parameter = use.check, use.parameter
    if secret is None:
        return [
            Finding(
                Level.ERROR,
                check,
                arn,
                f"the secret does not exist: the {use.function} function cannot {use.fails}",
                f"create it (aws secretsmanager create-secret --name {use.name} --secret-string "
                f"<{use.value}>) and deploy its ARN: sam deploy --parameter-overrides {parameter}=<arn>",
            )
        ]
    if secret.deleted_date is not None:
        return [
            Finding(
                Level.ERROR,
                check,
                arn,
                f"the secret is scheduled for deletion ({secret.deleted_date:%Y-%m-%d}): Secrets Manager refuses to "
                f"return its value, so the {use.function} function fails",
                f"restore it: aws secretsmanager restore-secret --secret-id {arn}",
            )
        ]
    if not secret.has_current_version:
        return [
            Finding(
                Level.ERROR,
                check,
                arn,
                "the secret has no current value (no version labelled AWSCURRENT)",
                f"aws secretsmanager put-secret-value --secret-id {arn} --secret-string <{use.value}>",
            )
        ]
    if secret.arn != arn:
        return [
            Finding(
                Level.ERROR,
                check,
                arn,
                f"not the secret's full ARN ({secret.arn}): the {use.function} function may read only the ARN in the "
                "parameter, and IAM matches it against the full ARN",
                f"sam deploy --parameter-overrides {parameter}={secret.arn}",
            )
        ]
    region = arn.split(":")[3]
    if region != context.region:
        return [
            Finding(
                Level.ERROR,
                check,
                arn,
                f"the secret is in {region}, not in the stack's region {context.region}: the {use.function} function "
                "reads secrets in its own region, and its role may decrypt only through Secrets Manager there",
                f"create the secret in {context.region} (or replicate it there: aws secretsmanager "
                "replicate-secret-to-regions) and deploy that ARN: "
                f"sam deploy --parameter-overrides {parameter}=<arn>",
            )
        ]
    key = (
        f"; encrypted with {secret.kms_key_id}: its key policy must let the {use.function} role decrypt"
        if _custom_key(secret.kms_key_id)
        else ""
    )
    return [Finding(Level.OK, check, arn, f"exists and has a current value (not read){key}")]


def _custom_key(kms_key_id: str | None) -> bool:
    return bool(kms_key_id) and not str(kms_key_id).endswith("alias/aws/secretsmanager")
