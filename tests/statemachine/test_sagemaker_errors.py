"""The SageMaker ``.sync`` tasks fail with the error names Step Functions' optimized integration uses, and each
Retry and capacity-fallback rule of the ASL that names them fires.

The optimized integration names every error the service returns ``SageMaker.AmazonSageMakerException`` (throttling,
validation, a name already in use), except a quota: ``SageMaker.ResourceLimitExceededException``. A Retry on
``SageMaker.ThrottlingException`` would never fire on AWS.

The tests of one stack (template parameters) share it (harness.StackPool; the tests are ordered by stack): each test
has a run id of its own and asserts on its run's history, jobs and events only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from moto.core.exceptions import JsonRESTError
from moto.sagemaker.models import SageMakerModelBackend
from tests.statemachine.harness import Cloud

from tuneplane.logic.job_requests import job_prefix

KEY = "incoming/reverse.jsonl"
CREATE = {"train": "create_training_job", "merge": "create_processing_job", "evaluate": "create_processing_job"}


class _Throttled(JsonRESTError):
    def __init__(self) -> None:
        super().__init__("ThrottlingException", "Rate exceeded")


class _QuotaExceeded(JsonRESTError):
    def __init__(self, instance_type: str) -> None:
        super().__init__(
            "ResourceLimitExceeded",
            f"The account-level service limit '{instance_type} for training job usage' is 0 Instances, with current "
            "utilization of 0 Instances and a request delta of 1 Instances.",
        )


@contextmanager
def _failing_creates(method: str, fails: Callable[[dict[str, Any]], Exception | None]) -> Iterator[list[str]]:
    """``SageMakerModelBackend.<method>`` raises what ``fails(request)`` returns (when not None); yields the names of
    the jobs it was asked to create, failed or not."""
    created = getattr(SageMakerModelBackend, method)
    asked: list[str] = []

    def create(backend: SageMakerModelBackend, **kwargs: Any) -> Any:
        asked.append(kwargs.get("training_job_name") or kwargs["processing_job_name"])
        error = fails(kwargs)
        if error is not None:
            raise error
        return created(backend, **kwargs)

    with mock.patch.object(SageMakerModelBackend, method, create):
        yield asked


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """The stack of the test's parameters, shared with the other tests of that stack (the module docstring)."""
    return shared_cloud


def _start(cloud: Cloud, run_id: str, lines: list[str]) -> dict[str, Any]:
    cloud.disable_trigger()
    version = cloud.upload(KEY, lines)
    return cloud.run(
        run_id,
        {"run_id": run_id, "bucket": cloud.deployment.bucket_name, "key": KEY, "version_id": version, "rerun": True},
    )


def _task_failures(cloud: Cloud, execution_arn: str) -> list[str]:
    history = cloud.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [event["taskFailedEventDetails"]["error"] for event in history if "taskFailedEventDetails" in event]


@pytest.mark.parametrize("stage", sorted(CREATE))
def test_a_throttled_create_is_retried_under_the_integrations_error_name(
    cloud: Cloud, reversal_lines: list[str], stage: str
) -> None:
    # GIVEN SageMaker throttles the first request to create the stage's job
    throttled: list[str] = []

    def once(request: dict[str, Any]) -> Exception | None:
        name = request.get("training_job_name") or request["processing_job_name"]
        if name.rstrip("0123456789").endswith(f"-{stage}") and not throttled:
            throttled.append(name)
            return _Throttled()
        return None

    # WHEN a run goes through the pipeline
    with _failing_creates(CREATE[stage], once):
        execution = _start(cloud, f"run-throttled-{stage}", reversal_lines)
    # THEN the task failed once as SageMaker.AmazonSageMakerException, was retried, and the run succeeded
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert _task_failures(cloud, execution["executionArn"]) == ["SageMaker.AmazonSageMakerException"]
    assert len([name for name, _ in cloud.jobs.started if name == throttled[0]]) == 1


def test_a_validation_error_is_not_blamed_on_the_data_and_fails_after_the_retries(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN SageMaker refuses every request to create the merge job (as it refuses a malformed request)
    def always(request: dict[str, Any]) -> Exception | None:
        return JsonRESTError("ValidationException", "1 validation error detected")

    # WHEN a run goes through the pipeline
    with _failing_creates("create_processing_job", always) as asked:
        execution = _start(cloud, "run-refused", reversal_lines)
    # THEN the request was tried 1 + 3 times (the ASL's MaxAttempts), and the run failed with SageMaker's own words
    assert execution["status"] == "FAILED"
    assert len([name for name in asked if name.startswith(f"{job_prefix('run-refused')}-")]) == len(asked) == 4
    assert set(_task_failures(cloud, execution["executionArn"])) >= {"SageMaker.AmazonSageMakerException"}
    [failed] = [
        e["detail"]
        for e in cloud.bus_events()
        if e["detail-type"] == "Run Failed" and e["detail"]["run_id"] == "run-refused"
    ]
    assert "ValidationException" in failed["message"] and "1 validation error detected" in failed["message"]


@pytest.mark.stack_parameters(FallbackTrainingInstanceTypes="ml.g6e.2xlarge")
def test_a_quota_of_zero_at_create_falls_back_to_the_next_instance_type(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN the account has no quota for the first training instance type: CreateTrainingJob itself is refused
    def no_quota(request: dict[str, Any]) -> Exception | None:
        instance_type = request["resource_config"]["InstanceType"]
        return _QuotaExceeded(instance_type) if instance_type == "ml.g5.2xlarge" else None

    # WHEN a run goes through the pipeline
    with _failing_creates("create_training_job", no_quota):
        execution = _start(cloud, "run-quota", reversal_lines)
    # THEN the refusal is the integration's quota error, not retried, and the next instance type trained the model
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert _task_failures(cloud, execution["executionArn"]) == ["SageMaker.ResourceLimitExceededException"]
    own = f"{job_prefix('run-quota')}-"
    assert [kind for name, kind in cloud.jobs.started if name.startswith(own) and "-train" in name] == [
        "ml.g6e.2xlarge"
    ]
    starts = [
        e["detail"]
        for e in cloud.bus_events()
        if e["detail"]["stage"] == "train" and e["detail"]["run_id"] == "run-quota"
    ]
    assert any("ml.g6e.2xlarge" in note for detail in starts for note in detail.get("notes") or []), json.dumps(starts)
