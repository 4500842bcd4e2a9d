"""`tuneplane doctor`: the real template deployed into moto (local cloud), then each check against it.

moto's Service Quotas knows only the "vpc" service (moto/servicequotas/models.py), so the SageMaker quotas are
replaced at the adapter boundary (``AwsAccount.sagemaker_quotas``) in the doctor tests; the adapter's own quota
reading (pagination, applied values over the defaults) is tested against botocore's Stubber, which validates the
requests and responses against the service model. moto has no Bedrock ``ListImportedModels`` either (it raises
NotImplementedError), and no way to refuse a call for lack of permission without a full IAM setup: those answers
come from a Stubber on the adapter's cached client too.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber
from local.cloud import LocalDeployment, deploy
from local.cloud.template import TemplateError
from moto import mock_aws
from safetensors.numpy import save_file

from tuneplane.adapters import account
from tuneplane.adapters import s3 as s3_adapter
from tuneplane.adapters.account import AwsAccount, Quota, StackDescription
from tuneplane.cli import main
from tuneplane.errors import PermissionDenied
from tuneplane.logic import doctor
from tuneplane.logic.doctor import DoctorReport, Finding, Level

# moto's CloudFormation warns about the resource types it skips each time it looks at the stack (local/cloud/deploy.py)
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")

STACK = "tuneplane-doctor"
REGION = "us-east-1"
MODEL_BUCKET = "tuneplane-doctor-models"
MODEL_PREFIX = "base-models/tiny/"
MODEL_URI = f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}"
TAG = "0.1.0"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/doctor-secret-value"
STAGES = ("train", "merge", "quantize", "evaluate", "validate", "serve")
# Quota codes are made up: the tests look for the ones they set.
QUOTA_CODES = {
    "ml.g5.2xlarge for spot training job usage": "L-TEST0001",
    "ml.g5.2xlarge for training job usage": "L-TEST0002",
    "ml.g5.2xlarge for processing job usage": "L-TEST0003",
    "ml.g5.2xlarge for endpoint usage": "L-TEST0004",
    "ml.g6.2xlarge for spot training job usage": "L-TEST0005",
    "ml.m5.2xlarge for processing job usage": "L-TEST0006",
}
HEALTHY_QUOTAS = {name: 4.0 for name in QUOTA_CODES}


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        account._client.cache_clear()
        s3_adapter.s3_client.cache_clear()
        yield
    account._client.cache_clear()
    s3_adapter.s3_client.cache_clear()


@pytest.fixture
def model_dir(tmp_path: Path, base_model_dir: Path) -> Path:
    """The tiny base model (tokenizer, ChatML template, configs) with small random safetensors weights."""
    directory = tmp_path / "model"
    shutil.copytree(base_model_dir, directory)
    rng = np.random.default_rng(0)
    save_file({"lm_head.weight": rng.standard_normal((16, 8), dtype=np.float32)}, str(directory / "model.safetensors"))
    return directory


@pytest.fixture
def quotas(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """The SageMaker quotas the account reports (name -> value); a test changes them before running doctor."""
    values = dict(HEALTHY_QUOTAS)

    def sagemaker_quotas(self: AwsAccount) -> dict[str, Quota]:
        return {
            name: Quota(name=name, code=QUOTA_CODES[name], value=value, adjustable=True, applied=True)
            for name, value in values.items()
        }

    monkeypatch.setattr(AwsAccount, "sagemaker_quotas", sagemaker_quotas)
    return values


def _secret() -> str:
    client = boto3.client("secretsmanager", region_name=REGION)
    return str(client.create_secret(Name="tuneplane/slack-webhook", SecretString=WEBHOOK)["ARN"])


def _push_images(stack: str, stages: tuple[str, ...] = STAGES, tag: str = TAG) -> None:
    ecr = boto3.client("ecr", region_name=REGION)
    for stage in stages:
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": f"sha256:{stage:0>64}",
            },
            "layers": [],
        }
        ecr.put_image(repositoryName=f"{stack}/{stage}", imageManifest=json.dumps(manifest), imageTag=tag)


def _deployed(
    model_dir: Path, *, bucket: str = MODEL_BUCKET, bucket_region: str = REGION, **parameters: str
) -> LocalDeployment:
    """The tiny model staged with `tuneplane stage-model`, the Slack secret, the stack, and its five images."""
    s3 = boto3.client("s3", region_name=bucket_region)
    if bucket_region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": bucket_region})  # type: ignore[typeddict-item]
    model_uri = f"s3://{bucket}/{MODEL_PREFIX}"
    assert main(["stage-model", str(model_dir), model_uri]) == 0
    values = {"BaseModelS3Uri": model_uri, "SlackWebhookSecretArn": _secret(), **parameters}
    deployment = deploy(values, stack_name=STACK, region=REGION)
    _push_images(STACK)
    return deployment


def _run() -> DoctorReport:
    return doctor.diagnose(AwsAccount(REGION), STACK)


def _only(report: DoctorReport, check: str, subject_part: str = "") -> Finding:
    found = [f for f in report.findings if f.check == check and subject_part in f.subject]
    assert len(found) == 1, doctor.render_text(report)
    return found[0]


def _levels(report: DoctorReport) -> dict[str, set[Level]]:
    levels: dict[str, set[Level]] = {}
    for finding in report.findings:
        levels.setdefault(finding.check, set()).add(finding.level)
    return levels


# --- a healthy stack ---------------------------------------------------------------------------------------------


def test_a_healthy_stack_reports_every_check_ok(aws: None, quotas: dict[str, float], model_dir: Path) -> None:
    # GIVEN the real template deployed with a staged model, a Slack secret, its images pushed and quotas granted
    _deployed(model_dir)

    # WHEN doctor runs
    report = _run()

    # THEN every check ran and found nothing to fix
    assert _levels(report) == {
        check: {Level.OK} for check in ("stack", "quota", "image", "bedrock", "slack", "judge", "base-model")
    }, doctor.render_text(report)
    assert report.exit_code == 0
    # the spot quota is the one looked at (UseSpotTraining defaults to true), plus processing; no endpoint quota
    assert {f.subject for f in report.findings if f.check == "quota"} == {
        "ml.g5.2xlarge for spot training job usage",
        "ml.g5.2xlarge for processing job usage",
        "ml.m5.2xlarge for processing job usage",  # ValidationInstanceType: the validation jobs
    }
    assert len([f for f in report.findings if f.check == "image"]) == 6
    staged = _only(report, "base-model")
    assert staged.subject == MODEL_URI and "staged:" in staged.message and "llama" in staged.message


def test_the_secret_value_is_never_read_nor_printed(
    aws: None, quotas: dict[str, float], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a healthy stack whose Slack secret holds a webhook URL, and a record of every Secrets Manager call
    _deployed(model_dir)
    capsys.readouterr()
    calls: list[str] = []
    account._client("secretsmanager", REGION).meta.events.register(
        "before-call.secretsmanager", lambda model, **_: calls.append(model.name)
    )

    # WHEN doctor runs with both outputs
    assert main(["doctor", "--stack-name", STACK, "--region", REGION]) == 0
    assert main(["doctor", "--stack-name", STACK, "--region", REGION, "--json"]) == 0

    # THEN the secret was only described, and the URL appears nowhere
    assert calls == ["DescribeSecret", "DescribeSecret"]
    out = capsys.readouterr()
    assert WEBHOOK not in out.out + out.err


# --- quotas ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spot", "quota_name"),
    [("true", "ml.g5.2xlarge for spot training job usage"), ("false", "ml.g5.2xlarge for training job usage")],
)
def test_a_training_quota_of_zero_is_an_error_naming_the_quota_and_the_fix(
    aws: None, quotas: dict[str, float], model_dir: Path, spot: str, quota_name: str
) -> None:
    # GIVEN a stack without fallback types, and no quota for its training type (spot or on-demand as configured)
    _deployed(model_dir, UseSpotTraining=spot)
    quotas[quota_name] = 0.0

    # WHEN doctor runs
    report = _run()

    # THEN the quota is an error that names it and says how to raise it
    finding = _only(report, "quota", quota_name)
    assert finding.level is Level.ERROR
    assert "every run fails at Train" in finding.message
    assert "Service Quotas console" in finding.fix
    assert (
        f"aws service-quotas request-service-quota-increase --service-code sagemaker "
        f"--quota-code {QUOTA_CODES[quota_name]} --desired-value 1 --region {REGION}"
    ) in finding.fix
    assert report.exit_code == 1


def test_a_zero_training_quota_with_a_usable_fallback_is_a_warning(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN no spot quota for the primary training type, but some for the fallback type
    _deployed(model_dir, FallbackTrainingInstanceTypes="ml.g6.2xlarge")
    quotas["ml.g5.2xlarge for spot training job usage"] = 0.0

    # WHEN doctor runs
    report = _run()

    # THEN runs still train (on the fallback): a warning, and the fallback's quota is reported too
    primary = _only(report, "quota", "ml.g5.2xlarge for spot training")
    assert primary.level is Level.WARN and "ml.g6.2xlarge" in primary.message
    assert _only(report, "quota", "ml.g6.2xlarge").level is Level.OK
    assert report.exit_code == 0


def test_the_endpoint_quota_is_checked_against_twice_the_maximum_with_vllm(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN a vllm stack with up to 3 instances and an endpoint quota of 4 (a blue/green update needs 6)
    _deployed(model_dir, DeployTarget="vllm", EndpointMaxInstances="3")
    quotas["ml.g5.2xlarge for endpoint usage"] = 4.0

    # WHEN doctor runs, then again with no endpoint quota at all
    short = _only(_run(), "quota", "for endpoint usage")
    quotas["ml.g5.2xlarge for endpoint usage"] = 0.0
    zero = _only(_run(), "quota", "for endpoint usage")

    # THEN too little is a warning asking for 6, none an error
    assert short.level is Level.WARN and "--desired-value 6" in short.fix
    assert zero.level is Level.ERROR and "cannot create the endpoint" in zero.message


# --- images ------------------------------------------------------------------------------------------------------


def test_a_missing_image_says_to_push_just_that_stage(aws: None, quotas: dict[str, float], model_dir: Path) -> None:
    # GIVEN a stack whose merge image at ImageTag is gone
    _deployed(model_dir)
    boto3.client("ecr", region_name=REGION).batch_delete_image(
        repositoryName=f"{STACK}/merge", imageIds=[{"imageTag": TAG}]
    )

    # WHEN doctor runs
    report = _run()

    # THEN that image is an error whose fix pushes only the missing stage (make images refuses existing tags)
    finding = _only(report, "image", "/merge")
    assert finding.level is Level.ERROR
    assert finding.fix.endswith(f'make images STACK={STACK} REGION={REGION} TAG={TAG} STAGES="merge"')
    assert {f.level for f in report.findings if f.check == "image" and "/merge" not in f.subject} == {Level.OK}
    assert report.exit_code == 1


def test_images_of_another_tag_do_not_count(aws: None, quotas: dict[str, float], model_dir: Path) -> None:
    # GIVEN a stack deployed with ImageTag 0.2.0 while only 0.1.0 was pushed
    _deployed(model_dir, ImageTag="0.2.0")

    # WHEN doctor runs
    report = _run()

    # THEN the needed images are errors, the unused ones (quantize, serve with DeployTarget=none) warnings, and the
    # fix pushes all six at the stack's tag
    levels = {f.subject.split("/")[1]: f.level for f in report.findings if f.check == "image"}
    assert levels == {
        "train:0.2.0": Level.ERROR,
        "merge:0.2.0": Level.ERROR,
        "quantize:0.2.0": Level.WARN,
        "evaluate:0.2.0": Level.ERROR,
        "validate:0.2.0": Level.ERROR,
        "serve:0.2.0": Level.WARN,
    }
    fixes = {f.fix for f in report.findings if f.check == "image"}
    assert fixes == {f"build and push them: make images STACK={STACK} REGION={REGION} TAG=0.2.0"}


def test_a_serve_image_in_another_registry_is_reported_as_not_checked(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN ServeImageUri pointing at the AWS vLLM image (another account), and no serve image of our own
    dlc = "763104351884.dkr.ecr.us-east-1.amazonaws.com/vllm:0.9.2-gpu-py312"
    _deployed(model_dir, ServeImageUri=dlc, DeployTarget="vllm")
    boto3.client("ecr", region_name=REGION).batch_delete_image(
        repositoryName=f"{STACK}/serve", imageIds=[{"imageTag": TAG}]
    )

    # WHEN doctor runs
    report = _run()

    # THEN the DLC is a "not checked" warning and the stack's own serve repository is not looked at
    finding = _only(report, "image", "763104351884")
    assert finding.level is Level.WARN and "not checked" in finding.message
    assert not [f for f in report.findings if f.subject.endswith(f"/serve:{TAG}")]


# --- base model --------------------------------------------------------------------------------------------------


def test_a_missing_manifest_is_an_error_pointing_at_stage_model(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN a staged model whose manifest is gone (an interrupted copy looks like this)
    _deployed(model_dir)
    boto3.client("s3", region_name=REGION).delete_object(
        Bucket=MODEL_BUCKET, Key=MODEL_PREFIX + "tuneplane-model.json"
    )

    # WHEN doctor runs
    report = _run()

    # THEN the base model is not staged, and the fix re-stages over what is there
    finding = _only(report, "base-model")
    assert finding.level is Level.ERROR
    assert "no tuneplane-model.json" in finding.message
    assert finding.fix == f"stage it: tuneplane stage-model <hub-id-or-directory> {MODEL_URI} --overwrite"


def test_a_file_listed_in_the_manifest_but_missing_is_an_error(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN a staged model whose weights were deleted, and a stray object added
    _deployed(model_dir)
    s3 = boto3.client("s3", region_name=REGION)
    s3.delete_object(Bucket=MODEL_BUCKET, Key=MODEL_PREFIX + "model.safetensors")
    s3.put_object(Bucket=MODEL_BUCKET, Key=MODEL_PREFIX + "notes.txt", Body=b"x")

    # WHEN doctor runs
    report = _run()

    # THEN the missing file is an error naming it, the stray object a warning
    by_level = {f.level: f for f in report.findings if f.check == "base-model"}
    assert set(by_level) == {Level.ERROR, Level.WARN}
    assert "model.safetensors" in by_level[Level.ERROR].message
    assert "--overwrite" in by_level[Level.ERROR].fix
    assert "notes.txt" in by_level[Level.WARN].message


def test_a_base_model_bucket_in_another_region_is_an_error(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN a model staged completely, but in a bucket of another region than the stack's
    _deployed(model_dir, bucket="tuneplane-doctor-models-eu", bucket_region="eu-west-1")

    # WHEN doctor runs
    report = _run()

    # THEN the region is an error (SageMaker reads job input only from its own region); the copy itself is fine
    levels = {f.level: f for f in report.findings if f.check == "base-model"}
    assert set(levels) == {Level.ERROR, Level.OK}
    assert "eu-west-1" in levels[Level.ERROR].message and REGION in levels[Level.ERROR].fix


def test_a_bucket_region_that_cannot_be_read_still_checks_the_manifest(
    aws: None, quotas: dict[str, float], model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a model bucket whose region may not be read (usual for a bucket of another account), and no manifest
    _deployed(model_dir)
    boto3.client("s3", region_name=REGION).delete_object(
        Bucket=MODEL_BUCKET, Key=MODEL_PREFIX + "tuneplane-model.json"
    )

    def denied(self: AwsAccount, bucket: str) -> str:
        raise PermissionDenied(f"get the region of bucket {bucket}: AccessDenied", permission="s3:GetBucketLocation")

    monkeypatch.setattr(AwsAccount, "bucket_region", denied)

    # WHEN doctor runs
    report = _run()

    # THEN the region is a warning naming the permission, and the missing manifest is still found
    levels = {f.level: f for f in report.findings if f.check == "base-model"}
    assert set(levels) == {Level.WARN, Level.ERROR}
    assert "s3:GetBucketLocation" in levels[Level.WARN].fix
    assert "no tuneplane-model.json" in levels[Level.ERROR].message


# --- the Slack secret --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda c, arn: c.delete_secret(SecretId=arn, RecoveryWindowInDays=7), "scheduled for deletion"),
        (lambda c, arn: c.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True), "does not exist"),
    ],
    ids=["scheduled-for-deletion", "deleted"],
)
def test_an_unreadable_secret_is_an_error(
    aws: None, quotas: dict[str, float], model_dir: Path, break_it: Any, expected: str
) -> None:
    # GIVEN a stack whose Slack secret is being deleted, or is gone
    deployment = _deployed(model_dir)
    arn = deployment.parameters["SlackWebhookSecretArn"]
    break_it(boto3.client("secretsmanager", region_name=REGION), arn)

    # WHEN doctor runs
    report = _run()

    # THEN the secret is an error that says why, and what to do
    finding = _only(report, "slack")
    assert finding.level is Level.ERROR and expected in finding.message
    assert finding.fix
    assert report.exit_code == 1


def test_the_template_refuses_a_partial_secret_arn(aws: None) -> None:
    # GIVEN the secret's ARN without its random suffix (DescribeSecret would still find the secret)
    partial = _secret().rsplit("-", 1)[0]

    # WHEN the stack is deployed with it
    # THEN the template refuses it: the Notify role may read only that ARN, which IAM matches against the full one
    with pytest.raises(TemplateError, match="SlackWebhookSecretArn"):
        deploy({"BaseModelS3Uri": MODEL_URI, "SlackWebhookSecretArn": partial}, stack_name=STACK, region=REGION)


def test_a_partial_secret_arn_is_an_error(
    aws: None, quotas: dict[str, float], model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a stack whose SlackWebhookSecretArn is the secret's ARN without its random suffix (DescribeSecret still
    # finds it): template.yaml refuses such a value now, a stack deployed with an older template may still hold one
    full = _deployed(model_dir).parameters["SlackWebhookSecretArn"]
    partial = full.rsplit("-", 1)[0]
    describe = AwsAccount.stack

    def stack_with_partial_arn(self: AwsAccount, name: str) -> StackDescription | None:
        stack = describe(self, name)
        assert stack is not None
        return dataclasses.replace(stack, parameters={**stack.parameters, "SlackWebhookSecretArn": partial})

    monkeypatch.setattr(AwsAccount, "stack", stack_with_partial_arn)

    # WHEN doctor runs
    finding = _only(_run(), "slack")

    # THEN the Notify function's permission (on the parameter's ARN) would not match: an error giving the full ARN
    assert finding.level is Level.ERROR
    assert finding.fix == f"sam deploy --parameter-overrides SlackWebhookSecretArn={full}"


def test_a_check_that_is_denied_is_a_warning_and_the_others_still_run(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN a stack, and credentials that may not describe secrets (and a missing manifest after that check)
    _deployed(model_dir)
    boto3.client("s3", region_name=REGION).delete_object(
        Bucket=MODEL_BUCKET, Key=MODEL_PREFIX + "tuneplane-model.json"
    )
    with Stubber(account._client("secretsmanager", REGION)) as stub:
        stub.add_client_error("describe_secret", "AccessDeniedException", "not allowed", http_status_code=400)

        # WHEN doctor runs
        report = _run()

    # THEN the secret check is a warning naming the permission, and the base-model check still found its error
    finding = _only(report, "slack")
    assert finding.level is Level.WARN
    assert "secretsmanager:DescribeSecret" in finding.fix
    assert _only(report, "base-model").level is Level.ERROR


# --- the judge endpoint's key ------------------------------------------------------------------------------------

JUDGE_URL = "https://judge.example.com/v1"


def _judge_secret(region: str = REGION, *, deleted: bool = False) -> str:
    client = boto3.client("secretsmanager", region_name=region)
    arn = str(client.create_secret(Name="tuneplane/judge-key", SecretString="sk-doctor-judge-key")["ARN"])
    if deleted:
        client.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    return arn


@pytest.mark.parametrize(
    ("secret", "url", "level", "expected"),
    [
        (lambda: _judge_secret(), JUDGE_URL, Level.OK, "exists and has a current value (not read)"),
        (lambda: _judge_secret("eu-west-1"), JUDGE_URL, Level.ERROR, "in eu-west-1, not in the stack's region"),
        (lambda: _judge_secret(deleted=True), JUDGE_URL, Level.ERROR, "the Grade function cannot call the judge"),
        (lambda: _judge_secret(), "", Level.WARN, "JudgeEndpointUrl is empty: the key is never read nor sent"),
    ],
    ids=["in-region", "other-region", "deleted", "without-url"],
)
def test_the_judge_endpoint_key_is_described_in_the_stacks_region(
    aws: None, quotas: dict[str, float], model_dir: Path, secret: Any, url: str, level: Level, expected: str
) -> None:
    # GIVEN a stack whose JudgeEndpointSecretArn is a secret in its region, in another, gone, or without a URL
    arn = secret()
    _deployed(model_dir, JudgeEndpointUrl=url, JudgeEndpointSecretArn=arn)

    # WHEN doctor runs
    report = _run()

    # THEN the judge check says so, and what to do when it is not OK; the key itself is never printed
    finding = _only(report, "judge")
    assert (finding.level, finding.subject) == (level, arn), doctor.render_text(report)
    assert expected in finding.message
    assert bool(finding.fix) == (level is not Level.OK)
    assert "sk-doctor-judge-key" not in doctor.render_text(report)


# --- Bedrock -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "level"),
    [
        ({"modelSummaries": []}, Level.OK),
        (("ValidationException", 400), Level.ERROR),
        (("AccessDeniedException", 403), Level.WARN),
    ],
    ids=["available", "not-in-region", "denied"],
)
def test_custom_model_import_is_checked_with_the_bedrock_target(
    aws: None, quotas: dict[str, float], model_dir: Path, answer: Any, level: Level
) -> None:
    # GIVEN a bedrock stack, and Bedrock answering ListImportedModels (moto has no Custom Model Import: stubbed)
    _deployed(model_dir, DeployTarget="bedrock")
    with Stubber(account._client("bedrock", REGION)) as stub:
        if isinstance(answer, dict):
            stub.add_response("list_imported_models", answer, {"maxResults": 1})
        else:
            stub.add_client_error("list_imported_models", answer[0], "no", http_status_code=answer[1])

        # WHEN doctor runs
        finding = _only(_run(), "bedrock")

    # THEN it is available, unavailable (an error: the deploy would fail), or not checked (a warning)
    assert finding.level is level
    if level is Level.WARN:
        assert "bedrock:ListImportedModels" in finding.fix


# --- the stack ---------------------------------------------------------------------------------------------------


def test_a_missing_stack_is_an_error_and_nothing_else_is_checked(aws: None, quotas: dict[str, float]) -> None:
    # GIVEN no stack at all

    # WHEN doctor runs
    report = _run()

    # THEN one error, which says to deploy first
    assert [(f.level, f.check) for f in report.findings] == [(Level.ERROR, "stack")]
    assert "sam deploy" in report.findings[0].fix


@pytest.mark.parametrize(
    ("status", "level"),
    [
        ("UPDATE_COMPLETE", Level.OK),
        ("UPDATE_ROLLBACK_COMPLETE", Level.WARN),
        ("UPDATE_IN_PROGRESS", Level.WARN),
        ("ROLLBACK_COMPLETE", Level.ERROR),
        ("CREATE_FAILED", Level.ERROR),
    ],
)
def test_the_stack_status_decides_the_stack_finding(status: str, level: Level) -> None:
    # GIVEN a stack in that status, with every parameter the checks read
    stack = StackDescription(
        name=STACK,
        stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{STACK}/x",
        status=status,
        status_reason="",
        parameters=dict.fromkeys(doctor.PARAMETERS, ""),
        outputs={},
    )

    # WHEN its findings are made
    findings = doctor._stack_findings(stack)

    # THEN one finding, at the level the status deserves
    assert [(f.level, f.check) for f in findings] == [(level, "stack")]


def test_a_repository_deleted_outside_cloudformation_is_an_error(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN a stack whose train repository was deleted by hand
    _deployed(model_dir)
    boto3.client("ecr", region_name=REGION).delete_repository(repositoryName=f"{STACK}/train", force=True)

    # WHEN doctor runs
    finding = _only(_run(), "image", "/train")

    # THEN it is an error that says so
    assert finding.level is Level.ERROR and "does not exist" in finding.message


# --- the adapter's quota reading ---------------------------------------------------------------------------------


def test_the_adapter_merges_applied_quotas_over_the_defaults(aws: None) -> None:
    # GIVEN Service Quotas answering with two pages of defaults and one applied value (a new account's 0)
    def quota(name: str, code: str, value: float) -> dict[str, Any]:
        return {"ServiceCode": "sagemaker", "QuotaName": name, "QuotaCode": code, "Value": value, "Adjustable": True}

    spot = quota("ml.g5.2xlarge for spot training job usage", "L-A", 1.0)
    processing = quota("ml.g5.2xlarge for processing job usage", "L-B", 2.0)
    client = account._client("service-quotas", REGION)
    with Stubber(client) as stub:
        stub.add_response(
            "list_aws_default_service_quotas",
            {"Quotas": [spot], "NextToken": "page-2"},
            {"ServiceCode": "sagemaker"},
        )
        stub.add_response(
            "list_aws_default_service_quotas",
            {"Quotas": [processing]},
            {"ServiceCode": "sagemaker", "NextToken": "page-2"},
        )
        stub.add_response("list_service_quotas", {"Quotas": [spot | {"Value": 0.0}]}, {"ServiceCode": "sagemaker"})

        # WHEN the adapter reads the SageMaker quotas
        quotas = AwsAccount(REGION).sagemaker_quotas()
        stub.assert_no_pending_responses()

    # THEN the applied value wins, and the default fills in the quota ListServiceQuotas left out
    assert quotas["ml.g5.2xlarge for spot training job usage"] == Quota(
        "ml.g5.2xlarge for spot training job usage", "L-A", 0.0, True, applied=True
    )
    assert quotas["ml.g5.2xlarge for processing job usage"].value == 2.0
    assert quotas["ml.g5.2xlarge for processing job usage"].applied is False


def test_no_quota_for_the_validation_jobs_is_a_warning_naming_what_fails(
    aws: None, quotas: dict[str, float], model_dir: Path
) -> None:
    # GIVEN a stack whose ValidationInstanceType has no processing quota (the other quotas are fine)
    _deployed(model_dir)
    quotas["ml.m5.2xlarge for processing job usage"] = 0.0
    # WHEN doctor runs
    report = _run()
    # THEN it warns (most datasets never leave the Validate Lambda) and says which runs would fail, with the fix
    [finding] = [f for f in report.findings if f.subject == "ml.m5.2xlarge for processing job usage"]
    assert finding.level is Level.WARN and report.exit_code == 0
    assert "a dataset too large for the Validate Lambda fails at Validate" in finding.message
    assert finding.fix is not None and "L-TEST0006" in finding.fix


# --- the CLI -----------------------------------------------------------------------------------------------------


def test_the_cli_exits_1_on_an_error_and_prints_json(
    aws: None, quotas: dict[str, float], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a stack with no processing quota
    _deployed(model_dir)
    quotas["ml.g5.2xlarge for processing job usage"] = 0.0
    capsys.readouterr()

    # WHEN doctor runs with --json, then as text
    json_code = main(["doctor", "--stack-name", STACK, "--region", REGION, "--json"])
    document = json.loads(capsys.readouterr().out)
    text_code = main(["doctor", "--stack-name", STACK, "--region", REGION])
    text = capsys.readouterr().out

    # THEN both exit 1; the JSON lists the finding with its fix, the text has one line per finding
    assert json_code == text_code == 1
    assert document["stack"] == STACK and document["region"] == REGION and document["errors"] == 1
    errors = [f for f in document["findings"] if f["level"] == "ERROR"]
    assert [e["subject"] for e in errors] == ["ml.g5.2xlarge for processing job usage"]
    assert "--quota-code L-TEST0003" in errors[0]["fix"]
    lines = text.splitlines()
    assert len(lines) == len(document["findings"]) + 2  # the heading and the counts
    assert any(line.startswith("ERROR  quota       ml.g5.2xlarge for processing job usage: 0") for line in lines)


def test_the_cli_exits_0_without_errors_and_2_on_bad_usage(
    aws: None, quotas: dict[str, float], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a healthy stack
    _deployed(model_dir)

    # WHEN doctor runs, and runs without a stack name
    assert main(["doctor", "--stack-name", STACK, "--region", REGION]) == 0
    with pytest.raises(SystemExit) as usage:
        main(["doctor", "--region", REGION])

    # THEN the second is a usage error
    assert usage.value.code == 2
    assert "--stack-name" in capsys.readouterr().err
