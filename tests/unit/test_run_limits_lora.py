"""training.lora_r against the stack's MaxLoraRank when the stack serves adapters (ServeMode=lora): a rank the vLLM
server would refuse at Deploy is rejected at Validate, before training is paid for, and by the Stage function too."""

from __future__ import annotations

from typing import Any

import pytest

from tuneplane.config import DeploySettings, PipelineSettings, ValidateSettings
from tuneplane.errors import InvalidConfiguration, InvalidTrainingData, UnservableModel
from tuneplane.logic import run_limits
from tuneplane.logic.deploy.serving import lora_rank_setting
from tuneplane.logic.job_requests import training_job
from tuneplane.logic.validate_stage import run_validate_stage
from tuneplane.models.pipeline import TrainingOverrides
from tuneplane.models.stage import ValidateRequest

BUCKET = "tuneplane-data-test"
RUN_ID = "support-1515d2ffc132722f"
SIDECAR = f"s3://{BUCKET}/incoming/support.tuneplane.json"
ROLE = "arn:aws:iam::123456789012:role/sm"


def _validate(**changes: Any) -> ValidateSettings:
    return ValidateSettings(**({"data_bucket": BUCKET, "base_model_s3_uri": f"s3://{BUCKET}/m/"} | changes))


def _deploy(**changes: Any) -> DeploySettings:
    values = {"stack_name": "s", "data_bucket": BUCKET, "base_model_s3_uri": f"s3://{BUCKET}/m/"}
    return DeploySettings(**(values | {"sagemaker_role_arn": ROLE} | changes))


def test_the_validate_stage_rejects_a_lora_rank_the_server_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a stack serving adapters on vLLM (the Validate function's environment has ServeMode and MaxLoraRank)
    monkeypatch.setenv("SERVE_MODE", "lora")
    monkeypatch.setenv("MAX_LORA_RANK", "64")
    monkeypatch.setenv("DEPLOY_TARGET", "vllm")
    settings = _validate()
    # AND a sidecar asking for lora_r 128
    request = ValidateRequest(
        run_id=RUN_ID,
        bucket=BUCKET,
        key="incoming/support.jsonl",
        sidecar_key="incoming/support.tuneplane.json",
        training={"lora_r": 128},
    )
    # WHEN the Validate stage runs (no AWS here: it must not get as far as reading the data)
    with pytest.raises(InvalidTrainingData) as raised:
        run_validate_stage(request, settings)
    # THEN the rejection names the sidecar, the setting and the stack's MaxLoraRank
    message = str(raised.value)
    assert message.startswith(f"dataset settings file {SIDECAR} go beyond this stack's limits: ")
    assert "training.lora_r: 128 is over the stack's MaxLoraRank 64" in message


@pytest.mark.parametrize("max_lora_rank", [8, 16, 32, 64, 128, 256, 320, 512])
@pytest.mark.parametrize("lora_r", [None, 1, 8, 9, 16, 17, 64, 65, 128, 300, 512])
def test_validate_accepts_exactly_the_ranks_deploy_serves(max_lora_rank: int, lora_r: int | None) -> None:
    # GIVEN a ServeMode=lora stack with any MaxLoraRank the template allows, and any sidecar lora_r (unset: the
    # training container's default)
    limits = _validate(serve_mode="lora", max_lora_rank=max_lora_rank, deploy_target="vllm")
    training = TrainingOverrides(lora_r=lora_r)
    # WHEN Validate checks it
    problems = run_limits.training_problems(training, limits)
    # THEN it is rejected exactly when the Deploy stage would refuse the adapter it trains
    deploy = _deploy(serve_mode="lora", max_lora_rank=max_lora_rank)
    trained_rank = lora_r or run_limits.DEFAULT_LORA_R
    try:
        lora_rank_setting(trained_rank, deploy)
        refused_at_deploy = False
    except UnservableModel:
        refused_at_deploy = True
    assert bool(problems) == refused_at_deploy
    if problems and lora_r is None:
        assert "unset (the training container's default 16)" in problems[0]


@pytest.mark.parametrize(
    ("changes", "target"),
    [
        pytest.param({"serve_mode": "merged", "max_lora_rank": 64, "deploy_target": "vllm"}, None, id="merged"),
        pytest.param({"serve_mode": "lora", "max_lora_rank": 64, "deploy_target": "none"}, None, id="no-vllm"),
        pytest.param({"serve_mode": "lora", "max_lora_rank": 64, "deploy_target": "vllm"}, "none", id="run-not-vllm"),
        pytest.param({"deploy_target": "vllm"}, None, id="environment-lacks-them"),
    ],
)
def test_the_rank_is_not_checked_where_the_adapter_is_not_served(changes: dict[str, Any], target: str | None) -> None:
    # GIVEN a stack (or a run) that does not serve the adapter with vLLM LoRA, or does not know MaxLoraRank
    limits = _validate(**changes)
    # WHEN a sidecar asks for lora_r 256 THEN it is not this rule's business
    assert run_limits.training_problems(TrainingOverrides(lora_r=256), limits, deploy_target=target) == []


def test_a_sidecar_may_choose_vllm_on_a_stack_that_allows_it() -> None:
    # GIVEN a stack that deploys nowhere by default but lets a sidecar choose vllm, serving adapters
    limits = _validate(serve_mode="lora", max_lora_rank=32, allowed_deploy_targets="vllm,none")
    # WHEN the run's target is not known to the check THEN the rank is checked (the run may deploy to vllm)
    assert run_limits.training_problems(TrainingOverrides(lora_r=64), limits)
    # AND with the run's target known to be vllm too
    assert run_limits.training_problems(TrainingOverrides(lora_r=64), limits, deploy_target="vllm")


def test_the_stage_function_refuses_the_training_job_too() -> None:
    # GIVEN the Stage function's settings of a ServeMode=lora stack and an execution started by hand with lora_r 128
    settings = PipelineSettings(
        stack_name="s",
        data_bucket=BUCKET,
        event_bus_name="bus",
        ledger_table="runs",
        base_model_s3_uri=f"s3://{BUCKET}/m/",
        sagemaker_role_arn=ROLE,
        train_image_uri="train:1",
        merge_image_uri="merge:1",
        evaluate_image_uri="evaluate:1",
        deploy_target="vllm",
        serve_mode="lora",
        max_lora_rank=64,
    )
    data: dict[str, str | None] = {"train_uri": f"s3://{BUCKET}/runs/x/data/train.jsonl", "eval_uri": None}
    # WHEN it builds the training job THEN it refuses (defence in depth behind Validate)
    with pytest.raises(InvalidConfiguration, match="training.lora_r: 128 is over the stack's MaxLoraRank 64"):
        training_job(settings, RUN_ID, data, TrainingOverrides(lora_r=128), 0)
