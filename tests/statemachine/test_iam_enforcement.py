"""IAM enforcement in the local cloud (local/cloud/iam): the botocore hook on hand-made roles, then the wiring on the
real stack: Lambda functions, the state machine and SageMaker jobs act as their roles, and what the template grants
is what they may do."""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.exceptions import ClientError
from local.cloud import LocalJob, local_cloud
from local.cloud.iam import Enforcement, acting_as, current_enforcement, iam_enforcement
from local.cloud.iam.actions import UnmappedOperation
from local.cloud.sagemaker_jobs import download_prefix
from tests.statemachine.harness import Cloud, ScriptedJobs, deployed_cloud

ACCOUNT = "123456789012"
BUCKET = "iam-test-bucket"


def _role(name: str, *statements: dict[str, Any]) -> str:
    """A role with one inline policy of ``statements`` (as the operator)."""
    iam = boto3.client("iam")
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Statement": []}))["Role"]["Arn"]
    if statements:
        document = {"Version": "2012-10-17", "Statement": list(statements)}
        iam.put_role_policy(RoleName=name, PolicyName="inline", PolicyDocument=json.dumps(document))
    return str(arn)


def _allow(action: Any, resource: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


@pytest.fixture
def enforced() -> Iterator[Enforcement]:
    """A local cloud with IAM enforced, a bucket and an object in it (made as the operator)."""
    with local_cloud(time_scale=0.01, enforce_iam=True):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="data/a.txt", Body=b"a")
        enforcement = current_enforcement()
        assert enforcement is not None
        yield enforcement


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    return exc.value.response["Error"]["Code"], exc.value.response["Error"]["Message"]


# ---------------------------------------------------------------------------------------------------------------------
# The hook


def test_a_principal_may_do_what_its_policy_allows_and_is_denied_the_rest_as_aws_says(enforced: Enforcement) -> None:
    # GIVEN a role that may read data/* of the bucket
    role = _role("reader", _allow("s3:GetObject", f"arn:aws:s3:::{BUCKET}/data/*"))
    s3 = boto3.client("s3")
    with acting_as(role, "session-1"):
        # WHEN it reads there THEN it may
        assert s3.get_object(Bucket=BUCKET, Key="data/a.txt")["Body"].read() == b"a"
        # WHEN it writes THEN S3 answers AccessDenied with IAM's message
        with pytest.raises(ClientError) as denied:
            s3.put_object(Bucket=BUCKET, Key="data/b.txt", Body=b"b")
    assert _error(denied) == (
        "AccessDenied",
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/reader/session-1 is not authorized to perform: s3:PutObject"
        f' on resource: "arn:aws:s3:::{BUCKET}/data/b.txt" because no identity-based policy allows the s3:PutObject'
        " action",
    )
    assert [(d.action, d.call) for d in enforced.denials] == [("s3:PutObject", "s3:PutObject")]
    # AND the operator (no principal) is not checked
    s3.put_object(Bucket=BUCKET, Key="data/b.txt", Body=b"b")


