"""The SageMaker job requests of one run: names, channels, hyperparameters, outputs, all under ``runs/<run-id>/``.

The state machine passes each request on verbatim to ``createTrainingJob.sync`` / ``createProcessingJob.sync``;
building them here (not in the ASL) keeps them typed and tested. Every job runs with network isolation, encrypted
volumes and encrypted inter-container traffic.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from tuneplane.config import PipelineSettings
from tuneplane.errors import InvalidConfiguration
from tuneplane.logic import run_limits
from tuneplane.logic.instance_storage import has_local_storage
from tuneplane.models.events import Stage
from tuneplane.models.pipeline import EvaluationOverrides, JobSpec, TrainingOverrides

JOB_NAME_MAX = 63  # SageMaker job names: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
_NOT_NAME = re.compile(r"[^a-zA-Z0-9]+")
PROCESSING_INPUT = "/opt/ml/processing/input"
PROCESSING_OUTPUT = "/opt/ml/processing/output"
EXIT_MESSAGE_FILE = "/opt/ml/output/message"  # SageMaker Processing shows its first 1 KB as ExitMessage
# Must match containers/train/train.py METRIC_DEFINITIONS (a test compares them): the metric lines it prints.
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\b{name}={_NUMBER};"}
    for name in ("train_loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "gpu_memory_gb")
    # printed once at the end: the step handed on and its eval loss, the last step run, the steps early stopping saved
    + ("best_step", "best_eval_loss", "last_step", "steps_saved")
]


def job_prefix(run_id: str) -> str:
    """The part of every job name of this run: readable start of the run id plus 10 hex of its hash."""
    slug = _NOT_NAME.sub("-", run_id).strip("-")[:30].strip("-") or "run"
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


def job_name(run_id: str, stage: Stage, attempt: int = 0) -> str:
    name = f"{job_prefix(run_id)}-{stage.value}{attempt if stage is Stage.TRAIN else ''}"
    if len(name) > JOB_NAME_MAX:  # cannot happen with a 30-character slug; a guard for later changes
        raise InvalidConfiguration(f"job name {name!r} longer than {JOB_NAME_MAX} characters")
    return name


def run_uri(settings: PipelineSettings, run_id: str, *parts: str) -> str:
    return f"s3://{settings.data_bucket}/{settings.runs_prefix}{run_id}/" + "/".join(parts)


def _tags(settings: PipelineSettings, run_id: str, stage: Stage) -> list[dict[str, str]]:
    """``tuneplane:stack`` is what the stack's IAM policies allow jobs to be created, watched and stopped by."""
    return [
        {"Key": "tuneplane:stack", "Value": settings.stack_name},
        {"Key": "tuneplane:run-id", "Value": run_id},
        {"Key": "tuneplane:stage", "Value": stage.value},
    ]


def _s3_channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }


def _kms(settings: PipelineSettings, key: str) -> dict[str, str]:
    return {key: settings.kms_key_arn} if settings.kms_key_arn else {}


def _volume_kms(settings: PipelineSettings, instance_type: str) -> dict[str, str]:
    """The volume key, except on instance types with local NVMe storage: SageMaker refuses a ``VolumeKmsKeyId``
    there (the instance encrypts its NVMe volumes with a hardware module)."""
    return {} if has_local_storage(instance_type) else _kms(settings, "VolumeKmsKeyId")


def training_job(
    settings: PipelineSettings,
    run_id: str,
    data: dict[str, str | None],
    overrides: TrainingOverrides,
    attempt: int,
) -> JobSpec:
    """The training job of attempt ``attempt`` (0-based): attempt n uses the n-th instance type of the list, round
    after round (after a wait for capacity, the list is tried again from its first type; ``has_fallback`` is False
    on its last).

    Never outside the stack's caps, even if the Validate stage were bypassed (an execution started by hand): a
    sidecar's instance type, steps, epochs or sequence length beyond them is an error, and with neither epochs nor
    steps set the job gets the container's default epochs only where MaxTrainingEpochs allows them.
    """
    problems = run_limits.training_problems(overrides, settings)
    if problems:
        raise InvalidConfiguration(f"training request outside the stack's limits: {'; '.join(problems)}")
    instance_types = overrides.instance_types or settings.instance_types
    instance_type = instance_types[attempt % len(instance_types)]
    hyperparameters = {"max_seq_length": str(settings.max_seq_length), **overrides.hyperparameters()}
    if overrides.max_steps is None and overrides.num_train_epochs is None:
        epochs = run_limits.effective_epochs(overrides, settings)
        if epochs < run_limits.DEFAULT_EPOCHS:
            hyperparameters["num_train_epochs"] = str(epochs)
    channels = [_s3_channel("train", str(data["train_uri"])), _s3_channel("model", settings.base_model_s3_uri)]
    if data.get("eval_uri"):
        channels.append(_s3_channel("eval", str(data["eval_uri"])))
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": settings.max_training_runtime_s}
    if settings.use_spot:  # MaxWait counts the time waiting for spot capacity too
        stopping["MaxWaitTimeInSeconds"] = 2 * settings.max_training_runtime_s
    request: dict[str, Any] = {
        "TrainingJobName": job_name(run_id, Stage.TRAIN, attempt),
        "AlgorithmSpecification": {
            "TrainingImage": settings.train_image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": settings.sagemaker_role_arn,
        "HyperParameters": hyperparameters,
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": run_uri(settings, run_id, "train", ""), **_kms(settings, "KmsKeyId")},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": settings.volume_size_gb,
            **_volume_kms(settings, instance_type),
        },
        "StoppingCondition": stopping,
        "CheckpointConfig": {
            "S3Uri": run_uri(settings, run_id, "checkpoints", ""),
            "LocalPath": "/opt/ml/checkpoints",
        },
        "EnableManagedSpotTraining": settings.use_spot,
        "EnableNetworkIsolation": True,
        "EnableInterContainerTrafficEncryption": True,
        "Tags": _tags(settings, run_id, Stage.TRAIN),
    }
    wait = stopping.get("MaxWaitTimeInSeconds", settings.max_training_runtime_s)
    return JobSpec(
        request=request,
        timeout_s=wait + settings.job_wait_margin_s,
        attempt=attempt,
        instance_type=instance_type,
        has_fallback=(attempt + 1) % len(instance_types) != 0,
    )


