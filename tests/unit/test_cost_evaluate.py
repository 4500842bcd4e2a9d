"""The evaluate stage's estimate follows what the uploader controls: the eval split's size (and
evaluation.max_examples), its prompt tokens and evaluation.max_new_tokens, at a conservative generation throughput
(cost.GENERATE_TOKENS_PER_SECOND_7B), capped by MaxProcessingRuntimeSeconds (SageMaker stops the job there)."""

from __future__ import annotations

from typing import Any

import pytest

from tuneplane.config import ValidateSettings
from tuneplane.logic import run_limits
from tuneplane.logic.cost import EVALUATED_MODELS, PricingTable, RunCaps, estimate_run
from tuneplane.models.pipeline import EvaluationOverrides, TrainingOverrides
from tuneplane.models.validation import StageCost

TABLE = PricingTable.bundled()
GENEROUS = RunCaps(max_run_cost_usd=1e9, max_training_runtime_s=28 * 24 * 3600)
PRICE = TABLE.instances["ml.g5.2xlarge"].price_per_hour


def _evaluate(
    evaluation: EvaluationOverrides | None = None,
    *,
    eval_examples: int | None,
    tokens: float | None = 200,
    parameters: int | None = 7_000_000_000,
    max_processing_runtime_s: int = 5 * 24 * 3600,
    quantize: bool = False,
) -> tuple[StageCost, list[str]]:
    settings = ValidateSettings(
        data_bucket="bucket",
        base_model_s3_uri="s3://bucket/m/",
        max_processing_runtime_s=max_processing_runtime_s,
        quantize=quantize,
    )
    shape = run_limits.run_shape(
        TrainingOverrides(),
        settings,
        tokens_per_epoch=1_000_000,
        parameters=parameters,
        deploy_target="none",
        endpoint_instance_type="ml.g5.2xlarge",
        endpoint_instances=1,
        bake_time_s=0,
        evaluation=evaluation,
        eval_examples=eval_examples,
        eval_tokens_per_example=tokens,
    )
    estimate = estimate_run(shape, GENEROUS, TABLE)
    (stage,) = [s for s in estimate.stages if s.stage == "evaluate"]
    return stage, estimate.warnings


def _generation_hours(examples: int, prompt: float, new_tokens: int, scale: float = 1.0) -> float:
    return examples * EVALUATED_MODELS * (prompt + new_tokens) / (TABLE.generate_tokens_per_second_7b / scale) / 3600


def test_the_evaluate_estimate_grows_with_the_eval_split_and_max_new_tokens() -> None:
    # GIVEN 200 eval examples of 200 prompt tokens, generating the container's default 256 new tokens, on 7B
    small, _ = _evaluate(eval_examples=200)
    # WHEN the uploader sends 4 times the eval examples, or asks for 4096 new tokens each
    more_examples, _ = _evaluate(eval_examples=800)
    longer, _ = _evaluate(EvaluationOverrides(max_new_tokens=4096), eval_examples=200)
    # THEN each stage is the fixed part (loads, scoring) plus examples x models x (prompt + new tokens) at the
    # documented throughput, priced on demand
    fixed = TABLE.stage_hours.evaluate
    assert small.hours == pytest.approx(fixed + _generation_hours(200, 200, 256), abs=1e-3)
    assert more_examples.hours == pytest.approx(fixed + _generation_hours(800, 200, 256), abs=1e-3)
    assert longer.hours == pytest.approx(fixed + _generation_hours(200, 200, 4096), abs=1e-3)
    assert small.hours is not None and more_examples.hours is not None and longer.hours is not None
    assert small.hours < more_examples.hours and small.hours < longer.hours
    assert longer.cost_usd == pytest.approx(longer.hours * PRICE, abs=0.01)
    assert "200 eval examples x 3 models x (200 prompt + 4,096 new tokens)" in longer.basis


def test_max_examples_bounds_the_examples_generated_for() -> None:
    # GIVEN 5,000 eval examples, and a sidecar that evaluates 100 of them
    capped, _ = _evaluate(EvaluationOverrides(max_examples=100), eval_examples=5000)
    everything, _ = _evaluate(EvaluationOverrides(max_examples=0), eval_examples=5000)  # 0: all (the container's)
    # THEN the estimate counts 100, and all 5,000 when max_examples is 0
    assert capped.hours == pytest.approx(TABLE.stage_hours.evaluate + _generation_hours(100, 200, 256), abs=1e-3)
    assert everything.hours == pytest.approx(TABLE.stage_hours.evaluate + _generation_hours(5000, 200, 256), abs=1e-3)


def test_unknown_prompt_tokens_count_as_the_sequence_length() -> None:
    # GIVEN an eval split whose token counts are unknown (no tokenizer)
    stage, _ = _evaluate(eval_examples=100, tokens=None)
    # THEN each prompt is priced at the run's max_seq_length (2048), an upper bound
    assert stage.hours == pytest.approx(TABLE.stage_hours.evaluate + _generation_hours(100, 2048, 256), abs=1e-3)


