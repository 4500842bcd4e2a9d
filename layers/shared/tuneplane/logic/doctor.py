"""`tuneplane doctor`: read-only checks of a deployed stack before its first run, each finding saying what to do.

The checks, in order (each runs even when an earlier one failed):

- **stack**: the stack exists in the region and is in a usable state;
- **quota**: the SageMaker quotas of the instance types the stack uses (training, spot or on-demand as
  ``UseSpotTraining`` says, with the fallbacks; processing; the endpoint with ``DeployTarget=vllm``);
- **image**: the stack's ECR repositories hold ``ImageTag`` (``make images`` pushes them); a ``ServeImageUri`` in
  this account and region is checked too, one elsewhere (the AWS vLLM image) is reported as not checked;
- **bedrock**: Custom Model Import answers in the region, with ``DeployTarget=bedrock``;
- **slack**: the ``SlackWebhookSecretArn`` secret exists, is not being deleted and has a value (DescribeSecret: the
  value itself is never read);
- **base-model**: ``BaseModelS3Uri`` holds the manifest ``tuneplane stage-model`` writes last
  (``tuneplane-model.json``) and every file it lists, with the listed size, in a bucket of the stack's region.

A check that cannot run (no permission, a service not answering) is a WARN that names the IAM action it needs.
Only the stack itself is a precondition: without its parameters no other check knows what to look at.

Pure: every AWS call goes through the :class:`AccountReader` port (``adapters/account.py`` on AWS, a fake or moto
in tests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

from tuneplane.adapters.account import ImageState, Quota, SecretDescription, StackDescription, StackResource
from tuneplane.errors import InvalidConfiguration, PermissionDenied, ServiceUnavailable
from tuneplane.logic.stage_model import MANIFEST_NAME, destination, format_size

EXIT_OK, EXIT_ERRORS = 0, 1
MANIFEST_MAX_BYTES = 4 * 1024 * 1024

# The template's ECR repositories (logical id -> `make images` stage name), in the order `make images` pushes them.
REPOSITORIES = {
    "TrainRepository": "train",
    "MergeRepository": "merge",
    "QuantizeRepository": "quantize",
    "EvaluateRepository": "evaluate",
    "ServeRepository": "serve",
}
ALL_STAGES = tuple(REPOSITORIES.values())
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
)
_USABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
_STILL_USABLE = {"UPDATE_ROLLBACK_COMPLETE"}  # the last update failed; the stack runs on its previous settings
_INSTANCE_TYPE = re.compile(r"ml\.[a-z0-9]+\.[a-z0-9]+")
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    check: str  # stack | quota | image | bedrock | slack | base-model
    subject: str  # what was looked at: a quota name, an image, a secret, an S3 URI
    message: str  # what was found
    fix: str = ""  # what to do ("" when nothing)


@dataclass(frozen=True, slots=True)
class DoctorReport:
    stack_name: str
    region: str
    stack_status: str | None  # None: the stack could not be read
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> int:
        return sum(f.level is Level.ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.level is Level.WARN for f in self.findings)

    @property
    def exit_code(self) -> int:
        return EXIT_ERRORS if self.errors else EXIT_OK


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
    quantize: bool
    deploy_target: str
    endpoint_type: str
    endpoint_min: int
    endpoint_max: int
    image_tag: str
    serve_image_uri: str
    slack_secret_arn: str

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
            quantize=get("QuantizeEnabled").lower() == "true",
            deploy_target=get("DeployTarget") or "none",
            endpoint_type=get("EndpointInstanceType"),
            endpoint_min=_int(get("EndpointMinInstances"), 1),
            endpoint_max=_int(get("EndpointMaxInstances"), 1),
            image_tag=get("ImageTag"),
            serve_image_uri=get("ServeImageUri"),
            slack_secret_arn=get("SlackWebhookSecretArn"),
        )


def _int(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class _Context:
    account: AccountReader
    stack: StackDescription
    settings: StackSettings

    @property
    def region(self) -> str:
        return self.account.region


# --- the run ---------------------------------------------------------------------------------------------------


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
            f"use credentials that may call {exc.permission} (and the other reads README.md lists for doctor)",
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
    context = _Context(account, stack, StackSettings.from_parameters(stack.parameters))
    findings = _stack_findings(stack)
    checks: Sequence[tuple[str, str, Callable[[_Context], list[Finding]]]] = (
        ("quota", "SageMaker quotas", check_quotas),
        ("image", "container images", check_images),
        ("bedrock", "Bedrock Custom Model Import", check_bedrock),
        ("slack", stack.parameters.get("SlackWebhookSecretArn") or "Slack webhook secret", check_slack_secret),
        ("base-model", stack.parameters.get("BaseModelS3Uri") or "base model", check_base_model),
    )
    for check, subject, run in checks:
        findings += _guarded(check, subject, run, context)
    return DoctorReport(stack.name, region, stack.status, tuple(findings))


def _guarded(check: str, subject: str, run: Callable[[_Context], list[Finding]], context: _Context) -> list[Finding]:
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


# --- quotas ------------------------------------------------------------------------------------------------------


def check_quotas(context: _Context) -> list[Finding]:
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
    if settings.deploy_target == "vllm" and settings.endpoint_type:
        findings.append(_endpoint_quota(quotas, settings, region))
    return findings


def _simple_quota(quotas: Mapping[str, Quota], name: str, itype: str, role: str, region: str) -> Finding:
    quota = quotas.get(name)
    if quota is None:
        return _unknown_quota(name, itype, "processing", region)
    if quota.value >= 1:
        return Finding(Level.OK, "quota", name, f"{_number(quota.value)} ({role})")
    return Finding(
        Level.ERROR, "quota", name, f"0 in {region} ({role}): every run fails at Merge", _increase(quota, 1, region)
    )


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


# --- images ------------------------------------------------------------------------------------------------------


def check_images(context: _Context) -> list[Finding]:
    """The stack's repositories at ``ImageTag``; the serving image wherever ``ServeImageUri`` points."""
    settings, stack, region = context.settings, context.stack, context.region
    resources = context.account.stack_resources(stack.name)
    repositories = {
        r.logical_id: r.physical_id
        for r in resources
        if r.resource_type == "AWS::ECR::Repository" and r.logical_id in REPOSITORIES
    }
    stages = [s for s in ALL_STAGES if s != "serve" or not settings.serve_image_uri]
    tag = settings.image_tag
    findings: list[Finding] = []
    missing: list[tuple[str, Finding]] = []  # (stage, finding without its fix)
    for logical_id, stage in REPOSITORIES.items():
        if stage not in stages:
            continue
        repository = repositories.get(logical_id)
        if not repository:
            findings.append(
                Finding(
                    Level.ERROR,
                    "image",
                    f"{stack.name}/{stage}",
                    f"the stack has no repository {logical_id}",
                    "deploy this version of template.yaml (sam build && sam deploy)",
                )
            )
            continue
        state = context.account.image_state(repository, tag=tag)
        subject = f"{repository}:{tag}"
        if state == "present":
            findings.append(Finding(Level.OK, "image", subject, f"present ({_image_use(stage)})"))
        elif state == "no-repository":
            findings.append(
                Finding(
                    Level.ERROR,
                    "image",
                    subject,
                    f"the repository {repository} of the stack's {logical_id} does not exist (deleted outside "
                    "CloudFormation?)",
                    "CloudFormation does not recreate what it believes exists: delete and deploy the stack again "
                    "(sam delete, sam deploy), or recreate the repository by hand with the template's settings",
                )
            )
        else:
            level = _missing_image_level(stage, settings)
            note = "" if level is Level.ERROR else f"; {_not_needed(stage, settings)}"
            missing.append(
                (stage, Finding(level, "image", subject, f"not found (ImageTag={tag}; {_image_use(stage)}{note})"))
            )
    if missing:
        fix = _make_images(stack.name, region, tag, [stage for stage, _ in missing])
        findings += [Finding(f.level, f.check, f.subject, f.message, fix) for _, f in missing]
    if settings.serve_image_uri:
        findings.append(_serve_image(context))
    return findings


