"""Server-side copies under IAM enforcement (local/cloud/iam/actions.py): what a copy of an object version needs, and
that the Validate function's role, as template.yaml declares it, may pin a dataset version for the validation job
(boto3's managed copy: HeadObject, then CopyObject, or CreateMultipartUpload/UploadPartCopy/CompleteMultipartUpload
for a large one), read the job's result and remove the job's input, and nothing more."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from local.cfn_yaml import load_cfn_yaml
from local.cloud.iam import Enforcement, acting_as, enforcing
from local.cloud.iam.actions import Call, Check, checks
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, REGION = "123456789012", "us-east-1"
BUCKET, MODEL_BUCKET = "tuneplane-data-iam", "tuneplane-models-iam"
MODEL_PREFIX = "base/"
DATASET = "incoming/my data.jsonl"  # a space: the copy source travels URL-encoded
PIN = "runs/run-1/validation-input/"
MIB = 1024 * 1024
# boto3's managed copy with parts of the minimum size S3 allows, so a test object of a few MiB goes multipart.
MULTIPART = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=2)


class Facts:
    """A data bucket whose default encryption is SSE-KMS with an S3 Bucket Key, holding ``objects``."""

    key_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"

    def __init__(self, *objects: str) -> None:
        self.objects = set(objects)  # "bucket/key"

    def tags(self, arn: str) -> Mapping[str, str] | None:
        return None

    def object_exists(self, bucket: str, key: str, version_id: str | None) -> bool:
        return f"{bucket}/{key}" in self.objects

    def object_encryption(self, bucket: str, key: str, version_id: str | None) -> tuple[str | None, bool]:
        return self.key_arn, True

    def bucket_encryption(self, bucket: str) -> tuple[str | None, bool]:
        return self.key_arn, True

    def kms_key_arn(self, key_id: str) -> str:
        return key_id

    def secret_arn(self, secret_id: str) -> str:
        return secret_id

    def scalable_target_arn(self, namespace: str, resource_id: str, dimension: str) -> str | None:
        return None


def _checks(operation: str, facts: Facts, **params: Any) -> list[tuple[str, str]]:
    return [(c.action, c.resource) for c in checks(Call("s3", operation, params, REGION, ACCOUNT), facts)]


# ---------------------------------------------------------------------------------------------------------------------
# The mapping


def test_a_part_copied_from_a_version_reads_that_version_and_writes_the_target() -> None:
    # GIVEN a pinned dataset version, named as botocore sends it (the key URL-encoded, the version appended)
    facts = Facts(f"{BUCKET}/{DATASET}")
    source = f"{BUCKET}/incoming/my%20data.jsonl?versionId=v1"
    # WHEN one part of its copy is uploaded
    params = {"Bucket": BUCKET, "Key": f"{PIN}train/x", "CopySource": source}
    found = checks(Call("s3", "UploadPartCopy", params, REGION, ACCOUNT), facts)
    # THEN it writes the target, reads the source's version (by its real key) and decrypts the source through S3
    assert [(c.action, c.resource) for c in found] == [
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/{PIN}train/x"),
        ("s3:GetObjectVersion", f"arn:aws:s3:::{BUCKET}/{DATASET}"),
        ("kms:Decrypt", Facts.key_arn),
    ]
    assert found[1].context == {"s3:VersionId": ["v1"]}
    assert found[2].context["kms:EncryptionContext:aws:s3:arn"] == [f"arn:aws:s3:::{BUCKET}"]


def test_a_copy_of_the_current_version_reads_it_with_get_object() -> None:
    # GIVEN a source named without a version (a base model file), its key URL-encoded
    facts = Facts(f"{MODEL_BUCKET}/{MODEL_PREFIX}tokenizer config.json")
    source = f"{MODEL_BUCKET}/{MODEL_PREFIX}tokenizer%20config.json"
    # WHEN it is copied in one request
    found = _checks("CopyObject", facts, Bucket=BUCKET, Key=f"{PIN}model/t.json", CopySource=source)
    # THEN the read is s3:GetObject on the object itself: it exists, so no s3:ListBucket is asked for
    assert (("s3:GetObject", f"arn:aws:s3:::{MODEL_BUCKET}/{MODEL_PREFIX}tokenizer config.json")) in found
    assert ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/{PIN}model/t.json") in found
    assert not [action for action, _ in found if action == "s3:ListBucket"]


def test_multipart_calls_and_deletes_map_to_their_actions() -> None:
    facts = Facts()
    target = f"arn:aws:s3:::{BUCKET}/{PIN}train/x"
    assert _checks("CreateMultipartUpload", facts, Bucket=BUCKET, Key=f"{PIN}train/x") == [
        ("s3:PutObject", target),
        ("kms:GenerateDataKey", Facts.key_arn),
        ("kms:Decrypt", Facts.key_arn),
    ]
    parts = {"Parts": [{"ETag": "e", "PartNumber": 1}]}
    complete = _checks(
        "CompleteMultipartUpload", facts, Bucket=BUCKET, Key=f"{PIN}train/x", UploadId="u", MultipartUpload=parts
    )
    assert complete == [("s3:PutObject", target)]
    assert _checks("DeleteObject", facts, Bucket=BUCKET, Key=f"{PIN}train/x") == [("s3:DeleteObject", target)]
    versioned = _checks("DeleteObject", facts, Bucket=BUCKET, Key=f"{PIN}train/x", VersionId="v1")
    assert versioned == [("s3:DeleteObjectVersion", target)]


# ---------------------------------------------------------------------------------------------------------------------
# The Validate function's role, from template.yaml


def _resolve(value: Any, refs: Mapping[str, str]) -> Any:
    """The intrinsic functions the role's policy uses (Ref, GetAtt, Sub, Select, Split), against ``refs``."""
    if isinstance(value, list):
        return [_resolve(item, refs) for item in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        return refs[value["Ref"]]
    if "Fn::GetAtt" in value:
        return refs[".".join(value["Fn::GetAtt"])]
    if "Fn::Select" in value:
        index, items = value["Fn::Select"]
        return _resolve(items, refs)[int(index)]
    if "Fn::Split" in value:
        separator, text = value["Fn::Split"]
        return _resolve(text, refs).split(separator)
    if "Fn::Sub" in value:
        text, variables = value["Fn::Sub"] if isinstance(value["Fn::Sub"], list) else (value["Fn::Sub"], {})
        names = {**refs, **{name: _resolve(v, refs) for name, v in variables.items()}}
        for name, replacement in names.items():
            text = text.replace("${" + name + "}", replacement)
        assert "${" not in text, text
        return text
    return {key: _resolve(item, refs) for key, item in value.items()}


def _validate_role(key_arn: str, without: tuple[str, str] | None = None) -> str:
    """A role with the ValidateFunction's own policy statements (``without``: (Sid, action) left out)."""
    template = load_cfn_yaml(ROOT / "template.yaml")
    [policy] = template["Resources"]["ValidateFunction"]["Properties"]["Policies"]
    refs = {
        "DataBucket.Arn": f"arn:aws:s3:::{BUCKET}",
        "DataKey.Arn": key_arn,
        "AWS::Partition": "aws",
        "BaseModelS3Uri": f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}",
    }
    statements = _resolve(policy["Statement"], refs)
    if without is not None:
        for statement in statements:
            if statement["Sid"] == without[0]:
                statement["Action"] = [a for a in statement["Action"] if a != without[1]]
    iam = boto3.client("iam")
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:*"}]}
    arn = iam.create_role(RoleName="validate", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    document = {"Version": "2012-10-17", "Statement": statements}
    iam.put_role_policy(RoleName="validate", PolicyName="validate", PolicyDocument=json.dumps(document))
    return str(arn)


@pytest.fixture
def buckets() -> Iterator[dict[str, str]]:
    """The data bucket (versioned, SSE-KMS with the stack's key and a Bucket Key) with two versions of a dataset, and a
    base model bucket (SSE-S3); made as the operator. Yields the key's ARN and the first version's id."""
    with mock_aws():
        key_arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
        rules: list[Any] = [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}]
        s3.put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": rules})
        pinned = s3.put_object(Bucket=BUCKET, Key=DATASET, Body=b"a" * (11 * MIB))["VersionId"]
        s3.put_object(Bucket=BUCKET, Key=DATASET, Body=b"b" * 10)  # uploaded again after the run pinned its version
        s3.create_bucket(Bucket=MODEL_BUCKET)
        s3.put_object(Bucket=MODEL_BUCKET, Key=f"{MODEL_PREFIX}tokenizer.json", Body=b'{"model": {}}')
        yield {"key_arn": key_arn, "version": pinned}


