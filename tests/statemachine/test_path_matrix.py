"""Every deploy target crossed with a capacity fallback, quantization on or off and manual approval: the state
machine's settings (``$.pipeline``) reach every Choice whichever way the run went, and each run ends in exactly one
outcome event.

One path per combination, on the real template and ASL (harness.py), with scripted jobs, endpoints and imports.
A Choice on a field that a Pass state dropped fails the execution on AWS (``States.Runtime``, which no Catch here
takes), so a path that rebuilds ``$.pipeline`` without a field shows up as a FAILED run with no Run event."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from tests.statemachine.harness import Cloud, _stage_of

ASL = Path(__file__).resolve().parents[2] / "statemachines" / "pipeline.asl.json"
KEY = "incoming/reverse.jsonl"
COMBINATIONS = [
    pytest.param(target, fallback, quantize, approval, id=f"{target}-{fallback=}-{quantize=}-{approval}")
    for target, fallback, quantize, approval in itertools.product(
        ("none", "vllm", "bedrock"), (False, True), (False, True), ("Approved", "PendingManualApproval")
    )
]


def _expected_states(target: str, fallback: bool, quantize: bool, approval: str) -> list[str]:
    """The states that must be entered (in this order, others may come between them)."""
    states = ["StartTrain", "Train"]
    if fallback:
        states += ["NextTrainInstance", "StartTrain", "Train"]
    states += ["FinishTrain", "QuantizeWanted"]
    # Bedrock imports the merged bf16 model: quantizing for it would be wasted.
    if target == "bedrock":
        states += ["SkipQuantizeForBedrock" if quantize else "SkipQuantize"]
    else:
        states += ["StartQuantize", "Quantize", "FinishQuantize"] if quantize else ["SkipQuantize"]
    states += ["Gate", "Register", "DeployTarget"]
    if target == "none":
        states += ["SkipDeploy"]
    elif approval == "PendingManualApproval":
        states += ["SkipDeployPendingApproval"]
    else:
        states += ["StartDeploy", "DeployReady", "DeploySmokeTest", "FinishDeploy"]
    return [*states, "CompleteRun", "Succeeded"]


def _in_order(expected: list[str], entered: list[str]) -> bool:
    remaining = iter(entered)
    return all(state in remaining for state in expected)


@pytest.mark.parametrize(("target", "fallback", "quantize", "approval"), COMBINATIONS)
def test_every_combination_runs_its_path_and_ends_in_one_outcome(
    stack_parameters: dict[str, str],
    cloud: Cloud,
    reversal_lines: list[str],
    target: str,
    fallback: bool,
    quantize: bool,
    approval: str,
) -> None:
    # GIVEN a stack with this deploy target, quantization and approval, and (maybe) no capacity for the first type
    assert cloud.deployment.parameters["DeployTarget"] == stack_parameters["DeployTarget"] == target
    cloud.disable_trigger()
    cloud.endpoints.reply = "olleh"
    cloud.bedrock.answer = lambda messages: "olleh"
    if fallback:
        cloud.jobs.no_capacity.add("ml.g5.2xlarge")
    # WHEN a passing run goes through the pipeline
    version = cloud.upload(KEY, reversal_lines)
    request = {"run_id": "run-matrix", "bucket": cloud.deployment.bucket_name, "key": KEY, "version_id": version}
    execution = cloud.run("run-matrix", request)
    # THEN it succeeds through the path its settings choose
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    entered = cloud.states_entered(execution["executionArn"])
    expected = _expected_states(target, fallback, quantize, approval)
    assert _in_order(expected, entered), f"expected {expected} in order, entered {entered}"
    # AND exactly one outcome event closes the run
    outcomes = [event["detail-type"] for event in cloud.bus_events() if event["detail"]["stage"] == "run"]
    assert outcomes == ["Run Succeeded"]


# The stack's settings for each combination: a marker cannot take the parametrized values, so the cloud fixture
# reads them from this fixture (the test requests it before ``cloud``).
@pytest.fixture
def stack_parameters(request: pytest.FixtureRequest) -> dict[str, str]:
    target, fallback, quantize, approval = (request.node.callspec.params[name] for name in _PARAMETERS)
    return {
        "DeployTarget": target,
        "QuantizeEnabled": str(quantize).lower(),
        "ModelApprovalStatus": approval,
        **({"FallbackTrainingInstanceTypes": "ml.g6e.2xlarge"} if fallback else {}),
    }


_PARAMETERS = ("target", "fallback", "quantize", "approval")


def test_every_pass_state_that_rebuilds_the_settings_keeps_every_field() -> None:
    # GIVEN the settings Init puts in $.pipeline
    states: dict[str, Any] = json.loads(ASL.read_text())["States"]
    fields = set(states["Init"]["Result"])
    # WHEN any other state writes the whole of $.pipeline
    rebuilders = {
        name: state
        for name, state in states.items()
        if name != "Init" and state.get("ResultPath") == "$.pipeline" and state["Type"] == "Pass"
    }
    # THEN it carries every field over (a Choice reading a dropped one fails the execution on AWS)
    assert rebuilders, "no Pass state rebuilds $.pipeline: this test guards nothing, remove it"
    for name, state in rebuilders.items():
        assert {key.removesuffix(".$") for key in state["Parameters"]} == fields, name


@pytest.mark.stack_parameters(
    DeployTarget="vllm",
    QuantizeEnabled="true",
    ServeMode="lora",
    ModelApprovalStatus="PendingManualApproval",
    FallbackTrainingInstanceTypes="ml.g6e.2xlarge",
)
def test_a_stack_serving_adapters_quantizes_nothing_and_evaluates_the_adapter(
    cloud: Cloud, reversal_lines: list[str]
) -> None:
    # GIVEN a vLLM stack with quantization on that serves each run's adapter on the base (ServeMode=lora), and no
    # capacity for the first training type (the settings go through NextTrainInstance's rebuild)
    cloud.disable_trigger()
    cloud.jobs.no_capacity.add("ml.g5.2xlarge")
    # WHEN a passing run goes through the pipeline
    execution = cloud.run_dataset("run-lora", reversal_lines)
    # THEN no AWQ model is made (the endpoint would never serve it), saying why
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    entered = cloud.states_entered(execution["executionArn"])
    assert _in_order(["NextTrainInstance", "QuantizeWanted", "SkipQuantizeForLora", "StartEvaluate"], entered)
    assert "StartQuantize" not in entered
    reason = json.loads(ASL.read_text())["States"]["SkipQuantizeForLora"]["Parameters"]["Payload"]["reason"]
    skipped = [e["detail"] for e in cloud.bus_events() if e["detail-type"] == "Stage Skipped"]
    assert {"stage": "quantize", "message": reason}.items() <= next(
        d for d in skipped if d["stage"] == "quantize"
    ).items()
    # AND the evaluate job gets the run's adapter to apply to the base, not a merged or quantized candidate
    [evaluate_job] = [name for name, _ in cloud.jobs.started if _stage_of(name) == "evaluate"]
    described = boto3.client("sagemaker").describe_processing_job(ProcessingJobName=evaluate_job)
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in described["ProcessingInputs"]}
    assert "candidate" not in inputs and "unquantized" not in inputs
    assert inputs["adapter"].endswith("/model.tar.gz")