def _image_use(stage: str) -> str:
    return {
        "train": "the Train stage's training jobs",
        "merge": "the Merge stage's processing jobs",
        "quantize": "the Quantize stage's processing jobs",
        "evaluate": "the Evaluate stage's processing jobs",
        "serve": "the vllm target's endpoint; the Register stage names it in every model package",
    }[stage]


def _not_needed(stage: str, settings: StackSettings) -> str:
    if stage == "quantize":
        return "not run while QuantizeEnabled=false"
    return f"DeployTarget={settings.deploy_target}: no endpoint runs it"


def _missing_image_level(stage: str, settings: StackSettings) -> Level:
    if stage == "quantize":
        return Level.ERROR if settings.quantize else Level.WARN
    if stage == "serve":  # the Register stage names it in every model package, the vllm target runs it
        return Level.ERROR if settings.deploy_target == "vllm" else Level.WARN
    return Level.ERROR


def _make_images(stack: str, region: str, tag: str, stages: list[str]) -> str:
    """`make images` for the missing stages only: it refuses to run when any of its STAGES' tags already exists."""
    command = f"make images STACK={stack} REGION={region} TAG={tag}"
    if sorted(stages) != sorted(ALL_STAGES):
        command += f' STAGES="{" ".join(stages)}"'
    return f"build and push them: {command}"