def test_a_missing_object_is_access_denied_without_list_bucket_and_not_found_with_it(enforced: Enforcement) -> None:
    s3 = boto3.client("s3")
    reader = _role("reader", _allow("s3:GetObject", f"arn:aws:s3:::{BUCKET}/*"))
    lister = _role(
        "lister", _allow(["s3:GetObject", "s3:ListBucket"], [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"])
    )
    with acting_as(reader), pytest.raises(ClientError) as denied:
        s3.get_object(Bucket=BUCKET, Key="data/missing.txt")
    with acting_as(lister), pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=BUCKET, Key="data/missing.txt")
    assert _error(denied)[0] == "AccessDenied"
    assert "s3:ListBucket" in _error(denied)[1]
    assert _error(missing)[0] == "NoSuchKey"


def test_json_services_answer_access_denied_exception(enforced: Enforcement) -> None:
    role = _role("nothing")
    with acting_as(role), pytest.raises(ClientError) as denied:
        boto3.client("sagemaker").describe_training_job(TrainingJobName="job")
    code, message = _error(denied)
    assert code == "AccessDeniedException"
    assert message.endswith(
        f"sagemaker:DescribeTrainingJob on resource: arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/job "
        "because no identity-based policy allows the sagemaker:DescribeTrainingJob action"
    )


def test_tag_conditions_see_the_request_and_the_resource_tags(enforced: Enforcement) -> None:
    # GIVEN a role that may create and stop only jobs carrying its team's tag
    team = {"StringEquals": {"aws:RequestTag/team": "a"}}
    role = _role(
        "jobs",
        _allow(["sagemaker:CreateProcessingJob", "sagemaker:AddTags"], "*", Condition=team),
        _allow("sagemaker:StopProcessingJob", "*", Condition={"StringEquals": {"aws:ResourceTag/team": "a"}}),
        _allow("iam:PassRole", "*", Condition={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}),
    )
    sagemaker = boto3.client("sagemaker")

    def create(name: str, tag: str) -> None:
        sagemaker.create_processing_job(
            ProcessingJobName=name,
            RoleArn=role,
            AppSpecification={"ImageUri": "image"},
            ProcessingResources={
                "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}
            },
            Tags=[{"Key": "team", "Value": tag}],
        )

    with acting_as(role):
        create("ours", "a")
        with pytest.raises(ClientError, match="sagemaker:CreateProcessingJob"):
            create("theirs", "b")
    create("theirs", "b")  # as the operator
    with acting_as(role):
        sagemaker.stop_processing_job(ProcessingJobName="ours")
        with pytest.raises(ClientError, match="sagemaker:StopProcessingJob"):
            sagemaker.stop_processing_job(ProcessingJobName="theirs")


def test_sse_kms_objects_need_the_key_through_s3(enforced: Enforcement) -> None:
    # GIVEN a bucket encrypted by default with a KMS key whose policy delegates to IAM
    kms = boto3.client("kms")
    root = {
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    key = kms.create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": [root]}))["KeyMetadata"]["Arn"]
    boto3.client("s3").put_bucket_encryption(
        Bucket=BUCKET,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}}]
        },
    )
    objects = f"arn:aws:s3:::{BUCKET}/*"
    via_s3 = {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}
    without_key = _role("no-key", _allow("s3:PutObject", objects))
    with_key = _role("key", _allow("s3:PutObject", objects), _allow("kms:GenerateDataKey", key, Condition=via_s3))
    # WHEN each writes an object THEN only the one that may use the key through S3 can
    with acting_as(without_key), pytest.raises(ClientError) as denied:
        boto3.client("s3").put_object(Bucket=BUCKET, Key="k", Body=b"x")
    assert f'kms:GenerateDataKey on resource: "{key}"' in _error(denied)[1]
    with acting_as(with_key):
        boto3.client("s3").put_object(Bucket=BUCKET, Key="k", Body=b"x")
    # AND outside S3 the same grant does not apply
    with acting_as(with_key), pytest.raises(ClientError, match="kms:GenerateDataKey"):
        kms.generate_data_key(KeyId=key, KeySpec="AES_256")


