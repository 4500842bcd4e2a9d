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


def _finished_meanwhile(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ValidationException"


def stop_running_jobs(name_prefix: str) -> list[str]:
    """Stop every training and processing job whose name starts with ``name_prefix`` and is still InProgress.

    Returns the names stopped. A job that finished in the meantime is not an error."""
    client = sagemaker_client()
    stopped: list[str] = []
    try:
        training = client.list_training_jobs(NameContains=name_prefix, StatusEquals="InProgress")
        for summary in training["TrainingJobSummaries"]:
            name = summary["TrainingJobName"]
            if name.startswith(name_prefix):
                try:
                    client.stop_training_job(TrainingJobName=name)
                    stopped.append(name)
                except ClientError as exc:
                    if not _finished_meanwhile(exc):
                        raise
        processing = client.list_processing_jobs(NameContains=name_prefix, StatusEquals="InProgress")
        for job in processing["ProcessingJobSummaries"]:
            name = job["ProcessingJobName"]
            if name.startswith(name_prefix):
                try:
                    client.stop_processing_job(ProcessingJobName=name)
                    stopped.append(name)
                except ClientError as exc:
                    if not _finished_meanwhile(exc):
                        raise
    except ClientError as exc:
        raise OrchestrationError(f"list or stop jobs {name_prefix}*: {exc}") from exc
    return stopped
