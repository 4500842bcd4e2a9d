"""The stack owns the limits (tuneplane.logic.run_limits): whatever a sidecar file asks for, a run is rejected or
stays within the stack's caps and gates; the job requests never leave them even without the Validate stage."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneplane.config import PipelineSettings, RunLimitSettings, ValidateSettings
from tuneplane.errors import InvalidConfiguration, InvalidTrainingData
from tuneplane.logic import run_limits, stages
from tuneplane.logic.cost import PricingTable, estimate_run
from tuneplane.logic.job_requests import evaluate_job, training_job
from tuneplane.logic.validate_stage import build_options, run_validate_stage
from tuneplane.models.events import Stage
from tuneplane.models.pipeline import EvaluationOverrides, StageRequest, TrainingOverrides
from tuneplane.models.stage import ValidateRequest
from tuneplane.models.validation import Code, Severity

BUCKET = "tuneplane-data-test"
RUN_ID = "support-1515d2ffc132722f"
SIDECAR = f"s3://{BUCKET}/incoming/support.tuneplane.json"
DATA: dict[str, str | None] = {"train_uri": f"s3://{BUCKET}/runs/x/data/train.jsonl", "eval_uri": None}
TYPES = ["ml.g5.2xlarge", "ml.g6.2xlarge", "ml.g6e.2xlarge", "ml.p4d.24xlarge", "ml.p5.48xlarge"]
TARGETS = ["none", "vllm", "bedrock"]


def _pipeline(**changes: Any) -> PipelineSettings:
    values: dict[str, Any] = {
        "stack_name": "tuneplane-test",
        "data_bucket": BUCKET,
        "event_bus_name": "bus",
        "ledger_table": "runs",
        "base_model_s3_uri": f"s3://{BUCKET}/models/tiny/",
        "sagemaker_role_arn": "arn:aws:iam::123456789012:role/sm",
        "train_image_uri": "train:1",
        "merge_image_uri": "merge:1",
        "evaluate_image_uri": "evaluate:1",
    }
    return PipelineSettings(**(values | changes))


def _validate(**changes: Any) -> ValidateSettings:
    return ValidateSettings(**({"data_bucket": BUCKET, "base_model_s3_uri": f"s3://{BUCKET}/m/"} | changes))


# -- strategies: a stack's limits and a sidecar's asks, both drawn around the caps


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    defaults = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=2, unique=True))
    extra = draw(st.lists(st.sampled_from(TYPES), max_size=2, unique=True))
    listed = draw(st.lists(st.sampled_from(TARGETS), max_size=2, unique=True))
    return {
        "training_instance_types": ",".join(defaults),
        "allowed_training_instance_types": ",".join(extra),
        "max_training_steps": draw(st.integers(1, 50_000)),
        "max_training_epochs": draw(st.floats(0.5, 20)),
        "max_seq_length": draw(st.sampled_from([512, 2048, 8192])),
        "min_score": draw(st.floats(0, 1)),
        "min_improvement_over_base": draw(st.floats(-0.5, 0.5)),
        "max_regression_drop": draw(st.floats(0, 1)),
        "max_quantization_drop": draw(st.floats(0, 1)),
        "deploy_target": draw(st.sampled_from(TARGETS)),
        "allowed_deploy_targets": ",".join(listed),
    }


trainings = st.builds(
    TrainingOverrides,
    instance_types=st.none() | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
    max_steps=st.none() | st.integers(1, 1_000_000),
    num_train_epochs=st.none() | st.floats(0.1, 100),
    max_seq_length=st.none() | st.sampled_from([256, 2048, 4096, 131072]),
)
evaluations = st.builds(
    EvaluationOverrides,
    min_score=st.none() | st.floats(0, 1),
    min_improvement_over_base=st.none() | st.floats(-1, 1),
    max_regression_vs_production=st.none() | st.floats(0, 1),
    min_stop_rate=st.none() | st.floats(0, 1),
    max_regression_drop=st.none() | st.floats(0, 1),
    max_quantization_drop=st.none() | st.floats(0, 1),
)


@settings(max_examples=200, deadline=None)
@given(stack=stacks(), training=trainings)
def test_a_training_request_is_rejected_or_within_every_cap(
    stack: dict[str, Any], training: TrainingOverrides
) -> None:
    # GIVEN any stack and any sidecar training section
    limits = _pipeline(**stack)
    problems = run_limits.training_problems(training, limits)
    if problems:
        # THEN one beyond a cap is refused by the Stage function too, naming the setting (defence in depth)
        with pytest.raises(InvalidConfiguration, match="outside the stack's limits"):
            training_job(limits, RUN_ID, DATA, training, 0)
        return
    # OR every attempt it requests is on an allowed instance type, and steps, epochs, length are within the caps
    types = training.instance_types or limits.instance_types
    for attempt in range(len(types)):
        request = training_job(limits, RUN_ID, DATA, training, attempt).request
        assert request["ResourceConfig"]["InstanceType"] in limits.allowed_instance_types
        hyper = request["HyperParameters"]
        assert int(hyper["max_seq_length"]) <= limits.max_seq_length
        assert int(hyper.get("max_steps", 0)) <= limits.max_training_steps
        if "max_steps" not in hyper:  # the container trains num_train_epochs (its own default 3 where absent)
            assert float(hyper.get("num_train_epochs", run_limits.DEFAULT_EPOCHS)) <= limits.max_training_epochs


@settings(max_examples=200, deadline=None)
@given(stack=stacks(), evaluation=evaluations)
def test_the_promotion_gate_is_never_looser_than_the_stacks(
    stack: dict[str, Any], evaluation: EvaluationOverrides
) -> None:
    # GIVEN any stack and any sidecar evaluation thresholds
    limits = _pipeline(**stack)
    # WHEN the evaluate job is requested
    try:
        arguments = evaluate_job(limits, RUN_ID, "s3://b/merged/", "s3://b/eval/", evaluation).request[
            "AppSpecification"
        ]["ContainerArguments"]
    except InvalidConfiguration:
        # THEN either it is refused, and the Validate stage's check says so first
        assert run_limits.evaluation_problems(evaluation, limits)
        return
    # OR the thresholds the container gets are at least as strict as the stack's
    given_ = dict(argument.removeprefix("--").split("=", 1) for argument in arguments)
    assert float(given_["min_score"]) >= limits.min_score
    assert float(given_["min_improvement_over_base"]) >= limits.min_improvement_over_base
    assert float(given_.get("min_stop_rate", limits.min_stop_rate)) >= limits.min_stop_rate
    assert float(given_.get("max_regression_vs_production", 0.0)) <= limits.max_regression_vs_production
    assert float(given_["max_regression_drop"]) <= limits.max_regression_drop
    assert float(given_["max_quantization_drop"]) <= limits.max_quantization_drop


@settings(max_examples=100, deadline=None)
@given(stack=stacks(), target=st.sampled_from(TARGETS))
def test_a_sidecar_deploys_only_where_the_stack_allows(stack: dict[str, Any], target: str) -> None:
    limits = _pipeline(**stack)
    listed = [t for t in stack["allowed_deploy_targets"].split(",") if t] or [stack["deploy_target"]]
    allowed = target == "none" or target in listed
    # THEN the Validate check and the Stage function's check agree with the rule
    assert (run_limits.deploy_problems(target, limits) == []) is allowed
    if allowed:
        run_limits.require_deploy_target(target, limits)
    else:
        with pytest.raises(InvalidConfiguration, match=f"deploy target '{target}' is not allowed"):
            run_limits.require_deploy_target(target, limits)


@settings(max_examples=100, deadline=None)
@given(
    stack_pii=st.sampled_from(list(Severity)),
    sidecar=st.none() | st.sampled_from(list(Severity)),
    other=st.dictionaries(st.sampled_from([Code.DUPLICATE_EXAMPLE, Code.BLANK_LINE]), st.sampled_from(list(Severity))),
)
def test_pii_severity_is_never_below_the_stacks(
    stack_pii: Severity, sidecar: Severity | None, other: dict[Code, Severity]
) -> None:
    # GIVEN a stack's PiiSeverity and a sidecar's severity_overrides (perhaps empty, perhaps naming PII)
    overrides = {code.value: severity.value for code, severity in other.items()}
    if sidecar is not None:
        overrides[Code.PII_DETECTED.value] = sidecar.value
    settings_ = _validate(pii_severity=stack_pii)
    loosens = stack_pii is Severity.ERROR and sidecar is Severity.WARNING
    # WHEN the run's validation options are built
    if loosens:
        # THEN a sidecar that would loosen it is rejected, naming the file and the setting
        with pytest.raises(InvalidTrainingData, match="validation.severity_overrides.pii_detected: warning"):
            build_options(settings_, {"severity_overrides": overrides}, SIDECAR)
        return
    options = build_options(settings_, {"severity_overrides": overrides}, SIDECAR)
    # OR PII is at least as strict as the stack says, and the other codes are the sidecar's choice
    assert options.severity(Code.PII_DETECTED) in ({Severity.ERROR} if stack_pii is Severity.ERROR else set(Severity))
    assert options.severity(Code.PII_DETECTED) == (sidecar or stack_pii)
    assert all(options.severity(code) == severity for code, severity in other.items())


def test_an_empty_severity_overrides_keeps_the_stacks_pii_error() -> None:
    # GIVEN a stack with PiiSeverity=error, and the break-test sidecar: validation.severity_overrides = {}
    options = build_options(_validate(pii_severity=Severity.ERROR), {"severity_overrides": {}}, SIDECAR)
    # THEN PII still rejects the dataset
    assert options.severity(Code.PII_DETECTED) is Severity.ERROR


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"min_examples": 5}, "validation.min_examples: 5 would loosen the stack's MinExamples 10"),
        ({"max_invalid_fraction": 0.5}, "validation.max_invalid_fraction: 0.5 would loosen the stack's"),
        ({"max_file_bytes": 10**15}, "validation.max_file_bytes: 1e+15 would loosen the stack's"),
        ({"max_decompressed_bytes": 10**15}, "validation.max_decompressed_bytes: 1e+15 would loosen the stack's"),
        ({"max_decompression_ratio": 10**6}, "validation.max_decompression_ratio: 1e+06 would loosen the stack's"),
        ({"epochs": 0.1}, "validation.epochs: set by the stack from the run's settings"),
        ({"instance_type": "ml.g4dn.xlarge"}, "validation.instance_type: set by the stack"),
        ({"max_seq_length": 4096}, "validation.max_seq_length: 4096 is over the training max_seq_length 2048"),
    ],
)
def test_validation_settings_may_only_tighten(overrides: dict[str, Any], problem: str) -> None:
    # WHEN a sidecar's validation section would loosen a stack setting THEN the run is rejected naming file and setting
    with pytest.raises(InvalidTrainingData) as raised:
        build_options(_validate(min_examples=10), overrides, SIDECAR)
    assert f"dataset settings file {SIDECAR} go beyond this stack's limits" in str(raised.value)
    assert problem in str(raised.value)


def test_stricter_validation_settings_apply() -> None:
    options = build_options(
        _validate(min_examples=10, max_invalid_fraction=0.2),
        {"min_examples": 50, "max_invalid_fraction": 0.05, "max_seq_length": 1024},
        SIDECAR,
    )
    assert (options.min_examples, options.max_invalid_fraction, options.max_seq_length) == (50, 0.05, 1024)


@settings(max_examples=50, deadline=None)
@given(stack_length=st.sampled_from([512, 2048, 8192]), training_length=st.none() | st.integers(16, 8192))
def test_the_token_check_uses_the_length_the_run_trains_with(stack_length: int, training_length: int | None) -> None:
    # GIVEN a stack's MaxSeqLength and a sidecar's training.max_seq_length (within it, or unset)
    training = TrainingOverrides(max_seq_length=min(training_length, stack_length) if training_length else None)
    # WHEN validation options are built with no validation override of the length
    options = build_options(_validate(max_seq_length=stack_length), {}, SIDECAR, training)
    # THEN the token budget is exactly the training job's max_seq_length hyperparameter
    request = training_job(_pipeline(max_seq_length=stack_length), RUN_ID, DATA, training, 0).request
    assert options.max_seq_length == int(request["HyperParameters"]["max_seq_length"])


def test_the_estimate_inputs_are_the_runs_real_training_settings() -> None:
    # GIVEN a stack without spot, and a sidecar choosing 2 epochs on an allowed second instance type
    limits = _validate(use_spot=False, allowed_training_instance_types="ml.p4d.24xlarge")
    training = TrainingOverrides(num_train_epochs=2, instance_types=["ml.p4d.24xlarge"])
    options = build_options(limits, {}, SIDECAR, training)
    # THEN the validator's training estimate is made on exactly those
    assert (options.instance_type, options.epochs, options.spot) == ("ml.p4d.24xlarge", 2, False)


@settings(max_examples=100, deadline=None)
@given(
    tokens=st.integers(1, 10**10),
    epochs=st.floats(0.1, 100),
    budget=st.floats(1, 10_000),
    runtime=st.integers(60, 28 * 24 * 3600),
)
def test_a_run_is_over_the_limits_exactly_when_its_estimate_is(
    tokens: int, epochs: float, budget: float, runtime: int
) -> None:
    # GIVEN any dataset size, epochs and caps
    limits = RunLimitSettings(max_run_cost_usd=budget, max_training_runtime_s=runtime, max_training_epochs=100)
    shape = run_limits.run_shape(
        TrainingOverrides(num_train_epochs=epochs),
        limits,
        tokens_per_epoch=tokens,
        parameters=None,
        deploy_target="vllm",
        endpoint_instance_type="ml.g5.2xlarge",
        endpoint_instances=1,
        bake_time_s=300,
    )
    # WHEN the run is estimated
    estimate = estimate_run(shape, run_limits.run_caps(limits), PricingTable.bundled())
    assert estimate.total_cost_usd is not None and estimate.hours is not None
    # THEN it is over the budget iff its total is, and over the runtime cap iff its training hours are
    over_cost = any(m.startswith("estimated cost") for m in estimate.over_limits)
    over_time = any(m.startswith("estimated training time") for m in estimate.over_limits)
    assert over_cost is (estimate.total_cost_usd > budget)
    assert over_time is (estimate.hours * 3600 > runtime)
    # AND the total covers every stage: training, merge, evaluate and the endpoint
    assert [s.stage for s in estimate.stages] == ["train", "merge", "evaluate", "deploy"]
    assert estimate.total_cost_usd >= (estimate.cost_usd or 0)


def test_default_epochs_never_exceed_a_lower_epoch_cap() -> None:
    # GIVEN a stack capping epochs at 1 and a sidecar that sets neither epochs nor steps
    spec = training_job(_pipeline(max_training_epochs=1), RUN_ID, DATA, TrainingOverrides(), 0)
    # THEN the job is told 1 epoch instead of the container's default 3
    assert spec.request["HyperParameters"]["num_train_epochs"] == "1.0"
    # AND with the default cap the container's default stands (no hyperparameter added)
    assert (
        "num_train_epochs"
        not in training_job(_pipeline(), RUN_ID, DATA, TrainingOverrides(), 0).request["HyperParameters"]
    )


def test_the_stage_function_refuses_to_start_a_deployment_the_stack_does_not_allow() -> None:
    # GIVEN a stack that deploys nowhere, and an execution state whose deploy target became vllm anyway (a sidecar's
    # deploy.target reaching the deploy stage without the Validate stage's check)
    state = {
        "run_id": RUN_ID,
        "bucket": BUCKET,
        "key": "incoming/support.jsonl",
        "pipeline": {"deploy_target": "vllm"},
    }
    request = StageRequest(action="start", stage=Stage.DEPLOY, state=state)
    # WHEN the deploy stage is started THEN it is refused before anything is recorded or deployed
    with pytest.raises(
        InvalidConfiguration, match=r"deploy target 'vllm' is not allowed by this stack \(allowed: none\)"
    ):
        stages.handle(request, _pipeline(deploy_target="none"))


def test_the_validate_stage_rejects_a_sidecar_beyond_the_limits_before_reading_anything() -> None:
    # GIVEN the execution input of a dataset whose sidecar asks for 8 H100s, a million steps and a looser PII check
    request = ValidateRequest(
        run_id=RUN_ID,
        bucket=BUCKET,
        key="incoming/support.jsonl",
        sidecar_key="incoming/support.tuneplane.json",
        training={"instance_types": ["ml.p5.48xlarge"], "max_steps": 1_000_000},
        evaluation=None,
        overrides={"severity_overrides": {}},
    )
    # WHEN the Validate stage runs (no AWS here: it must not get as far as reading the data)
    with pytest.raises(InvalidTrainingData) as raised:
        run_validate_stage(request, _validate(pii_severity=Severity.ERROR))
    # THEN the rejection names the sidecar file and each setting with the stack's limit
    message = str(raised.value)
    assert message.startswith(f"dataset settings file {SIDECAR} go beyond this stack's limits: ")
    assert "training.instance_types: ml.p5.48xlarge is not allowed by this stack (allowed: ml.g5.2xlarge)" in message
    assert "training.max_steps: 1000000 is over the stack's MaxTrainingSteps 20000" in message


def test_the_budget_is_checked_on_the_costliest_instance_type_the_run_may_fall_back_to() -> None:
    # GIVEN a run that tries a cheap instance type first and may fall back to an 8-GPU one on no capacity
    from tuneplane.logic.validate_stage import _run_estimate

    settings = _validate(
        training_instance_types="ml.g5.2xlarge,ml.p4d.24xlarge", max_run_cost_usd=10_000, max_training_epochs=10
    )
    training = TrainingOverrides(num_train_epochs=1)
    pricing = PricingTable.bundled()
    training_estimate = estimate_run(
        run_limits.run_shape(
            training,
            settings,
            tokens_per_epoch=50_000_000,
            parameters=None,
            deploy_target="none",
            endpoint_instance_type="ml.g5.2xlarge",
            endpoint_instances=1,
            bake_time_s=0,
        ),
        run_limits.run_caps(settings),
        pricing,
    )
    request = ValidateRequest(run_id=RUN_ID, bucket=BUCKET, key="incoming/support.jsonl")
    # WHEN the run is estimated
    estimate = _run_estimate(training_estimate, training, request, settings, None, pricing)
    # THEN the figure is the costlier of the two (the budget must hold whichever instance type the run gets)
    each = [
        estimate_run(
            run_limits.run_shape(
                TrainingOverrides(num_train_epochs=1, instance_types=[instance_type]),
                settings,
                tokens_per_epoch=50_000_000,
                parameters=None,
                deploy_target="none",
                endpoint_instance_type="ml.g5.2xlarge",
                endpoint_instances=1,
                bake_time_s=0,
            ),
            run_limits.run_caps(settings),
            pricing,
        )
        for instance_type in ("ml.g5.2xlarge", "ml.p4d.24xlarge")
    ]
    assert each[0].total_cost_usd != each[1].total_cost_usd
    assert estimate.total_cost_usd == max(e.total_cost_usd or 0.0 for e in each)


def test_early_stopping_without_keep_best_is_refused_in_the_sidecar() -> None:
    from pydantic import ValidationError

    # GIVEN a training section asking for early stopping but for the last step's adapter
    # WHEN parsed THEN it is refused, saying why (the container would refuse it after the job started)
    with pytest.raises(ValidationError, match="early_stopping_patience needs keep_best"):
        TrainingOverrides(early_stopping_patience=3, keep_best=False)
    assert TrainingOverrides(early_stopping_patience=3).early_stopping_patience == 3
    assert TrainingOverrides(early_stopping_patience=0, keep_best=False).keep_best is False