def _pin(version: str) -> None:
    """What the Validate function does for the job: a managed copy of the pinned version, a base model file."""
    s3 = boto3.client("s3")
    source = {"Bucket": BUCKET, "Key": DATASET, "VersionId": version}
    s3.copy(source, BUCKET, f"{PIN}train/my data.jsonl", Config=MULTIPART)  # type: ignore[arg-type]
    model_file = {"Bucket": MODEL_BUCKET, "Key": f"{MODEL_PREFIX}tokenizer.json"}
    s3.copy_object(Bucket=BUCKET, Key=f"{PIN}model/tokenizer.json", CopySource=model_file)  # type: ignore[arg-type]


def _calls(enforcement: Enforcement) -> set[str]:
    return {call for _, call in enforcement.calls}


def test_the_validate_role_pins_a_dataset_version_with_a_multipart_copy(buckets: dict[str, str]) -> None:
    # GIVEN the Validate function's role as the template declares it, IAM enforced
    role = _validate_role(buckets["key_arn"])
    # WHEN it copies the run's pinned version (in parts) and a base model file next to it
    with enforcing("enforce") as enforcement, acting_as(role):
        _pin(buckets["version"])
    # THEN every call of the managed copy was checked and allowed, and the copy is the pinned version, not the newer
    assert {"s3:HeadObject", "s3:CreateMultipartUpload", "s3:UploadPartCopy", "s3:CompleteMultipartUpload"} <= (
        _calls(enforcement)
    )
    assert "s3:CopyObject" in _calls(enforcement)
    assert not enforcement.denials and not enforcement.unmapped
    copy = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"{PIN}train/my data.jsonl")["Body"].read()
    assert len(copy) == 11 * MIB and copy[:1] == b"a"