def _serve_image(context: _Context) -> Finding:
    settings, region = context.settings, context.region
    uri = settings.serve_image_uri
    level = _missing_image_level("serve", settings)
    match = _ECR_IMAGE.match(uri)
    if not match or match["account"] != context.stack.account_id or match["region"] != region:
        return Finding(
            Level.WARN,
            "image",
            uri,
            "ServeImageUri is in another account or registry: not checked (the AWS vLLM image lives in an AWS "
            "account; SageMaker pulls it itself)",
            "check that the tag exists for this region (containers/serve/README.md)",
        )
    state = context.account.image_state(
        match["repository"], tag=match["tag"] or "latest", digest=match["digest"], registry_id=match["account"]
    )
    if state == "present":
        return Finding(Level.OK, "image", uri, "present (ServeImageUri)")
    what = "not found" if state == "missing" else f"the repository {match['repository']} does not exist"
    return Finding(
        level,
        "image",
        uri,
        f"ServeImageUri: {what} ({_image_use('serve')})",
        "push it, or point the stack at an existing image: sam deploy --parameter-overrides ServeImageUri=<uri>",
    )


# --- Bedrock -----------------------------------------------------------------------------------------------------


def check_bedrock(context: _Context) -> list[Finding]:
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


def check_slack_secret(context: _Context) -> list[Finding]:
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


# --- base model --------------------------------------------------------------------------------------------------


def check_base_model(context: _Context) -> list[Finding]:
    """The manifest and every file it lists (names and sizes; hashes would mean reading GBs)."""
    uri, region = context.settings.base_model_uri, context.region
    stage_hint = f"tuneplane stage-model <hub-id-or-directory> {uri or 's3://<bucket>/<prefix>/'}"
    try:
        bucket, prefix = destination(uri)
    except InvalidConfiguration as exc:
        return [Finding(Level.ERROR, "base-model", uri or "BaseModelS3Uri", str(exc), f"stage it: {stage_hint}")]
    uri = f"s3://{bucket}/{prefix}"
    findings: list[Finding] = []
    try:  # often denied on a bucket of another account: the manifest is still worth checking
        bucket_region: str | None = context.account.bucket_region(bucket)
    except (PermissionDenied, ServiceUnavailable) as exc:
        bucket_region = region
        findings.append(
            Finding(
                Level.WARN,
                "base-model",
                uri,
                f"the bucket's region was not checked: {exc}",
                f"allow {exc.permission} to check it (SageMaker jobs read input only from their own region)",
            )
        )
    if bucket_region is None:
        return [
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"the bucket {bucket} does not exist",
                f"create a bucket in {region}, stage the model into it ({stage_hint}) and deploy its URI: "
                "sam deploy --parameter-overrides BaseModelS3Uri=s3://<bucket>/<prefix>/",
            )
        ]
    if bucket_region != region:
        # The AWS docs say of S3DataSource: "Your input bucket must be in the same AWS region as your training job."
        findings.append(
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"the bucket is in {bucket_region}, the stack in {region}: SageMaker jobs read their input only from "
                "a bucket in their own region",
                f"stage the model in a bucket in {region} and deploy its URI "
                "(sam deploy --parameter-overrides BaseModelS3Uri=...)",
            )
        )
    body = context.account.read_object(bucket, prefix + MANIFEST_NAME, MANIFEST_MAX_BYTES)
    if body is None:
        present = context.account.object_sizes(bucket, prefix)
        state = (
            f"the prefix holds {len(present)} object(s) but no {MANIFEST_NAME}: an unfinished copy, or one not made "
            "by tuneplane stage-model"
            if present
            else "the prefix is empty"
        )
        fix = f"stage it: {stage_hint}" + (" --overwrite" if present else "")
        return [*findings, Finding(Level.ERROR, "base-model", uri, f"not staged: {state}", fix)]
    files = _manifest_files(body)
    if files is None:
        return [
            *findings,
            Finding(
                Level.ERROR,
                "base-model",
                uri + MANIFEST_NAME,
                "not a manifest written by tuneplane stage-model (not JSON, or no list of files with sizes)",
                f"stage the model again: {stage_hint} --overwrite",
            ),
        ]
    manifest = json.loads(body)
    return [*findings, *_compare_files(uri, prefix, files, context.account.object_sizes(bucket, prefix), manifest)]