def test_a_bucket_policy_can_allow_a_role_and_deny_everyone(enforced: Enforcement) -> None:
    role = _role("nothing")
    allow = {
        "Effect": "Allow",
        "Principal": {"AWS": role},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/data/*",
    }
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": f"arn:aws:s3:::{BUCKET}/data/secret*"}
    policy = {"Version": "2012-10-17", "Statement": [allow, deny]}
    boto3.client("s3").put_object(Bucket=BUCKET, Key="data/secret.txt", Body=b"s")
    boto3.client("s3").put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    with acting_as(role):
        assert boto3.client("s3").get_object(Bucket=BUCKET, Key="data/a.txt")["Body"].read() == b"a"
        with pytest.raises(ClientError, match="with an explicit deny in a resource-based policy"):
            boto3.client("s3").get_object(Bucket=BUCKET, Key="data/secret.txt")


def test_threads_started_by_a_principal_act_as_it(enforced: Enforcement) -> None:
    role = _role("nothing")
    errors: list[str] = []

    def read() -> None:
        try:
            boto3.client("s3").get_object(Bucket=BUCKET, Key="data/a.txt")
        except ClientError as exc:
            errors.append(exc.response["Error"]["Code"])

    with acting_as(role):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert errors == ["AccessDenied"]


def test_an_unmapped_operation_fails_loudly(enforced: Enforcement) -> None:
    with acting_as(_role("admin", _allow("*", "*"))), pytest.raises(UnmappedOperation):
        boto3.client("s3").get_bucket_acl(Bucket=BUCKET)
    assert enforced.unmapped == ["s3:GetBucketAcl"]


def test_audit_mode_records_and_denies_nothing() -> None:
    with local_cloud(time_scale=0.01, enforce_iam=False), iam_enforcement("audit") as audit:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        with acting_as(_role("nothing")):
            boto3.client("s3").put_object(Bucket=BUCKET, Key="k", Body=b"x")
    assert [(d.action, d.resource) for d in audit.denials] == [("s3:PutObject", f"arn:aws:s3:::{BUCKET}/k")]


# ---------------------------------------------------------------------------------------------------------------------
# The stack: who acts, and what the template lets them do

_scripted = ScriptedJobs.__call__


def _downloading_inputs(self: ScriptedJobs, job: LocalJob) -> Any:
    """Scripted jobs that first download their inputs, as SageMaker does before the container starts."""
    model = job.model
    sources = (
        [channel["DataSource"]["S3DataSource"]["S3Uri"] for channel in model.input_data_config]
        if job.kind == "training"
        else [item["S3Input"]["S3Uri"] for item in model.processing_inputs]
    )
    with tempfile.TemporaryDirectory() as scratch:
        for uri in sources:
            download_prefix(uri, Path(scratch))
    return _scripted(self, job)


def _upload_and_wait(cloud: Cloud, lines: list[str]) -> dict[str, Any]:
    """Upload a dataset (the S3 event starts StartRun, which starts the run) and wait for the run."""
    cloud.upload("incoming/reverse.jsonl", lines)
    deadline = time.monotonic() + 30
    while not cloud.executions():
        assert time.monotonic() < deadline, "no run started"
        time.sleep(0.05)
    return cloud.wait(cloud.executions()[-1]["executionArn"])


@pytest.fixture
def audited(base_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Cloud, Enforcement]]:
    marker = request.node.get_closest_marker("stack_parameters")
    with (
        deployed_cloud(base_model_dir, dict(marker.kwargs) if marker else None, enforce_iam=False) as cloud,
        mock.patch.object(ScriptedJobs, "__call__", _downloading_inputs),
        iam_enforcement("audit") as enforcement,
    ):
        yield cloud, enforcement


def _roles(enforcement: Enforcement) -> dict[str, set[str]]:
    """Calls made by each role (by the role's logical id), e.g. {"StageFunctionRole": {"events:PutEvents"}}."""
    made: dict[str, set[str]] = {}
    for session, call in enforcement.calls:
        role = session.split("/")[1].removeprefix("tuneplane-test-").rsplit("-", 1)[0]
        made.setdefault(role, set()).add(call)
    return made


def test_every_part_of_a_run_acts_as_its_own_role(
    audited: tuple[Cloud, Enforcement], reversal_lines: list[str]
) -> None:
    # GIVEN the stack, enforcement auditing
    cloud, enforcement = audited
    # WHEN an upload runs the pipeline
    execution = _upload_and_wait(cloud, reversal_lines)
    # THEN each call was made as the role that makes it on AWS
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    made = _roles(enforcement)
    assert {"stepfunctions:StartExecution"} <= made["StartRunFunctionRole"]
    assert {"lambda:Invoke", "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob"} <= made[
        "PipelineStateMachineRole"
    ]
    assert {"s3:GetObject", "s3:PutObject"} <= made["ValidateFunctionRole"]
    assert {"dynamodb:UpdateItem", "events:PutEvents"} <= made["StageFunctionRole"]
    assert {"s3:ListObjectsV2", "s3:GetObject", "s3:PutObject"} <= made["SageMakerExecutionRole"]
    assert not enforcement.unmapped
    # AND the jobs carry the role the ASL passes ("RoleArn.$", which moto's interpreter used to drop)
    sagemaker = boto3.client("sagemaker")
    [job] = sagemaker.list_training_jobs()["TrainingJobSummaries"]
    role = sagemaker.describe_training_job(TrainingJobName=job["TrainingJobName"]).get("RoleArn")
    assert role == cloud.deployment.outputs["SageMakerExecutionRoleArn"]


def test_a_run_needs_nothing_the_template_does_not_grant(base_model_dir: Path, reversal_lines: list[str]) -> None:
    # GIVEN the stack with IAM enforced (no deployment)
    with (
        deployed_cloud(base_model_dir, enforce_iam=False) as cloud,
        mock.patch.object(ScriptedJobs, "__call__", _downloading_inputs),
    ):
        with iam_enforcement("enforce") as enforcement:
            # WHEN an upload runs the pipeline
            execution = _upload_and_wait(cloud, reversal_lines)
    # THEN it succeeds and nothing was denied
    assert [str(d) for d in enforcement.denials] == []
    assert execution["status"] == "SUCCEEDED", execution.get("cause")


@pytest.mark.stack_parameters(DeployTarget="vllm")
def test_a_vllm_deployment_needs_nothing_the_template_does_not_grant(
    audited: tuple[Cloud, Enforcement], reversal_lines: list[str]
) -> None:
    # GIVEN the stack deploying to a vLLM endpoint, enforcement auditing
    cloud, enforcement = audited
    cloud.endpoints.reply = "olleh"
    # WHEN a run deploys
    execution = _upload_and_wait(cloud, reversal_lines)
    # THEN nothing was denied, and the endpoint read its model as the model's role, not as the Deploy function
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert [str(d) for d in enforcement.denials] == []
    made = _roles(enforcement)
    assert {"sagemaker:CreateEndpoint", "application-autoscaling:RegisterScalableTarget"} <= made["DeployFunctionRole"]
    assert "s3:ListObjectsV2" not in made["DeployFunctionRole"]


def test_a_sync_task_needs_the_managed_rule_of_the_integration(
    base_model_dir: Path, reversal_lines: list[str]
) -> None:
    # GIVEN the stack, its state machine's role without the statement for the .sync integration's EventBridge rule
    with deployed_cloud(base_model_dir, enforce_iam=False) as cloud:
        iam = boto3.client("iam")
        role = cloud.deployment.resources["PipelineStateMachineRole"]
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            statements = [s for s in document["Statement"] if s.get("Sid") != "SyncIntegrationRules"]
            iam.put_role_policy(
                RoleName=role,
                PolicyName=name,
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
            )
        with iam_enforcement("enforce") as enforcement:
            # WHEN a run reaches Train
            execution = _upload_and_wait(cloud, reversal_lines)
    # THEN the task fails, denied the rule, and the run fails
    assert execution["status"] == "FAILED"
    [denial] = enforcement.denials
    assert (denial.action, denial.resource) == (
        "events:PutTargets",
        f"arn:aws:events:us-east-1:{ACCOUNT}:rule/StepFunctionsGetEventsForSageMakerTrainingJobsRule",
    )
    assert re.fullmatch(
        rf"arn:aws:sts::{ACCOUNT}:assumed-role/tuneplane-test-PipelineStateMachineRole-\w+/\S+", denial.principal
    )