def test_a_larger_model_generates_slower_in_proportion() -> None:
    # GIVEN the same eval split on a 70B model
    stage, _ = _evaluate(eval_examples=100, parameters=70_000_000_000)
    # THEN both parts scale by 10
    assert stage.hours == pytest.approx(10 * (TABLE.stage_hours.evaluate + _generation_hours(100, 200, 256)), 1e-3)


def test_the_evaluate_estimate_is_capped_at_the_processing_runtime_limit() -> None:
    # GIVEN an eval split that would take far longer than MaxProcessingRuntimeSeconds (4 h)
    stage, warnings = _evaluate(EvaluationOverrides(max_new_tokens=8192), eval_examples=100, tokens=2000)
    capped, capped_warnings = _evaluate(
        EvaluationOverrides(max_new_tokens=8192),
        eval_examples=100,
        tokens=2000,
        max_processing_runtime_s=4 * 3600,
    )
    # THEN the estimate under a 5-day limit is over 4 h (0.5 + 100 x 3 x 10,192 tokens at 25/s: 34 h), the capped
    # one is exactly 4 h (SageMaker stops the job there), priced so, and a warning says it would be stopped and what
    # to lower
    assert stage.hours is not None and stage.hours > 4
    assert capped.hours == 4.0 and capped.cost_usd == pytest.approx(4 * PRICE, abs=0.01)
    assert "capped at MaxProcessingRuntimeSeconds 14400" in capped.basis
    assert not any("MaxProcessingRuntimeSeconds" in w for w in warnings)
    assert any("SageMaker would stop it" in w and "max_new_tokens" in w for w in capped_warnings)


def test_an_unknown_eval_split_keeps_the_tables_assumed_hours() -> None:
    # GIVEN an estimate made without the eval split's size (a caller that does not pass it)
    stage, _ = _evaluate(eval_examples=None)
    # THEN the stage is the table's assumed stage_hours.evaluate, as before
    assert stage.hours == pytest.approx(TABLE.stage_hours.evaluate)
    assert "stage_hours.evaluate" in stage.basis


def test_a_pricing_table_may_set_its_own_generation_throughput() -> None:
    # GIVEN a deployment's pricing table that measured 100 tokens/s on its processing instance
    table = PricingTable.model_validate(TABLE.model_dump() | {"generate_tokens_per_second_7b": 100.0})
    settings: Any = ValidateSettings(data_bucket="bucket", base_model_s3_uri="s3://bucket/m/")
    shape = run_limits.run_shape(
        TrainingOverrides(),
        settings,
        tokens_per_epoch=1,
        parameters=None,
        deploy_target="none",
        endpoint_instance_type="ml.g5.2xlarge",
        endpoint_instances=1,
        bake_time_s=0,
        eval_examples=200,
        eval_tokens_per_example=244,
    )
    # WHEN estimated THEN generation takes 200 x 3 x (244 + 256) / 100 s
    (stage,) = [s for s in estimate_run(shape, GENEROUS, table).stages if s.stage == "evaluate"]
    assert stage.hours == pytest.approx(table.stage_hours.evaluate + 200 * 3 * 500 / 100 / 3600, abs=1e-3)


def test_a_quantized_candidate_is_priced_with_the_merged_model_it_is_compared_to() -> None:
    # GIVEN a stack that quantizes for its vLLM target: the evaluate job also answers with the merged model
    quantized, _ = _evaluate(eval_examples=200, quantize=True)
    plain, _ = _evaluate(eval_examples=200)
    # THEN its generation is priced for one model more
    generation = _generation_hours(200, 200, 256)
    assert quantized.hours == pytest.approx(TABLE.stage_hours.evaluate + generation * 4 / 3, abs=1e-3)
    assert plain.hours == pytest.approx(TABLE.stage_hours.evaluate + generation, abs=1e-3)
    assert "x 4 models" in quantized.basis


@pytest.mark.parametrize(("target", "priced"), [("vllm", False), ("none", True), ("bedrock", False)])
def test_a_stack_serving_adapters_on_vllm_prices_no_quantization(target: str, priced: bool) -> None:
    # GIVEN a stack with QuantizeEnabled whose vLLM endpoints serve each run's adapter on the base (ServeMode=lora)
    settings = ValidateSettings(
        data_bucket="bucket", base_model_s3_uri="s3://bucket/m/", quantize=True, serve_mode="lora"
    )
    # WHEN a run going to this target is estimated
    shape = run_limits.run_shape(
        TrainingOverrides(),
        settings,
        tokens_per_epoch=1_000_000,
        parameters=7_000_000_000,
        deploy_target=target,
        endpoint_instance_type="ml.g5.2xlarge",
        endpoint_instances=1,
        bake_time_s=0,
        eval_examples=200,
        eval_tokens_per_example=200,
    )
    stages = {stage.stage: stage for stage in estimate_run(shape, GENEROUS, TABLE).stages}
    # THEN the Quantize stage (and the merged model beside a quantized candidate) is priced only where it runs: not
    # for vLLM, whose endpoint serves the adapter (QuantizeWanted skips it), nor Bedrock, which imports bf16
    assert ("quantize" in stages) is priced
    assert ("x 4 models" in stages["evaluate"].basis) is priced
