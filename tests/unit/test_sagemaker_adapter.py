"""adapters/sagemaker.stop_running_jobs: which Stop*Job errors mean "finished meanwhile" (a ValidationException for a
job whose own status is no longer InProgress) and which are real, against botocore's Stubber (it checks each request
and response against the service model)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tuneplane.adapters import sagemaker
from tuneplane.errors import OrchestrationError

PREFIX = "tp-run1-"
NOW = "2026-12-05T00:00:00Z"


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    client = boto3.client("sagemaker", region_name="us-east-1")
    monkeypatch.setattr(sagemaker, "sagemaker_client", lambda: client)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def _training(stub: Stubber, *names: str) -> None:
    summaries: list[dict[str, Any]] = [
        {"TrainingJobName": n, "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:training-job/{n}"} for n in names
    ]
    for summary in summaries:
        summary.update(CreationTime=NOW, TrainingJobStatus="InProgress")
    stub.add_response(
        "list_training_jobs",
        {"TrainingJobSummaries": summaries},
        {"NameContains": PREFIX, "StatusEquals": "InProgress"},
    )


def _processing(stub: Stubber, *names: str) -> None:
    summaries = [
        {
            "ProcessingJobName": n,
            "ProcessingJobArn": f"arn:aws:sagemaker:us-east-1:1:processing-job/{n}",
            "CreationTime": NOW,
            "ProcessingJobStatus": "InProgress",
        }
        for n in names
    ]
    stub.add_response(
        "list_processing_jobs",
        {"ProcessingJobSummaries": summaries},
        {"NameContains": PREFIX, "StatusEquals": "InProgress"},
    )


def _described_training(stub: Stubber, name: str, status: str) -> None:
    stub.add_response(
        "describe_training_job",
        {
            "TrainingJobName": name,
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:training-job/{name}",
            "ModelArtifacts": {"S3ModelArtifacts": "s3://bucket/model.tar.gz"},
            "TrainingJobStatus": status,
            "SecondaryStatus": status,
            "AlgorithmSpecification": {"TrainingInputMode": "File"},
            "ResourceConfig": {"VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "CreationTime": NOW,
        },
        {"TrainingJobName": name},
    )


def test_a_job_that_finished_between_list_and_stop_is_not_an_error(stub: Stubber) -> None:
    # GIVEN a training job listed InProgress that completed before the stop, and a processing job still running
    _training(stub, f"{PREFIX}train")
    stub.add_client_error(
        "stop_training_job",
        service_error_code="ValidationException",
        service_message="The request was rejected because the training job is in status Completed.",
        http_status_code=400,
        expected_params={"TrainingJobName": f"{PREFIX}train"},
    )
    _described_training(stub, f"{PREFIX}train", "Completed")
    _processing(stub, f"{PREFIX}merge")
    stub.add_response("stop_processing_job", {}, {"ProcessingJobName": f"{PREFIX}merge"})
    # WHEN the run's jobs are stopped
    stopped = sagemaker.stop_running_jobs(PREFIX)
    # THEN only the running one counts as stopped, and the finished one raised nothing
    assert stopped == [f"{PREFIX}merge"]


def test_any_other_validation_error_from_a_stop_is_raised_with_its_message(stub: Stubber) -> None:
    # GIVEN no training job, and a processing job whose stop is refused for another reason than its status
    _training(stub)
    _processing(stub, f"{PREFIX}merge")
    message = f"Could not find processing job 'arn:aws:sagemaker:us-east-1:1:processing-job/{PREFIX}merge'."
    stub.add_client_error(
        "stop_processing_job",
        service_error_code="ValidationException",
        service_message=message,
        http_status_code=400,
        expected_params={"ProcessingJobName": f"{PREFIX}merge"},
    )
    stub.add_client_error(
        "describe_processing_job",
        service_error_code="ValidationException",
        service_message="Requested resource not found.",
        http_status_code=400,
        expected_params={"ProcessingJobName": f"{PREFIX}merge"},
    )
    # WHEN the run's jobs are stopped, THEN the failure is an OrchestrationError that keeps the stop's message
    with pytest.raises(OrchestrationError, match="Could not find processing job"):
        sagemaker.stop_running_jobs(PREFIX)


def test_a_refused_stop_of_a_job_still_running_is_raised(stub: Stubber) -> None:
    # GIVEN a processing job whose stop is refused while it is still InProgress (whatever SageMaker's wording)
    _training(stub)
    _processing(stub, f"{PREFIX}merge")
    stub.add_client_error(
        "stop_processing_job",
        service_error_code="ValidationException",
        service_message="Some other reason.",
        http_status_code=400,
        expected_params={"ProcessingJobName": f"{PREFIX}merge"},
    )
    stub.add_response(
        "describe_processing_job",
        {
            "ProcessingJobName": f"{PREFIX}merge",
            "ProcessingJobArn": f"arn:aws:sagemaker:us-east-1:1:processing-job/{PREFIX}merge",
            "ProcessingJobStatus": "InProgress",
            "CreationTime": NOW,
            "ProcessingResources": {
                "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.g5.2xlarge", "VolumeSizeInGB": 30}
            },
            "AppSpecification": {"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/evaluate:1"},
        },
        {"ProcessingJobName": f"{PREFIX}merge"},
    )
    # WHEN the run's jobs are stopped, THEN it is not taken for a finished job
    with pytest.raises(OrchestrationError, match="Some other reason"):
        sagemaker.stop_running_jobs(PREFIX)
