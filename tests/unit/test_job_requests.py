"""The SageMaker job requests of a run: names, the training request (channels, hyperparameters, spot, encryption,
capacity fallback), the processing requests (inputs, outputs, container arguments) and the metric definitions."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tuneplane.config import PipelineSettings
from tuneplane.errors import InvalidConfiguration
from tuneplane.logic import job_requests
from tuneplane.logic.job_requests import (
    EXIT_MESSAGE_FILE,
    METRIC_DEFINITIONS,
    evaluate_job,
    job_name,
    job_prefix,
    merge_job,
    quantize_job,
    training_job,
)
from tuneplane.models.events import Stage
from tuneplane.models.pipeline import EvaluationOverrides, TrainingOverrides

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tuneplane-data-test"
RUN_ID = "support-tickets-1515d2ffc132722f"
ROLE = "arn:aws:iam::123456789012:role/tuneplane-sagemaker"
KMS = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
DATA: dict[str, str | None] = {
    "train_uri": f"s3://{BUCKET}/runs/{RUN_ID}/data/train.jsonl",
    "eval_uri": f"s3://{BUCKET}/runs/{RUN_ID}/data/eval.jsonl",
}


def _settings(**changes: Any) -> PipelineSettings:
    values: dict[str, Any] = {
        "stack_name": "tuneplane-test",
        "data_bucket": BUCKET,
        "event_bus_name": "tuneplane-test-events",
        "ledger_table": "tuneplane-test-runs",
        "base_model_s3_uri": f"s3://{BUCKET}/models/tiny/",
        "sagemaker_role_arn": ROLE,
        "train_image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-train:1",
        "merge_image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-merge:1",
        "evaluate_image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-evaluate:1",
        "quantize_image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/tuneplane-quantize:1",
        "training_instance_types": "ml.g5.2xlarge,ml.g6.2xlarge,ml.p4d.24xlarge",
        "max_training_runtime_s": 3600,
        "max_processing_runtime_s": 1800,
    }
    return PipelineSettings(**(values | changes))


def _load_train_container() -> ModuleType:
    """containers/train/train.py by its path (its heavy imports are lazy, so this needs no torch)."""
    name = "tuneplane_test_train_container"
    spec = importlib.util.spec_from_file_location(name, ROOT / "containers" / "train" / "train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def _wait_margin() -> int:
    """How much longer than a job may run the state machine waits for it (the same for every job)."""
    return training_job(_settings(use_spot=False), RUN_ID, DATA, TrainingOverrides(), 0).timeout_s - 3600


# ---------------------------------------------------------------------------------------------------------------------
# Job names


@pytest.mark.parametrize(
    "run_id",
    [
        RUN_ID,
        "a",
        "x" * 63 + "-0123456789abcdef",
        "my_data.v2-0123456789abcdef",
        "---weird..name__-0123456789abcdef",
        "_-_",
    ],
)
def test_job_names_are_valid_sagemaker_names_for_every_stage_and_attempt(run_id: str) -> None:
    # GIVEN any run id a run can have WHEN its jobs are named THEN every name is a valid SageMaker job name
    for stage in (Stage.TRAIN, Stage.MERGE, Stage.QUANTIZE, Stage.EVALUATE):
        for attempt in (0, 1, 4):
            name = job_name(run_id, stage, attempt)
            assert len(name) <= job_requests.JOB_NAME_MAX
            assert SAGEMAKER_NAME.fullmatch(name), name


def test_job_names_are_deterministic_and_readable() -> None:
    assert job_name(RUN_ID, Stage.TRAIN, 1) == job_name(RUN_ID, Stage.TRAIN, 1)
    assert job_name(RUN_ID, Stage.MERGE).startswith("support-tickets-")
    assert job_name(RUN_ID, Stage.TRAIN, 0).endswith("-train0")
    assert job_name(RUN_ID, Stage.EVALUATE).endswith("-evaluate")


def test_every_job_of_a_run_has_its_own_name_and_the_run_prefix() -> None:
    # GIVEN every job one run can create
    names = [job_name(RUN_ID, Stage.TRAIN, attempt) for attempt in range(5)]
    names += [job_name(RUN_ID, stage) for stage in (Stage.MERGE, Stage.QUANTIZE, Stage.EVALUATE)]
    # THEN they are distinct and all start with the run's prefix (what the failure path stops jobs by)
    assert len(set(names)) == len(names)
    assert all(name.startswith(job_prefix(RUN_ID) + "-") for name in names)


def test_runs_that_share_a_readable_start_get_different_prefixes() -> None:
    # GIVEN two run ids whose first 30 characters agree (the slug is cut there)
    first, second = "a" * 40 + "-1111111111111111", "a" * 40 + "-2222222222222222"
    # THEN the hash keeps their prefixes, and so their jobs, apart
    assert job_prefix(first) != job_prefix(second)
    assert not job_name(second, Stage.MERGE).startswith(job_prefix(first))


# ---------------------------------------------------------------------------------------------------------------------
# Training


def test_training_request_has_the_channels_image_role_and_outputs() -> None:
    # GIVEN a run with train and eval splits WHEN its first training job is built
    spec = training_job(_settings(), RUN_ID, DATA, TrainingOverrides(), attempt=0)
    request = spec.request
    # THEN it reads train, base model and eval, and writes under runs/<run-id>/
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {"train": DATA["train_uri"], "model": f"s3://{BUCKET}/models/tiny/", "eval": DATA["eval_uri"]}
    assert all(c["InputMode"] == "File" for c in request["InputDataConfig"])
    assert request["TrainingJobName"] == job_name(RUN_ID, Stage.TRAIN, 0)
    assert request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith("tuneplane-train:1")
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert request["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/runs/{RUN_ID}/train/"}
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/runs/{RUN_ID}/checkpoints/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100}
    assert spec.instance_type == "ml.g5.2xlarge" and spec.attempt == 0


def test_without_an_eval_split_there_is_no_eval_channel() -> None:
    spec = training_job(_settings(), RUN_ID, {**DATA, "eval_uri": None}, TrainingOverrides(), attempt=0)
    assert [c["ChannelName"] for c in spec.request["InputDataConfig"]] == ["train", "model"]


def test_hyperparameters_are_strings_from_the_overrides_with_the_stack_default_sequence_length() -> None:
    # GIVEN a sidecar's training section with numbers, a bool and instance types
    overrides = TrainingOverrides(
        num_train_epochs=2, learning_rate=1e-4, lora_r=8, qlora=True, instance_types=["ml.g6.2xlarge"]
    )
    # WHEN the training request is built
    hyperparameters = training_job(_settings(), RUN_ID, DATA, overrides, 0).request["HyperParameters"]
    # THEN every value is a string, bools in the lower case the container parses, unset ones left out
    assert hyperparameters == {
        "max_seq_length": "2048",
        "num_train_epochs": "2.0",
        "learning_rate": "0.0001",
        "lora_r": "8",
        "qlora": "true",
    }
    assert (
        training_job(_settings(), RUN_ID, DATA, TrainingOverrides(qlora=False), 0).request["HyperParameters"]["qlora"]
        == "false"
    )


def test_a_sidecar_sequence_length_wins_over_the_stack_default_up_to_it() -> None:
    overrides = TrainingOverrides(max_seq_length=1024)
    hyperparameters = training_job(_settings(max_seq_length=4096), RUN_ID, DATA, overrides, 0).request[
        "HyperParameters"
    ]
    assert hyperparameters == {"max_seq_length": "1024"}
    # the stack's MaxSeqLength is also the cap: a longer one is never requested
    with pytest.raises(InvalidConfiguration, match="training.max_seq_length: 8192 is over the stack's MaxSeqLength"):
        training_job(_settings(max_seq_length=4096), RUN_ID, DATA, TrainingOverrides(max_seq_length=8192), 0)


def test_spot_training_waits_for_capacity_within_max_wait() -> None:
    # GIVEN spot on (the default) WHEN the request is built
    spec = training_job(_settings(), RUN_ID, DATA, TrainingOverrides(), 0)
    # THEN it asks for spot with MaxWait >= MaxRuntime, and the state machine waits a margin longer than MaxWait
    assert spec.request["EnableManagedSpotTraining"] is True
    assert spec.request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert spec.timeout_s == 7200 + _wait_margin() and _wait_margin() > 0


def test_on_demand_training_has_no_max_wait() -> None:
    spec = training_job(_settings(use_spot=False), RUN_ID, DATA, TrainingOverrides(), 0)
    assert spec.request["EnableManagedSpotTraining"] is False
    assert spec.request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert spec.timeout_s == 3600 + _wait_margin()


def test_jobs_run_isolated_encrypted_and_tagged_with_the_stack() -> None:
    request = training_job(_settings(), RUN_ID, DATA, TrainingOverrides(), 0).request
    assert request["EnableNetworkIsolation"] is True
    assert request["EnableInterContainerTrafficEncryption"] is True
    assert request["Tags"] == [
        {"Key": "tuneplane:stack", "Value": "tuneplane-test"},
        {"Key": "tuneplane:run-id", "Value": RUN_ID},
        {"Key": "tuneplane:stage", "Value": "train"},
    ]


def test_a_kms_key_encrypts_outputs_and_ebs_volumes() -> None:
    # GIVEN a stack with a KMS key and an instance type with an EBS volume (no instance storage)
    settings = _settings(kms_key_arn=KMS, training_instance_types="ml.m5.xlarge")
    # WHEN the training request is built THEN output and volume use the key
    request = training_job(settings, RUN_ID, DATA, TrainingOverrides(), 0).request
    assert request["OutputDataConfig"]["KmsKeyId"] == KMS
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == KMS
    # AND without a key neither field is there (SageMaker's default encryption applies)
    request = training_job(_settings(), RUN_ID, DATA, TrainingOverrides(), 0).request
    assert "KmsKeyId" not in request["OutputDataConfig"] and "VolumeKmsKeyId" not in request["ResourceConfig"]


@pytest.mark.parametrize(
    "instance_type",
    [
        "ml.g5.2xlarge",
        "ml.g6.2xlarge",
        "ml.g6e.2xlarge",
        "ml.p4d.24xlarge",
        "ml.p4de.24xlarge",
        "ml.p5.48xlarge",
        "ml.g4dn.xlarge",
        "ml.m5d.large",
        "ml.p3dn.24xlarge",
        "ml.trn1.32xlarge",
        "ml.p6-b200.48xlarge",
    ],
)
def test_no_volume_key_on_instance_types_with_local_storage(instance_type: str) -> None:
    # GIVEN a stack with a KMS key and a training or processing instance type with local NVMe storage
    settings = _settings(
        kms_key_arn=KMS, training_instance_types=instance_type, processing_instance_type=instance_type
    )
    # WHEN the requests are built
    training = training_job(settings, RUN_ID, DATA, TrainingOverrides(), 0).request
    merge = merge_job(settings, RUN_ID, "s3://b/a.tar.gz", None).request
    # THEN no VolumeKmsKeyId is sent (SageMaker refuses one there), and the outputs are still encrypted with the key
    assert "VolumeKmsKeyId" not in training["ResourceConfig"]
    assert "VolumeKmsKeyId" not in merge["ProcessingResources"]["ClusterConfig"]
    assert training["OutputDataConfig"]["KmsKeyId"] == merge["ProcessingOutputConfig"]["KmsKeyId"] == KMS


def test_each_attempt_sends_the_volume_key_only_where_its_instance_type_takes_one() -> None:
    # GIVEN a fallback list mixing an EBS instance type and local-storage ones
    settings = _settings(kms_key_arn=KMS, training_instance_types="ml.g5.2xlarge,ml.m5.xlarge")
    # WHEN each attempt's request is built THEN the key follows each attempt's instance type
    first, second = (training_job(settings, RUN_ID, DATA, TrainingOverrides(), n).request for n in (0, 1))
    assert "VolumeKmsKeyId" not in first["ResourceConfig"]
    assert second["ResourceConfig"]["VolumeKmsKeyId"] == KMS


def test_each_attempt_uses_the_next_instance_type_and_knows_whether_another_is_left() -> None:
    settings = _settings()
    specs = [training_job(settings, RUN_ID, DATA, TrainingOverrides(), attempt) for attempt in range(3)]
    assert [s.instance_type for s in specs] == ["ml.g5.2xlarge", "ml.g6.2xlarge", "ml.p4d.24xlarge"]
    assert [s.request["ResourceConfig"]["InstanceType"] for s in specs] == [s.instance_type for s in specs]
    assert [s.has_fallback for s in specs] == [True, True, False]
    assert [s.attempt for s in specs] == [0, 1, 2]
    assert len({s.request["TrainingJobName"] for s in specs}) == 3


def test_the_sidecar_instance_list_replaces_the_stack_list() -> None:
    overrides = TrainingOverrides(instance_types=["ml.g6e.xlarge"])
    spec = training_job(_settings(allowed_training_instance_types="ml.g6e.xlarge"), RUN_ID, DATA, overrides, 0)
    assert spec.instance_type == "ml.g6e.xlarge" and spec.has_fallback is False
    assert "instance_types" not in spec.request["HyperParameters"]


def test_after_the_last_instance_type_a_new_round_starts_from_the_first() -> None:
    # GIVEN three instance types, all tried (the run then waited for capacity: QueueForCapacity)
    settings = _settings()
    types = settings.instance_types
    assert len(types) == 3
    # WHEN the next attempts are made THEN they go round the list again, each job with its own name, and only
    # the last of each round has no fallback (the state machine waits for capacity after it)
    specs = [training_job(settings, RUN_ID, DATA, TrainingOverrides(), attempt) for attempt in range(7)]
    assert [s.instance_type for s in specs] == [*types, *types, types[0]]
    assert [s.has_fallback for s in specs] == [True, True, False, True, True, False, True]
    assert len({s.request["TrainingJobName"] for s in specs}) == 7


# ---------------------------------------------------------------------------------------------------------------------
# Processing jobs


def _inputs(request: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {i["InputName"]: (i["S3Input"]["S3Uri"], i["S3Input"]["LocalPath"]) for i in request["ProcessingInputs"]}


def _outputs(request: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        o["OutputName"]: (o["S3Output"]["S3Uri"], o["S3Output"]["LocalPath"])
        for o in request["ProcessingOutputConfig"]["Outputs"]
    }


def test_merge_reads_base_adapter_and_eval_and_writes_the_merged_model() -> None:
    # GIVEN the training job's model artifacts WHEN the merge request is built
    adapter = f"s3://{BUCKET}/runs/{RUN_ID}/train/{job_name(RUN_ID, Stage.TRAIN)}/output/model.tar.gz"
    spec = merge_job(_settings(), RUN_ID, adapter, DATA["eval_uri"])
    request = spec.request
    # THEN each input is mounted under /opt/ml/processing/input/<name> and its directory passed as --<name>_dir
    assert _inputs(request) == {
        "model": (f"s3://{BUCKET}/models/tiny/", "/opt/ml/processing/input/model"),
        "adapter": (adapter, "/opt/ml/processing/input/adapter"),
        "eval": (DATA["eval_uri"], "/opt/ml/processing/input/eval"),
    }
    assert _outputs(request) == {
        "merged": (f"s3://{BUCKET}/runs/{RUN_ID}/merged/", "/opt/ml/processing/output/merged"),
    }
    assert request["AppSpecification"]["ContainerArguments"] == [
        "--model_dir=/opt/ml/processing/input/model",
        "--adapter_dir=/opt/ml/processing/input/adapter",
        "--eval_dir=/opt/ml/processing/input/eval",
        "--output_dir=/opt/ml/processing/output/merged",
        "--failure_file=/opt/ml/output/message",
    ]
    assert request["ProcessingJobName"] == job_name(RUN_ID, Stage.MERGE)
    assert request["AppSpecification"]["ImageUri"].endswith("tuneplane-merge:1")
    assert request["NetworkConfig"] == {"EnableNetworkIsolation": True, "EnableInterContainerTrafficEncryption": True}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}
    assert request["ProcessingResources"]["ClusterConfig"] == {
        "InstanceCount": 1,
        "InstanceType": "ml.g5.2xlarge",
        "VolumeSizeInGB": 100,
    }
    assert {"Key": "tuneplane:stack", "Value": "tuneplane-test"} in request["Tags"]
    assert spec.timeout_s == 1800 + _wait_margin() and spec.instance_type == "ml.g5.2xlarge"


def test_merge_without_an_eval_split_has_no_eval_input() -> None:
    request = merge_job(_settings(), RUN_ID, "s3://b/adapter.tar.gz", None).request
    assert set(_inputs(request)) == {"model", "adapter"}
    assert not any(a.startswith("--eval_dir=") for a in request["AppSpecification"]["ContainerArguments"])


def test_processing_failures_go_to_the_exit_message_file() -> None:
    # SageMaker Processing shows the first 1 KB of /opt/ml/output/message as the job's ExitMessage
    assert EXIT_MESSAGE_FILE == "/opt/ml/output/message"
    merged = f"s3://{BUCKET}/runs/{RUN_ID}/merged/"
    for spec in (
        merge_job(_settings(), RUN_ID, "s3://b/a.tar.gz", None),
        quantize_job(_settings(), RUN_ID, merged, DATA),
        evaluate_job(_settings(), RUN_ID, merged, str(DATA["eval_uri"]), EvaluationOverrides()),
    ):
        assert "--failure_file=/opt/ml/output/message" in spec.request["AppSpecification"]["ContainerArguments"]


def test_processing_jobs_use_the_kms_key() -> None:
    settings = _settings(kms_key_arn=KMS, processing_instance_type="ml.m5.xlarge")
    request = merge_job(settings, RUN_ID, "s3://b/a.tar.gz", None).request
    assert request["ProcessingOutputConfig"]["KmsKeyId"] == KMS
    assert request["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == KMS


def test_quantize_calibrates_on_the_train_split() -> None:
    merged = f"s3://{BUCKET}/runs/{RUN_ID}/merged/"
    request = quantize_job(_settings(), RUN_ID, merged, DATA).request
    assert _inputs(request) == {
        "model": (merged, "/opt/ml/processing/input/model"),
        "calibration": (DATA["train_uri"], "/opt/ml/processing/input/calibration"),
        "eval": (DATA["eval_uri"], "/opt/ml/processing/input/eval"),
    }
    assert _outputs(request)["quantized"][0] == f"s3://{BUCKET}/runs/{RUN_ID}/quantized/"
    assert (
        "--calibration_dir=/opt/ml/processing/input/calibration" in request["AppSpecification"]["ContainerArguments"]
    )


def test_quantize_without_an_image_is_a_configuration_error() -> None:
    with pytest.raises(InvalidConfiguration, match="QuantizeImageUri is empty"):
        quantize_job(_settings(quantize_image_uri=None), RUN_ID, "s3://b/merged/", DATA)


def test_evaluate_passes_the_gate_thresholds_with_sidecar_overrides_last() -> None:
    # GIVEN stack thresholds and a sidecar that changes the primary metric and the minimum score
    settings = _settings(min_score=0.2, min_improvement_over_base=0.05)
    overrides = EvaluationOverrides(primary_metric="token_f1", min_score=0.6, max_new_tokens=64)
    merged = f"s3://{BUCKET}/runs/{RUN_ID}/merged/"
    # WHEN the evaluate request is built
    request = evaluate_job(settings, RUN_ID, merged, str(DATA["eval_uri"]), overrides).request
    # THEN the candidate, base, eval and graders.json are mounted and the arguments carry the sidecar's values
    assert _inputs(request) == {
        "candidate": (merged, "/opt/ml/processing/input/candidate"),
        "base": (f"s3://{BUCKET}/models/tiny/", "/opt/ml/processing/input/base"),
        "eval": (DATA["eval_uri"], "/opt/ml/processing/input/eval"),
        "graders": (f"s3://{BUCKET}/runs/{RUN_ID}/evaluation-input/graders/", "/opt/ml/processing/input/graders"),
    }
    assert _outputs(request) == {
        "evaluation": (f"s3://{BUCKET}/runs/{RUN_ID}/evaluation/", "/opt/ml/processing/output/evaluation")
    }
    assert request["AppSpecification"]["ContainerArguments"] == [
        "--candidate_dir=/opt/ml/processing/input/candidate",
        "--base_dir=/opt/ml/processing/input/base",
        "--eval_dir=/opt/ml/processing/input/eval",
        "--graders_dir=/opt/ml/processing/input/graders",
        "--output_dir=/opt/ml/processing/output/evaluation",
        "--failure_file=/opt/ml/output/message",
        "--primary_metric=token_f1",
        "--min_score=0.6",
        "--min_improvement_over_base=0.05",
        "--max_regression_drop=0.1",
        "--max_quantization_drop=0.05",
        "--max_new_tokens=64",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Metric definitions


def test_metric_definitions_match_the_training_container() -> None:
    # GIVEN the training container's own list of the metric lines it prints
    container = _load_train_container()
    # THEN the training request asks SageMaker for exactly those
    assert container.METRIC_DEFINITIONS == METRIC_DEFINITIONS


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "step=10; train_loss=1.234; learning_rate=2e-05; grad_norm=0.5;",
            {"train_loss": "1.234", "learning_rate": "2e-05", "grad_norm": "0.5"},
        ),
        (
            "step=20; eval_loss=nan; tokens_per_second=1520.5; gpu_memory_gb=17;",
            {"eval_loss": "nan", "tokens_per_second": "1520.5", "gpu_memory_gb": "17"},
        ),
        ("step=30; eval_train_loss=1;", {}),  # a longer name that ends in a metric's name is not that metric
    ],
)
def test_metric_regexes_read_the_containers_metric_lines(line: str, expected: dict[str, str]) -> None:
    found = {}
    for definition in METRIC_DEFINITIONS:
        match = re.search(definition["Regex"], line)
        if match:
            found[definition["Name"]] = match.group(1)
    assert found == expected


# ---------------------------------------------------------------------------------------------------------------------
# The requests against SageMaker's API model


def _check_against_the_api(operation: str, request: dict[str, Any]) -> None:
    """Raises botocore's ParamValidationError for an unknown member, a missing required one or a wrong type."""
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model(operation).input_shape)


def test_every_request_is_a_valid_sagemaker_call() -> None:
    # GIVEN every request a run can make, with a KMS key so the optional encryption members are there too
    settings = _settings(kms_key_arn=KMS)
    merged = f"s3://{BUCKET}/runs/{RUN_ID}/merged/"
    overrides = EvaluationOverrides(primary_metric="token_f1", min_score=0.5)
    processing = [
        merge_job(settings, RUN_ID, "s3://b/model.tar.gz", DATA["eval_uri"]),
        quantize_job(settings, RUN_ID, merged, DATA),
        evaluate_job(settings, RUN_ID, merged, str(DATA["eval_uri"]), overrides),
    ]
    # THEN each one matches the API's request shape
    for use_spot in (True, False):
        spec = training_job(
            _settings(kms_key_arn=KMS, use_spot=use_spot), RUN_ID, DATA, TrainingOverrides(qlora=True), 1
        )
        _check_against_the_api("CreateTrainingJob", spec.request)
    for spec in processing:
        _check_against_the_api("CreateProcessingJob", spec.request)
