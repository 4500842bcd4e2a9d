"""Cost estimate: tokens x epochs / throughput x price, from the bundled (or a deployment's) table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneplane.errors import InvalidConfiguration
from tuneplane.logic.cost import PricingTable, estimate_cost, estimate_parameters

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


def test_unknown_instance_type_names_the_known_ones() -> None:
    with pytest.raises(InvalidConfiguration, match=r"ml\.g5\.2xlarge"):
        estimate_cost(1, 1, "ml.nope.xlarge", PricingTable.bundled(), None, spot=False)


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