def _processing_input(name: str, uri: str) -> dict[str, Any]:
    return {
        "InputName": name,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": f"{PROCESSING_INPUT}/{name}",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
        },
    }


def _processing_output(name: str, uri: str) -> dict[str, Any]:
    return {
        "OutputName": name,
        "S3Output": {"S3Uri": uri, "LocalPath": f"{PROCESSING_OUTPUT}/{name}", "S3UploadMode": "EndOfJob"},
    }


def _processing_job(
    settings: PipelineSettings,
    run_id: str,
    stage: Stage,
    image: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    arguments: dict[str, str],
    *,
    instance_type: str | None = None,
    volume_size_gb: int | None = None,
    max_runtime_s: int | None = None,
) -> JobSpec:
    instance_type = instance_type or settings.processing_instance_type
    max_runtime_s = max_runtime_s or settings.max_processing_runtime_s
    paths = {f"{name}_dir": f"{PROCESSING_INPUT}/{name}" for name in inputs}
    paths |= {"output_dir": f"{PROCESSING_OUTPUT}/{next(iter(outputs))}", "failure_file": EXIT_MESSAGE_FILE}
    container_arguments = [f"--{name}={value}" for name, value in {**paths, **arguments}.items()]
    request: dict[str, Any] = {
        "ProcessingJobName": job_name(run_id, stage),
        "RoleArn": settings.sagemaker_role_arn,
        "AppSpecification": {"ImageUri": image, "ContainerArguments": container_arguments},
        "ProcessingInputs": [_processing_input(name, uri) for name, uri in inputs.items()],
        "ProcessingOutputConfig": {
            "Outputs": [_processing_output(name, uri) for name, uri in outputs.items()],
            **_kms(settings, "KmsKeyId"),
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": instance_type,
                "VolumeSizeInGB": volume_size_gb or settings.volume_size_gb,
                **_volume_kms(settings, instance_type),
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
        "NetworkConfig": {"EnableNetworkIsolation": True, "EnableInterContainerTrafficEncryption": True},
        "Tags": _tags(settings, run_id, stage),
    }
    return JobSpec(request=request, timeout_s=max_runtime_s + settings.job_wait_margin_s, instance_type=instance_type)


def merge_job(settings: PipelineSettings, run_id: str, adapter_uri: str, eval_uri: str | None) -> JobSpec:
    inputs = {"model": settings.base_model_s3_uri, "adapter": adapter_uri}
    if eval_uri:
        inputs["eval"] = eval_uri
    outputs = {"merged": run_uri(settings, run_id, "merged", "")}
    return _processing_job(settings, run_id, Stage.MERGE, settings.merge_image_uri, inputs, outputs, {})


def quantize_job(settings: PipelineSettings, run_id: str, merged_uri: str, data: dict[str, str | None]) -> JobSpec:
    if not settings.quantize_image_uri:
        raise InvalidConfiguration("quantization is on but QuantizeImageUri is empty")
    inputs = {"model": merged_uri, "calibration": str(data["train_uri"])}
    if data.get("eval_uri"):
        inputs["eval"] = str(data["eval_uri"])
    outputs = {"quantized": run_uri(settings, run_id, "quantized", "")}
    return _processing_job(settings, run_id, Stage.QUANTIZE, settings.quantize_image_uri, inputs, outputs, {})


def graders_input_uri(settings: PipelineSettings, run_id: str) -> str:
    """The folder of the evaluate job's graders.json (the Stage function writes it when the stage starts)."""
    return run_uri(settings, run_id, "evaluation-input", "graders", "")


def evaluate_job(
    settings: PipelineSettings,
    run_id: str,
    candidate_uri: str | None,
    eval_uri: str,
    overrides: EvaluationOverrides,
    unquantized_uri: str | None = None,
    adapter_uri: str | None = None,
) -> JobSpec:
    """The evaluate job: ``candidate_uri`` is the model as the endpoint will serve it, or, with ServeMode=lora, None
    and ``adapter_uri`` the run's adapter (the training job's model.tar.gz), which the job applies to the base as the
    endpoint does; ``unquantized_uri``, when the candidate is the quantized model, the merged model it was made from
    (what quantization cost is measured)."""
    if (candidate_uri is None) == (adapter_uri is None):
        raise ValueError("evaluate_job: give the candidate model or the adapter, one of the two")
    problems = run_limits.evaluation_problems(overrides, settings)
    if problems:  # the Validate stage rejects these first; a request is never built with a looser gate
        raise InvalidConfiguration(f"evaluation request looser than the stack's gate: {'; '.join(problems)}")
    inputs = {
        "candidate": candidate_uri or "",
        "adapter": adapter_uri or "",
        "base": settings.base_model_s3_uri,
        "eval": eval_uri,
        "graders": graders_input_uri(settings, run_id),
    }
    inputs = {name: uri for name, uri in inputs.items() if uri}
    if unquantized_uri:
        inputs["unquantized"] = unquantized_uri
    if settings.regression_set_s3_uri:
        inputs["regression"] = settings.regression_set_s3_uri
    outputs = {"evaluation": run_uri(settings, run_id, "evaluation", "")}
    arguments = {
        "primary_metric": settings.primary_metric,
        "min_score": str(settings.min_score),
        "min_improvement_over_base": str(settings.min_improvement_over_base),
        "max_regression_drop": str(settings.max_regression_drop),
        "max_quantization_drop": str(settings.max_quantization_drop),
        **overrides.arguments(),
    }
    return _processing_job(settings, run_id, Stage.EVALUATE, settings.evaluate_image_uri, inputs, outputs, arguments)


# A gzip file's data is assumed this many times its size when the job's volume is sized (JSONL compresses 5-10 times);
# the job measures its free disk when it starts and rejects data beyond it as too_large_to_validate, never a crash.
GZIP_EXPANSION_ASSUMED = 10
# Bytes on the volume per byte of data besides the input copy: bench/validation_bounds.py measured validation writing
# 2.0 per input byte for chat data and 4.6 for the tiniest prompt/completion lines.
VALIDATION_DISK_PER_BYTE = 5
# Inside the input's LocalPath: File-mode inputs are copied onto the ML storage volume (the SageMaker API reference,
# ProcessingS3Input.S3InputMode), so the spill and the splits are there too, not on the container's root disk.
VALIDATION_WORK_DIR = f"{PROCESSING_INPUT}/job/.work"
MAX_VOLUME_GB = 16384  # SageMaker's ProcessingClusterConfig VolumeSizeInGB maximum


def validation_volume_gb(data_bytes: int, gzip: bool, max_data_bytes: int | None = None) -> int:
    """The validation job's ML storage: the pinned copy, the spill and the splits, plus 10 GB of room; a gzip file's
    data is never assumed larger than it may expand to (max_decompressed_bytes)."""
    data = data_bytes * (GZIP_EXPANSION_ASSUMED if gzip else 1)
    if gzip and max_data_bytes is not None:
        data = min(data, max_data_bytes)
    return min(MAX_VOLUME_GB, -(-(data_bytes + VALIDATION_DISK_PER_BYTE * data) // 1024**3) + 10)


def validate_job(
    settings: PipelineSettings,
    run_id: str,
    input_uri: str,
    data_bytes: int,
    gzip: bool,
    max_data_bytes: int | None = None,
) -> JobSpec:
    """The Processing job that validates a dataset handed on by the Validate Lambda (logic/validation_engine.py)."""
    if not settings.validate_image_uri:
        raise InvalidConfiguration(
            "a dataset beyond the Validate Lambda needs the validation image (VALIDATE_IMAGE_URI)"
        )
    outputs = {
        "validation": run_uri(settings, run_id, "validation", ""),
        "data": run_uri(settings, run_id, "data", ""),
    }
    arguments = {
        "data_dir": f"{PROCESSING_OUTPUT}/data",
        "work_dir": VALIDATION_WORK_DIR,
        "max_runtime_s": str(settings.max_validation_runtime_s),
    }
    return _processing_job(
        settings,
        run_id,
        Stage.VALIDATE,
        settings.validate_image_uri,
        {"job": input_uri},
        outputs,
        arguments,
        instance_type=settings.validation_instance_type,
        volume_size_gb=validation_volume_gb(data_bytes, gzip, max_data_bytes),
        max_runtime_s=settings.max_validation_runtime_s,
    )
