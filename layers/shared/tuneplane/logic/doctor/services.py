"""The doctor's checks of the services a stack's settings depend on: **bedrock** (Custom Model Import answers in the
region, with ``DeployTarget=bedrock``) and **slack** (the ``SlackWebhookSecretArn`` secret exists, is not being
deleted and has a value; DescribeSecret only: the value itself is never read)."""

from __future__ import annotations

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


# --- Slack -------------------------------------------------------------------------------------------------------


def check_slack_secret(context: CheckContext) -> list[Finding]:
    """DescribeSecret only: the value is never read, so it cannot be printed."""
    arn = context.settings.slack_secret_arn
    if not arn:
        return [Finding(Level.OK, "slack", "SlackWebhookSecretArn", "empty: the stack has no Slack notifier")]
    secret = context.account.secret(arn)
    if secret is None:
        return [
            Finding(
                Level.ERROR,
                "slack",
                arn,
                "the secret does not exist: the Notify function cannot post anything",
                "create it (aws secretsmanager create-secret --name tuneplane/slack-webhook --secret-string "
                "<webhook-url>) and deploy its ARN: sam deploy --parameter-overrides SlackWebhookSecretArn=<arn>",
            )
        ]
    if secret.deleted_date is not None:
        return [
            Finding(
                Level.ERROR,
                "slack",
                arn,
                f"the secret is scheduled for deletion ({secret.deleted_date:%Y-%m-%d}): Secrets Manager refuses to "
                "return its value, so the Notify function fails",
                f"restore it: aws secretsmanager restore-secret --secret-id {arn}",
            )
        ]
    if not secret.has_current_version:
        return [
            Finding(
                Level.ERROR,
                "slack",
                arn,
                "the secret has no current value (no version labelled AWSCURRENT)",
                f"aws secretsmanager put-secret-value --secret-id {arn} --secret-string <webhook-url>",
            )
        ]
    if secret.arn != arn:
        return [
            Finding(
                Level.ERROR,
                "slack",
                arn,
                f"not the secret's full ARN ({secret.arn}): the Notify function may read only the ARN in the "
                "parameter, and IAM matches it against the full ARN",
                f"sam deploy --parameter-overrides SlackWebhookSecretArn={secret.arn}",
            )
        ]
    key = (
        f"; encrypted with {secret.kms_key_id}: its key policy must let the Notify role decrypt"
        if _custom_key(secret.kms_key_id)
        else ""
    )
    return [Finding(Level.OK, "slack", arn, f"exists and has a current value (not read){key}")]


def _custom_key(kms_key_id: str | None) -> bool:
    return bool(kms_key_id) and not str(kms_key_id).endswith("alias/aws/secretsmanager")
