"""SageMaker calls of the failure path: find and stop a run's jobs that are still running."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from tuneplane.errors import OrchestrationError

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient


@cache
def sagemaker_client() -> SageMakerClient:
    """Created lazily so tests start moto first; call sagemaker_client.cache_clear() between tests."""
    return boto3.client("sagemaker")


def describe_training_job(name: str) -> dict[str, Any]:
    """The job's description (final metrics, billable time); datetimes as they come from boto3."""
    try:
        return dict(sagemaker_client().describe_training_job(TrainingJobName=name))
    except ClientError as exc:
        raise OrchestrationError(f"describe training job {name}: {exc}") from exc


# (list call, its summaries key, name key, stop call, describe call, status key): training jobs, processing jobs.
_JOB_KINDS = (
    (
        "list_training_jobs",
        "TrainingJobSummaries",
        "TrainingJobName",
        "stop_training_job",
        "describe_training_job",
        "TrainingJobStatus",
    ),
    (
        "list_processing_jobs",
        "ProcessingJobSummaries",
        "ProcessingJobName",
        "stop_processing_job",
        "describe_processing_job",
        "ProcessingJobStatus",
    ),
)


def _status(client: Any, describe_call: str, name_key: str, name: str, status_key: str) -> str | None:
    """The job's status now, or None when it cannot be described."""
    try:
        return str(getattr(client, describe_call)(**{name_key: name})[status_key])
    except ClientError:
        return None


def stop_running_jobs(name_prefix: str) -> list[str]:
    """Stop every training and processing job whose name starts with ``name_prefix`` and is still InProgress.

    Returns the names stopped. A job that finished between the listing and its stop is not an error: SageMaker
    refuses that stop with a ValidationException, and the job's own status (described then) says it is no longer
    InProgress. Any other failure to list or stop is an ``OrchestrationError`` that carries SageMaker's message."""
    client: Any = sagemaker_client()
    stopped: list[str] = []
    try:
        for list_call, summaries_key, name_key, stop_call, describe_call, status_key in _JOB_KINDS:
            listed = getattr(client, list_call)(NameContains=name_prefix, StatusEquals="InProgress")
            for summary in listed[summaries_key]:
                name = summary[name_key]
                if not name.startswith(name_prefix):
                    continue
                try:
                    getattr(client, stop_call)(**{name_key: name})
                    stopped.append(name)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "ValidationException":
                        raise
                    if _status(client, describe_call, name_key, name, status_key) in (None, "InProgress"):
                        raise  # refused for another reason than having finished: the stop's own error
    except ClientError as exc:
        raise OrchestrationError(f"list or stop jobs {name_prefix}*: {exc}") from exc
    return stopped
