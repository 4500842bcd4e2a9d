"""Cost estimate: tokens x epochs / throughput x price, from the bundled (or a deployment's) table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tuneplane.errors import InvalidConfiguration
from tuneplane.logic.cost import PricingTable, RunCaps, RunShape, estimate_cost, estimate_parameters, estimate_run

LLAMA_3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


def test_parameter_estimate_matches_a_known_model() -> None:
    # Llama 3 8B has 8.03B parameters
    assert estimate_parameters(LLAMA_3_8B) == pytest.approx(8.03e9, rel=0.01)
    assert estimate_parameters({"hidden_size": 8}) is None


def test_cost_is_tokens_times_epochs_over_throughput_times_price() -> None:
    # GIVEN the bundled table and a 7B-sized model
    table = PricingTable.bundled()
    instance = table.instances["ml.g5.2xlarge"]
    # WHEN 10M tokens are trained for 3 epochs
    estimate = estimate_cost(10_000_000, 3, "ml.g5.2xlarge", table, 7_000_000_000, spot=False)
    # THEN hours and cost follow the formula
    hours = 30_000_000 / instance.tokens_per_second_7b / 3600
    assert estimate.hours == pytest.approx(hours, rel=1e-4)
    assert estimate.cost_usd == pytest.approx(hours * instance.price_per_hour, abs=0.01)
    spot = estimate_cost(10_000_000, 3, "ml.g5.2xlarge", table, 7_000_000_000, spot=True)
    assert spot.cost_usd == pytest.approx(estimate.cost_usd * (1 - table.spot_discount), abs=0.01)
    # AND a model twice as large takes twice as long
    double = estimate_cost(10_000_000, 3, "ml.g5.2xlarge", table, 14_000_000_000, spot=False)
    assert double.hours == pytest.approx(2 * estimate.hours, rel=1e-3)


def test_an_unknown_instance_type_gives_an_unknown_estimate_naming_the_known_ones() -> None:
    # GIVEN an instance type the pricing table has no row for
    # WHEN training on it is estimated
    estimate = estimate_cost(1000, 2, "ml.nope.xlarge", PricingTable.bundled(), None, spot=False)
    # THEN there is an estimate, marked unknown, with a warning that names the priced types (never an error)
    assert not estimate.known and estimate.hours is None and estimate.cost_usd is None
    assert estimate.tokens_trained == 2000
    assert len(estimate.warnings) == 1 and "ml.nope.xlarge" in estimate.warnings[0]
    assert "ml.g5.2xlarge" in estimate.warnings[0]


def _shape(**changes: Any) -> RunShape:
    values: dict[str, Any] = {
        "tokens_per_epoch": 10_000_000,
        "parameters": 7_000_000_000,
        "instance_type": "ml.g5.2xlarge",
        "spot": False,
        "epochs": 3.0,
        "max_steps": None,
        "rows_per_device_step": 4,
        "seq_len": 2048,
        "processing_instance_type": "ml.g5.2xlarge",
        "quantize": False,
        "deploy_target": "none",
        "endpoint_instance_type": "ml.g5.2xlarge",
        "endpoint_instances": 1,
        "bake_time_s": 300,
    }
    return RunShape(**(values | changes))


GENEROUS = RunCaps(max_run_cost_usd=1e9, max_training_runtime_s=28 * 24 * 3600)


def test_a_run_estimate_adds_merge_evaluate_and_deploy_to_training() -> None:
    # GIVEN the bundled table and a run that deploys to a vLLM endpoint of two instances
    table = PricingTable.bundled()
    price = table.instances["ml.g5.2xlarge"].price_per_hour
    # WHEN its estimate is made
    estimate = estimate_run(_shape(deploy_target="vllm", endpoint_instances=2), GENEROUS, table)
    # THEN it has one entry per stage, in pipeline order, and the total is their sum
    assert [stage.stage for stage in estimate.stages] == ["train", "merge", "evaluate", "deploy"]
    assert estimate.total_cost_usd == pytest.approx(sum(s.cost_usd or 0 for s in estimate.stages), abs=0.02)
    # AND merge and evaluate take the table's assumed hours on demand; deploy pays both instances for start-up + bake
    merge, evaluate, deploy = estimate.stages[1:]
    assert merge.cost_usd == pytest.approx(table.stage_hours.merge * price, abs=0.01)
    assert evaluate.cost_usd == pytest.approx(table.stage_hours.evaluate * price, abs=0.01)
    assert deploy.cost_usd == pytest.approx((table.stage_hours.endpoint_startup + 300 / 3600) * 2 * price, abs=0.01)
    assert estimate.known and not estimate.over_limits and not estimate.warnings
    # AND quantize joins when the stack quantizes (not for Bedrock, which imports the bf16 model, at no import charge)
    assert "quantize" in [s.stage for s in estimate_run(_shape(quantize=True), GENEROUS, table).stages]
    bedrock = estimate_run(_shape(quantize=True, deploy_target="bedrock"), GENEROUS, table)
    assert [s.stage for s in bedrock.stages] == ["train", "merge", "evaluate", "deploy"]
    assert bedrock.stages[-1].cost_usd == 0.0


def test_max_steps_price_the_steps_not_the_epochs() -> None:
    # GIVEN a run that trains a fixed number of steps on an 8-GPU instance
    table = PricingTable.bundled()
    # WHEN it is estimated
    estimate = estimate_run(_shape(instance_type="ml.p4d.24xlarge", max_steps=1000), GENEROUS, table)
    # THEN the tokens are steps x rows per GPU step x GPUs x sequence length, whatever the epochs
    assert estimate.tokens_trained == 1000 * 4 * 8 * 2048
    assert estimate.max_steps == 1000 and "1,000 steps" in estimate.stages[0].basis


def test_over_budget_and_over_runtime_are_both_named() -> None:
    # GIVEN caps of $5 and 1 h, and a run of 10M tokens x 3 epochs on one A10G (~6 h, ~$9 on demand)
    table = PricingTable.bundled()
    caps = RunCaps(max_run_cost_usd=5.0, max_training_runtime_s=3600)
    # WHEN it is estimated
    estimate = estimate_run(_shape(), caps, table)
    # THEN both caps are exceeded, each message naming the cap, its value and what the estimate is made of
    cost, runtime = estimate.over_limits
    assert cost.startswith(f"estimated cost ${estimate.total_cost_usd:,.2f} exceeds the stack's MaxRunCostUsd $5.00")
    assert "training 6.0 h on ml.g5.2xlarge" in cost and "merge" in cost and "evaluate" in cost
    assert runtime.startswith("estimated training time 6.0 h on ml.g5.2xlarge exceeds the stack's")
    assert "MaxTrainingRuntimeSeconds 3600" in runtime
    # AND with spot training the budget may hold while the runtime cap still does not
    spot = estimate_run(_shape(spot=True), RunCaps(max_run_cost_usd=6.0, max_training_runtime_s=3600), table)
    assert [m.split(" ")[1] for m in spot.over_limits] == ["training"]


def test_an_unpriced_processing_instance_warns_and_the_rest_is_still_checked() -> None:
    # GIVEN a stack whose processing instance type the table does not price (the local demo uses ml.m5.2xlarge)
    table = PricingTable.bundled()
    # WHEN a run is estimated under a tiny budget
    estimate = estimate_run(_shape(processing_instance_type="ml.m5.2xlarge"), RunCaps(1.0, 86400), table)
    # THEN the estimate is marked incomplete with a warning per unpriced stage, and the priced part still counts
    assert not estimate.known
    assert [w.split(": ")[-1] for w in estimate.warnings] == [
        "the merge cost is unknown",
        "the evaluate cost is unknown",
    ]
    assert estimate.total_cost_usd == estimate.cost_usd
    assert (
        estimate.over_limits and "at least $" in estimate.over_limits[0] and "$? (no price)" in estimate.over_limits[0]
    )


def test_a_deployment_can_supply_its_own_table(tmp_path: Path) -> None:
    table_file = tmp_path / "prices.json"
    table_file.write_text(
        '{"reference_parameters": 7000000000, "spot_discount": 0.5, "instances": {"ml.x": '
        '{"gpus": 1, "gpu": "X", "price_per_hour": 2.0, "tokens_per_second_7b": 1000}}}'
    )
    estimate = estimate_cost(3_600_000, 1, "ml.x", PricingTable.from_file(table_file), None, spot=False)
    assert estimate.hours == pytest.approx(1.0) and estimate.cost_usd == pytest.approx(2.0)
    table_file.write_text("{}")
    with pytest.raises(InvalidConfiguration, match="prices.json"):
        PricingTable.from_file(table_file)