def test_copying_a_version_without_get_object_version_is_denied_on_the_part_copies(buckets: dict[str, str]) -> None:
    # GIVEN the role without s3:GetObjectVersion on incoming/ (audit: every call goes through and is recorded)
    role = _validate_role(buckets["key_arn"], without=("ReadIncomingDatasets", "s3:GetObjectVersion"))
    # WHEN it copies the pinned version
    with enforcing("audit") as enforcement, acting_as(role):
        _pin(buckets["version"])
    # THEN each read of the version is denied, the part copies included, on the dataset's real key
    denied = {(d.call, d.action, d.resource) for d in enforcement.denials}
    source = f"arn:aws:s3:::{BUCKET}/{DATASET}"
    assert ("s3:UploadPartCopy", "s3:GetObjectVersion", source) in denied
    assert ("s3:HeadObject", "s3:GetObjectVersion", source) in denied
    assert {action for _, action, _ in denied} == {"s3:GetObjectVersion"}


def test_the_validate_role_reads_the_jobs_result_and_deletes_nothing(buckets: dict[str, str]) -> None:
    # GIVEN a run's job input, the job's result and the run's splits (written by the job, as the operator)
    s3 = boto3.client("s3")
    for key in (f"{PIN}train/my data.jsonl", "runs/run-1/validation/result.json", "runs/run-1/data/train.jsonl"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    role = _validate_role(buckets["key_arn"])
    with enforcing("enforce"), acting_as(role):
        s3 = boto3.client("s3")
        # WHEN it collects the result
        assert s3.get_object(Bucket=BUCKET, Key="runs/run-1/validation/result.json")["Body"].read() == b"{}"
        # THEN anything else of the run stays out of its reach: neither read nor deleted (the job's input copies
        # expire with the run's intermediates, tagged when the run ends)
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.get_object(Bucket=BUCKET, Key="runs/run-1/data/train.jsonl")
        for key in (f"{PIN}train/my data.jsonl", "runs/run-1/data/train.jsonl", DATASET):
            with pytest.raises(ClientError, match="AccessDenied"):
                s3.delete_object(Bucket=BUCKET, Key=key)


def test_a_percent_encoded_plus_in_the_source_key_is_the_keys_own_plus() -> None:
    # GIVEN a part copy from the key "a+b", which botocore sends as a%2Bb (a "+" is not a space in the header)
    found: list[Check] = checks(
        Call(
            "s3",
            "UploadPartCopy",
            {"Bucket": BUCKET, "Key": "k", "CopySource": f"{BUCKET}/a%2Bb?versionId=v"},
            REGION,
            ACCOUNT,
        ),
        Facts(f"{BUCKET}/a+b"),
    )
    # WHEN its checks are made THEN they are on the key "a+b"
    assert [c.action for c in found][:2] == ["s3:PutObject", "s3:GetObjectVersion"]
    assert found[1].resource == f"arn:aws:s3:::{BUCKET}/a+b"