def _manifest_files(body: bytes) -> dict[str, int] | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list) or not files:
        return None
    result: dict[str, int] = {}
    for entry in files:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("size"), int)
        ):
            return None
        result[entry["name"]] = entry["size"]
    return result


def _compare_files(
    uri: str, prefix: str, files: Mapping[str, int], present: Mapping[str, int], manifest: Mapping[str, Any]
) -> list[Finding]:
    relative = {key[len(prefix) :]: size for key, size in present.items()}
    absent = sorted(name for name in files if name not in relative)
    wrong = sorted(name for name, size in files.items() if name in relative and relative[name] != size)
    extra = sorted(name for name in relative if name not in files and name != MANIFEST_NAME)
    stage_again = (
        f"stage the model again: tuneplane stage-model {manifest.get('source') or '<source>'} {uri} --overwrite"
    )
    findings: list[Finding] = []
    if absent:
        findings.append(
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"{len(absent)} of the {len(files)} files in {MANIFEST_NAME} are missing: {_some(absent)}",
                stage_again,
            )
        )
    if wrong:
        findings.append(
            Finding(
                Level.ERROR,
                "base-model",
                uri,
                f"{len(wrong)} file(s) differ in size from {MANIFEST_NAME}: "
                + _some([f"{n} ({relative[n]} bytes, manifest {files[n]})" for n in wrong]),
                stage_again,
            )
        )
    if extra:
        findings.append(
            Finding(
                Level.WARN,
                "base-model",
                uri,
                f"{len(extra)} object(s) not in {MANIFEST_NAME}, which SageMaker copies into every job too: "
                + _some(extra),
                stage_again + " (deletes objects that are not part of the model)",
            )
        )
    if not absent and not wrong:
        source = str(manifest.get("source") or "?")
        commit = manifest.get("commit")
        origin = f"{source}@{str(commit)[:12]}" if commit else source
        findings.insert(
            0,
            Finding(
                Level.OK,
                "base-model",
                uri,
                f"staged: {len(files)} files, {format_size(sum(files.values()))}, "
                f"{manifest.get('model_type') or 'model'} from {origin}",
            ),
        )
    return findings


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- output ------------------------------------------------------------------------------------------------------


def render_text(report: DoctorReport) -> str:
    """One line per finding (level, check, subject: what was found; what to do), then the counts."""
    status = f" ({report.stack_status})" if report.stack_status else ""
    lines = [f"tuneplane doctor: stack {report.stack_name} in {report.region}{status}"]
    for finding in report.findings:
        fix = f" -> {finding.fix}" if finding.fix else ""
        lines.append(f"{finding.level.value:<5}  {finding.check:<10}  {finding.subject}: {finding.message}{fix}")
    lines.append(f"{report.errors} error(s), {report.warnings} warning(s)")
    return "\n".join(lines)


def render_json(report: DoctorReport) -> str:
    document = {
        "stack": report.stack_name,
        "region": report.region,
        "stack_status": report.stack_status,
        "errors": report.errors,
        "warnings": report.warnings,
        "findings": [asdict(f) | {"level": f.level.value} for f in report.findings],
    }
    return json.dumps(document, indent=2)
