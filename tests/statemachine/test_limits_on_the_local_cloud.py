"""The stack owns the bill, end to end in the local cloud: a dataset's sidecar file that asks for more than the stack
allows (an instance type, a budget) is rejected by the Validate stage before any SageMaker job is created.

The tests of one stack (template parameters) share it (harness.StackPool; the tests are ordered by stack): each test
uploads a dataset of its own and looks at the run that its upload started.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from tests.statemachine.harness import Cloud

REJECTED_BEFORE_TRAINING = ["Init", "StartValidate", "Validate", "RejectValidate", "DataRejected"]
_DATASET_NUMBERS = itertools.count(1)


@pytest.fixture
def cloud(shared_cloud: Cloud) -> Cloud:
    """The stack of the test's parameters, shared with the other tests of that stack (the module docstring)."""
    return shared_cloud


@pytest.fixture
def dataset() -> str:
    """The test's own dataset key (its sidecar file is ``_sidecar(dataset)``)."""
    return f"incoming/support-{next(_DATASET_NUMBERS)}.jsonl"


def _sidecar(dataset: str) -> str:
    return dataset.removesuffix(".jsonl") + ".tuneplane.json"


def _upload_with_sidecar(cloud: Cloud, dataset: str, sidecar: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    """Upload the sidecar and the dataset; the one execution they started (those of earlier tests excepted)."""
    before = {execution["executionArn"] for execution in cloud.executions()}
    cloud.put(_sidecar(dataset), json.dumps(sidecar).encode())
    cloud.upload(dataset, lines)
    started = [execution for execution in cloud.executions() if execution["executionArn"] not in before]
    assert len(started) == 1, [execution["name"] for execution in started]
    return cloud.wait(str(started[0]["executionArn"]))


def _message(execution: dict[str, Any]) -> str:
    return str(json.loads(str(execution["cause"]))["errorMessage"])


@pytest.mark.stack_parameters(DeployTarget="none")  # the default; named, so that it shares the stack of the next test
def test_a_sidecar_asking_for_an_instance_type_the_stack_does_not_allow_is_rejected_before_training(
    cloud: Cloud, dataset: str, reversal_lines: list[str]
) -> None:
    # GIVEN a stack on its default training instance type, and a sidecar asking for 8 H100s for 100 epochs
    sidecar = {"training": {"instance_types": ["ml.p5.48xlarge"], "num_train_epochs": 100}}
    # WHEN the dataset is uploaded next to it
    execution = _upload_with_sidecar(cloud, dataset, sidecar, reversal_lines)
    # THEN the run is rejected by the Validate stage, through the usual Rejected path, and no job was ever created
    assert execution["status"] == "FAILED" and execution["error"] == "InvalidTrainingData"
    assert cloud.states_entered(str(execution["executionArn"])) == REJECTED_BEFORE_TRAINING
    assert cloud.jobs.started == []
    # AND the message names the sidecar file and every setting beyond the stack's limits, with what is allowed
    message = _message(execution)
    assert f"dataset settings file s3://{cloud.deployment.bucket_name}/{_sidecar(dataset)}" in message
    assert "training.instance_types: ml.p5.48xlarge is not allowed by this stack (allowed: ml.g5.2xlarge)" in message
    assert "training.num_train_epochs: 100 is over the stack's MaxTrainingEpochs 10" in message


@pytest.mark.stack_parameters(DeployTarget="none")
def test_a_sidecar_cannot_deploy_on_a_stack_that_does_not(
    cloud: Cloud, dataset: str, reversal_lines: list[str]
) -> None:
    # GIVEN a stack that deploys nowhere, and a sidecar asking for a vLLM endpoint and a looser gate
    sidecar = {"deploy": {"target": "vllm"}, "evaluation": {"min_improvement_over_base": -1}}
    # WHEN the dataset is uploaded
    execution = _upload_with_sidecar(cloud, dataset, sidecar, reversal_lines)
    # THEN the run is rejected before training, naming both settings
    assert execution["error"] == "InvalidTrainingData"
    assert cloud.jobs.started == []
    message = _message(execution)
    assert "deploy.target: vllm is not allowed by this stack (allowed: none)" in message
    assert "evaluation.min_improvement_over_base: -1 would loosen the stack's MinImprovementOverBase 0" in message


@pytest.mark.stack_parameters(AllowedTrainingInstanceTypes="ml.p5.48xlarge", MaxRunCostUsd="5")
def test_an_allowed_but_over_budget_run_is_rejected_with_its_estimate(
    cloud: Cloud, dataset: str, reversal_lines: list[str]
) -> None:
    # GIVEN a stack that allows ml.p5.48xlarge under a $5 budget, and a sidecar asking for 20,000 steps on it
    # (20,000 steps x 4 rows x 8 GPUs x 2,048 tokens: ~10 min of 8 H100s even for the tiny test model, ~$8 at spot)
    sidecar = {"training": {"instance_types": ["ml.p5.48xlarge"], "max_steps": 20_000}}
    # WHEN the dataset is uploaded next to it
    execution = _upload_with_sidecar(cloud, dataset, sidecar, reversal_lines)
    # THEN the Validate stage rejects the run on its estimate before any job is created
    assert execution["status"] == "FAILED" and execution["error"] == "InvalidTrainingData"
    assert cloud.states_entered(str(execution["executionArn"])) == REJECTED_BEFORE_TRAINING
    assert cloud.jobs.started == []
    message = _message(execution)
    assert "exceeds the stack's MaxRunCostUsd $5.00 (training " in message
    assert "on ml.p5.48xlarge" in message and "merge" in message and "evaluate" in message
    # AND its report and summary show the estimate and the cap; no split was uploaded for a run that won't train
    run_id = str(execution["name"])
    summary_key = f"runs/{run_id}/validation/summary.txt"
    summary = cloud.s3.get_object(Bucket=cloud.deployment.bucket_name, Key=summary_key)["Body"].read().decode()
    assert "Run estimate: $" in summary and "(cap: MaxRunCostUsd $5.00)" in summary
    assert "Over the stack's limits: estimated cost" in summary
    report_key = f"runs/{run_id}/validation/report.json"
    report = json.loads(cloud.s3.get_object(Bucket=cloud.deployment.bucket_name, Key=report_key)["Body"].read())
    assert report["passed"] is False and report["cost"]["max_run_cost_usd"] == 5.0
    assert report["cost"]["total_cost_usd"] > 5.0 and report["cost"]["max_steps"] == 20_000
    assert cloud.keys(f"runs/{run_id}/data/") == []


@pytest.mark.stack_parameters(AllowedTrainingInstanceTypes="ml.p5.48xlarge", MaxRunCostUsd="5")
def test_the_same_stack_trains_a_run_within_its_limits(cloud: Cloud, dataset: str, reversal_lines: list[str]) -> None:
    # GIVEN the same stack and a sidecar choosing the allowed instance type for a short run
    sidecar = {"training": {"instance_types": ["ml.p5.48xlarge"], "max_steps": 100}}
    # WHEN the dataset is uploaded
    execution = _upload_with_sidecar(cloud, dataset, sidecar, reversal_lines)
    # THEN it trains on that instance type and the Validate summary carries the estimate and the cap
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert [instance for name, instance in cloud.jobs.started if name.endswith("-train0")] == ["ml.p5.48xlarge"]
    summary = json.loads(str(execution["output"]))["validation"]["summary"]
    assert summary["max_run_cost_usd"] == 5.0 and 0 < summary["estimated_run_cost_usd"] <= 5.0
