"""The local cloud refuses requests as AWS does (local/cloud/request_checks.py): the botocore model's max, pattern,
enum and numeric constraints, documented rules, AWS's message format, and the hook inside ``local_cloud()``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from botocore.model import OperationModel, ServiceModel
from local.cloud import local_cloud
from local.cloud.request_checks import (
    LOCAL_STORAGE_FAMILIES,
    Violation,
    aws_request_checks,
    check_request,
    has_local_storage,
    model_violations,
)
from moto import mock_aws

ROLE = "arn:aws:iam::123456789012:role/sagemaker"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _model(service: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(service)


def _operation(service: str, name: str) -> OperationModel:
    return _model(service).operation_model(name)


def _pattern(service: str, shape: str) -> str:
    return str(_model(service).shape_for(shape).metadata["pattern"])


def _refusal(operation: OperationModel, params: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as refused:
        check_request(operation, params)
    return dict(refused.value.response)


def _training_job(name: str = "run-1-train0", instance_type: str = "ml.m5.xlarge", **resources: Any) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": "123.dkr.ecr.us-east-1.amazonaws.com/t:1",
            "TrainingInputMode": "File",
        },
        "RoleArn": ROLE,
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/runs/run-1/train/"},
        "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": 1, "VolumeSizeInGB": 50, **resources},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": [{"Key": "tuneplane:stack", "Value": "tuneplane"}],
    }


def _processing_job(instance_type: str, **cluster: Any) -> dict[str, Any]:
    return {
        "ProcessingJobName": "run-1-merge",
        "RoleArn": ROLE,
        "AppSpecification": {"ImageUri": "123.dkr.ecr.us-east-1.amazonaws.com/m:1"},
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": instance_type, "VolumeSizeInGB": 50, **cluster}
        },
    }


# ---------------------------------------------------------------------------------------------- model constraints


def test_a_pattern_must_match_the_whole_value() -> None:
    # GIVEN CreateTrainingJob, whose job-name pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62} has no anchors
    operation = _operation("sagemaker", "CreateTrainingJob")
    # WHEN a name matches only as a prefix ("a" of "a_b") THEN it is refused, as AWS refuses it
    assert model_violations(operation, _training_job(name="a_b")) == [
        Violation(
            "trainingJobName",
            "a_b",
            f"Member must satisfy regular expression pattern: {_pattern('sagemaker', 'TrainingJobName')}",
        )
    ]
    # AND a name the pattern matches whole is accepted
    assert model_violations(operation, _training_job(name="a-b")) == []


def test_the_message_is_the_one_aws_sends() -> None:
    # GIVEN a training job name with an underscore WHEN it is checked
    response = _refusal(_operation("sagemaker", "CreateTrainingJob"), _training_job(name="a_b"))
    # THEN the answer is AWS's HTTP 400 ValidationException with Coral's wording
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"] == {
        "Code": "ValidationException",
        "Message": "1 validation error detected: Value 'a_b' at 'trainingJobName' failed to satisfy constraint: "
        f"Member must satisfy regular expression pattern: {_pattern('sagemaker', 'TrainingJobName')}",
    }


def test_several_violations_are_counted_and_joined() -> None:
    # GIVEN a 64-character job name (too long, and beyond the pattern's {0,62}) and a tag value with parentheses
    params = _training_job(name="a" * 64)
    params["Tags"] = [{"Key": "dataset", "Value": "support (v2)"}]
    # WHEN it is checked
    message = _refusal(_operation("sagemaker", "CreateTrainingJob"), params)["Error"]["Message"]
    # THEN every violation is reported, with list elements as <list>.<1-based index>.member
    assert message.startswith("3 validation errors detected: Value '" + "a" * 64 + "' at 'trainingJobName' ")
    parts = message.split("; ")
    assert len(parts) == 3
    assert parts[1].endswith(
        "at 'trainingJobName' failed to satisfy constraint: Member must have length less than or equal to 63"
    )
    assert parts[2].startswith("Value 'support (v2)' at 'tags.1.member.value' failed to satisfy constraint: ")


def test_max_length_of_a_string() -> None:
    # GIVEN a tag value of 257 characters (TagValue: max 256)
    operation = _operation("sagemaker", "CreateTrainingJob")
    params = _training_job()
    params["Tags"] = [{"Key": "note", "Value": "a" * 257}]
    # WHEN it is checked THEN it is refused; 256 is accepted
    [violation] = model_violations(operation, params)
    assert (violation.path, violation.constraint) == (
        "tags.1.member.value",
        "Member must have length less than or equal to 256",
    )
    params["Tags"] = [{"Key": "note", "Value": "a" * 256}]
    assert model_violations(operation, params) == []


def test_enum_of_a_training_instance_type() -> None:
    # GIVEN ml.t2.medium, which SageMaker serves endpoints on but does not train on
    operation = _operation("sagemaker", "CreateTrainingJob")
    allowed = _model("sagemaker").shape_for("TrainingInstanceType").metadata["enum"]
    assert "ml.t2.medium" not in allowed
    # WHEN a training job asks for it THEN it is refused with the enum value set, as AWS prints it
    [violation] = model_violations(operation, _training_job(instance_type="ml.t2.medium"))
    assert violation == Violation(
        "resourceConfig.instanceType", "ml.t2.medium", f"Member must satisfy enum value set: [{', '.join(allowed)}]"
    )
    # AND a training instance type is accepted
    assert model_violations(operation, _training_job(instance_type="ml.g6e.2xlarge")) == []


def test_numeric_maximum_in_a_list_of_structures() -> None:
    # GIVEN a production variant whose health-check timeout is above ContainerStartupHealthCheckTimeoutInSeconds' 3600
    operation = _operation("sagemaker", "CreateEndpointConfig")

    def config(timeout: int) -> dict[str, Any]:
        variant = {
            "VariantName": "AllTraffic",
            "ModelName": "run-1-serve",
            "InstanceType": "ml.g5.2xlarge",
            "InitialInstanceCount": 1,
            "ContainerStartupHealthCheckTimeoutInSeconds": timeout,
        }
        return {"EndpointConfigName": "run-1-serve", "ProductionVariants": [variant]}

    # WHEN it is checked THEN it is refused (the number quoted, as AWS quotes it); 3600 is accepted
    assert model_violations(operation, config(3601)) == [
        Violation(
            "productionVariants.1.member.containerStartupHealthCheckTimeoutInSeconds",
            "3601",
            "Member must have value less than or equal to 3600",
        )
    ]
    assert model_violations(operation, config(3600)) == []


def test_customer_metadata_values_follow_the_model() -> None:
    # GIVEN CreateModelPackage with the dataset key as a CustomerMetadataProperties value
    operation = _operation("sagemaker", "CreateModelPackage")
    value_shape = _model("sagemaker").shape_for("CustomerMetadataValue").metadata

    def package(properties: dict[str, str]) -> dict[str, Any]:
        return {"ModelPackageGroupName": "tuneplane-models", "CustomerMetadataProperties": properties}

    # WHEN the key has parentheses THEN the map is refused, listing every constraint of its values
    response = _refusal(operation, package({"dataset": "incoming/support (v2).jsonl", "run_id": "r1"}))
    assert response["Error"]["Message"] == (
        "1 validation error detected: Value '{dataset=incoming/support (v2).jsonl, run_id=r1}' at "
        "'customerMetadataProperties' failed to satisfy constraint: Map value must satisfy constraint: "
        f"[Member must have length less than or equal to {value_shape['max']}, "
        f"Member must have length greater than or equal to {value_shape['min']}, "
        f"Member must satisfy regular expression pattern: {value_shape['pattern']}]"
    )
    # AND a key without them is accepted
    check_request(operation, package({"dataset": "incoming/support-v2.jsonl", "run_id": "r1"}))


def test_map_keys_and_map_size() -> None:
    operation = _operation("sagemaker", "CreateModelPackage")
    # GIVEN a metadata key with a character its pattern forbids (#) WHEN checked THEN the keys are refused
    [keys] = model_violations(operation, {"ModelPackageGroupName": "g", "CustomerMetadataProperties": {"a#b": "x"}})
    assert keys.constraint.startswith(
        "Map keys must satisfy constraint: [Member must have length less than or equal to 128"
    )
    # GIVEN 51 properties (the map holds at most 50) or none (at least 1) THEN the map's size is refused
    many = {f"k{i}": "v" for i in range(51)}
    [size] = model_violations(operation, {"ModelPackageGroupName": "g", "CustomerMetadataProperties": many})
    assert size.constraint == "Member must have length less than or equal to 50"
    [empty] = model_violations(operation, {"ModelPackageGroupName": "g", "CustomerMetadataProperties": {}})
    assert (empty.value, empty.constraint) == ("{}", "Member must have length greater than or equal to 1")


def test_a_list_of_strings_lists_its_member_constraints() -> None:
    # GIVEN a processing job with a container argument of 257 characters (ContainerArgument: max 256)
    operation = _operation("sagemaker", "CreateProcessingJob")
    params = _processing_job("ml.m5.xlarge")
    params["AppSpecification"]["ContainerArguments"] = ["--ok=1", "--long=" + "x" * 250]
    # WHEN checked THEN the list is refused as a whole, with the member shape's constraints
    [violation] = model_violations(operation, params)
    assert violation.path == "appSpecification.containerArguments"
    assert violation.value == "[--ok=1, --long=" + "x" * 250 + "]"
    assert violation.constraint == (
        "Member must satisfy constraint: [Member must have length less than or equal to 256, "
        "Member must have length greater than or equal to 0, Member must satisfy regular expression pattern: .*]"
    )


def test_a_sensitive_value_is_not_printed() -> None:
    # GIVEN a Lambda environment variable name that its pattern refuses (the variables are sensitive)
    operation = _operation("lambda", "UpdateFunctionConfiguration")
    params = {"FunctionName": "f", "Environment": {"Variables": {"MY-VAR": "secret"}}}
    # WHEN checked THEN the message names the member, not the value, as AWS's does
    message = _refusal(operation, params)["Error"]["Message"]
    assert message == (
        "1 validation error detected: Value at 'environment.variables' failed to satisfy constraint: "
        f"Map keys must satisfy constraint: [Member must satisfy regular expression pattern: "
        f"{_pattern('lambda', 'EnvironmentVariableName')}]"
    )
    assert "secret" not in message


def test_java_surrogate_pairs_in_a_pattern_mean_supplementary_characters() -> None:
    # GIVEN the Athena catalog pattern [\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]* (Java, UTF-16)
    operation = _operation("sagemaker", "CreateProcessingJob")
    assert "\\uD800\\uDC00-\\uDBFF\\uDFFF" in _pattern("sagemaker", "AthenaCatalog")

    def with_catalog(catalog: str) -> dict[str, Any]:
        params = _processing_job("ml.m5.xlarge")
        athena = {"Catalog": catalog, "Database": "db", "QueryString": "select 1", "OutputS3Uri": "s3://b/q/"}
        params["ProcessingInputs"] = [{"InputName": "q", "DatasetDefinition": {"AthenaDatasetDefinition": athena}}]
        return params

    # WHEN a catalog name holds an emoji (a supplementary character) THEN it is accepted
    assert model_violations(operation, with_catalog("catalog \U0001f600")) == []
    # AND a control character is refused
    [violation] = model_violations(operation, with_catalog("catalog\x01"))
    assert violation.path == "processingInputs.1.member.datasetDefinition.athenaDatasetDefinition.catalog"


def test_query_protocol_services_answer_validation_error() -> None:
    # GIVEN IAM (query protocol) and a role name over its 64 characters WHEN checked
    response = _refusal(_operation("iam", "CreateRole"), {"RoleName": "r" * 65, "AssumeRolePolicyDocument": "{}"})
    # THEN the code is IAM's ValidationError
    assert response["Error"]["Code"] == "ValidationError"
    assert response["Error"]["Message"].endswith(
        "at 'roleName' failed to satisfy constraint: Member must have length less than or equal to 64"
    )


# ----------------------------------------------------------------------------------------------- documented rules


def test_volume_kms_key_is_refused_on_instances_with_local_storage() -> None:
    # GIVEN a training job with a volume key
    operation = _operation("sagemaker", "CreateTrainingJob")
    # WHEN its instance type has NVMe instance storage (ml.g5) THEN it is refused
    response = _refusal(operation, _training_job(instance_type="ml.g5.2xlarge", VolumeKmsKeyId=KEY))
    assert response["Error"]["Code"] == "ValidationException"
    assert "ResourceConfig.VolumeKmsKeyId" in response["Error"]["Message"]
    assert "ml.g5.2xlarge" in response["Error"]["Message"]
    # AND on an EBS-only type (ml.m5) it is accepted, as is ml.g5 without a volume key
    check_request(operation, _training_job(instance_type="ml.m5.xlarge", VolumeKmsKeyId=KEY))
    check_request(operation, _training_job(instance_type="ml.g5.2xlarge"))


def test_processing_volume_kms_key_is_refused_on_instances_with_local_storage() -> None:
    operation = _operation("sagemaker", "CreateProcessingJob")
    # GIVEN a processing job on ml.g6e with a volume key WHEN checked THEN it is refused
    response = _refusal(operation, _processing_job("ml.g6e.xlarge", VolumeKmsKeyId=KEY))
    assert "ProcessingResources.ClusterConfig.VolumeKmsKeyId" in response["Error"]["Message"]
    # AND on ml.m5 it is accepted
    check_request(operation, _processing_job("ml.m5.xlarge", VolumeKmsKeyId=KEY))


def test_the_local_storage_table_names_real_families() -> None:
    # GIVEN every ML instance family in the SageMaker model's instance-type enums
    model = _model("sagemaker")
    families = {
        value.split(".")[1]
        for name in model.shape_names
        for value in model.shape_for(name).metadata.get("enum", [])
        if value.startswith("ml.") and value.count(".") == 2
    }
    # THEN the table holds no family SageMaker does not know (a typo would silently never match)
    assert set(LOCAL_STORAGE_FAMILIES) <= families
    # AND every family with the "d" (instance store) attribute in its name is in it, and EBS-only ones are not
    attributes = {family: re.sub(r"^[a-z]+[0-9]+", "", family.split("-")[0]) for family in families}  # g4dn: dn
    with_d = {family for family, letters in attributes.items() if "d" in letters}
    assert {"g4dn", "p4d", "p4de", "m5d", "r5d"} <= with_d
    assert with_d <= set(LOCAL_STORAGE_FAMILIES)
    assert has_local_storage("ml.p4d.24xlarge") and has_local_storage("ml.g5.48xlarge")
    assert not has_local_storage("ml.m5.xlarge") and not has_local_storage("ml.c5n.xlarge")
    assert not has_local_storage("ml.inf2.xlarge")


def test_tag_keys_with_the_aws_prefix_are_reserved() -> None:
    operation = _operation("sagemaker", "CreateModel")
    params: dict[str, Any] = {"ModelName": "run-1-serve", "ExecutionRoleArn": ROLE}
    # GIVEN a tag key starting with aws: (any case) WHEN checked THEN it is refused
    for key in ("aws:cloudformation:stack-name", "AWS:owner"):
        response = _refusal(operation, {**params, "Tags": [{"Key": key, "Value": "x"}]})
        assert response["Error"]["Message"] == f"System prefix 'aws:' reserved for AWS usage in tag key: {key}"
    # AND the stack's own tag is accepted
    check_request(operation, {**params, "Tags": [{"Key": "tuneplane:stack", "Value": "tuneplane"}]})


# ------------------------------------------------------------------------------------------------------- the hook


@pytest.fixture
def _aws() -> Iterator[None]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield


@pytest.mark.usefixtures("_aws")
def test_the_hook_refuses_a_call_that_moto_alone_accepts() -> None:
    # GIVEN moto alone, which creates a model package group named "a_b" (AWS refuses the underscore)
    client = boto3.client("sagemaker")
    client.create_model_package_group(ModelPackageGroupName="a_b")
    # WHEN the checks are on THEN the same call is refused before it reaches moto
    with aws_request_checks():
        with pytest.raises(ClientError) as refused:
            client.create_model_package_group(ModelPackageGroupName="c_d")
        # AND botocore's own client-side validation still comes first
        with pytest.raises(ParamValidationError):
            client.create_model_package_group()  # type: ignore[call-arg]
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "at 'modelPackageGroupName'" in refused.value.response["Error"]["Message"]
    names = [g["ModelPackageGroupName"] for g in client.list_model_package_groups()["ModelPackageGroupSummaryList"]]
    assert names == ["a_b"]
    # AND after the block, calls are moto's again
    client.create_model_package_group(ModelPackageGroupName="e_f")


def test_local_cloud_refuses_a_direct_boto3_call() -> None:
    # GIVEN the local cloud WHEN a boto3 client made inside it sends an invalid request
    with local_cloud(executor=lambda job: pytest.fail("no job may start"), enforce_iam=False):
        with pytest.raises(ClientError) as refused:
            boto3.client("sagemaker").create_training_job(**_training_job(name="a_b"))
    # THEN AWS's refusal comes back
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Error"]["Message"].startswith(
        "1 validation error detected: Value 'a_b' at 'trainingJobName' failed to satisfy constraint"
    )


def test_local_cloud_checks_the_calls_of_the_state_machine_interpreter() -> None:
    # GIVEN a state machine whose aws-sdk task creates a model package group named by its input
    definition = {
        "StartAt": "Create",
        "States": {
            "Create": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:sagemaker:createModelPackageGroup",
                "Parameters": {"ModelPackageGroupName.$": "$.name"},
                "End": True,
            }
        },
    }
    with local_cloud(executor=lambda job: pytest.fail("no job may start"), enforce_iam=False):
        sfn = boto3.client("stepfunctions")
        machine = sfn.create_state_machine(
            name="probe", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
        )["stateMachineArn"]

        def run(name: str) -> dict[str, Any]:
            arn = sfn.start_execution(stateMachineArn=machine, name=f"run-{name}", input=json.dumps({"name": name}))[
                "executionArn"
            ]
            deadline = time.monotonic() + 30
            while (execution := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
                assert time.monotonic() < deadline, "execution still running"
                time.sleep(0.02)
            return dict(execution)

        # WHEN it runs with a name AWS refuses THEN the task fails with AWS's validation message
        failed = run("a_b")
        # AND with a valid name it succeeds
        succeeded = run("a-b")
    assert failed["status"] == "FAILED"
    assert "Value 'a_b' at 'modelPackageGroupName' failed to satisfy constraint" in failed["cause"]
    assert succeeded["status"] == "SUCCEEDED"


def test_lengths_count_utf16_code_units_as_java_does() -> None:
    # GIVEN a SageMaker tag value of 200 characters outside the BMP: 400 UTF-16 code units, over the 256 allowed
    from local.cloud.request_checks import model_violations

    model = botocore.session.get_session().get_service_model("sagemaker").operation_model("AddTags")
    tags = [{"Key": "k", "Value": "\U0001d400" * 200}]
    found = model_violations(
        model, {"ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e", "Tags": tags}
    )
    # WHEN checked THEN the value is too long
    assert any("length less than or equal to 256" in str(v) for v in found), found
