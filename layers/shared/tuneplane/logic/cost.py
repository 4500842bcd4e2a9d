"""Training time and cost estimate: tokens x epochs / instance throughput x hourly price."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tuneplane.errors import InvalidConfiguration
from tuneplane.models.validation import CostEstimate


class InstancePrice(BaseModel):
    gpus: int = Field(ge=1)
    gpu: str
    price_per_hour: float = Field(gt=0)
    tokens_per_second_7b: float = Field(gt=0, description="LoRA training throughput on a 7B model.")


class PricingTable(BaseModel):
    reference_parameters: int = Field(gt=0)
    spot_discount: float = Field(ge=0, lt=1)
    instances: dict[str, InstancePrice]

    @classmethod
    def bundled(cls) -> PricingTable:
        return cls.model_validate_json(resources.files("tuneplane.data").joinpath("instances.json").read_text())

    @classmethod
    def from_file(cls, path: Path) -> PricingTable:
        try:
            return cls.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidConfiguration(f"pricing table {path}: {exc}") from exc


MAX_SMALL_MODEL_SPEEDUP = 20.0


def _human_count(value: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return str(value)


def estimate_parameters(model_config: dict[str, Any]) -> int | None:
    """Parameter count of a decoder-only transformer from its config.json (Llama/Mistral/Qwen shapes)."""
    try:
        hidden = int(model_config["hidden_size"])
        layers = int(model_config["num_hidden_layers"])
        vocab = int(model_config["vocab_size"])
        intermediate = int(model_config.get("intermediate_size", 4 * hidden))
        heads = int(model_config.get("num_attention_heads", 1))
        kv_heads = int(model_config.get("num_key_value_heads", heads))
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(model_config.get("head_dim") or hidden // max(heads, 1))
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if model_config.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp) + embeddings


def estimate_cost(
    tokens_per_epoch: int,
    epochs: float,
    instance_type: str,
    pricing: PricingTable,
    parameters: int | None,
    spot: bool,
) -> CostEstimate:
    if instance_type not in pricing.instances:
        known = ", ".join(sorted(pricing.instances))
        raise InvalidConfiguration(f"no price for instance type '{instance_type}' (known: {known})")
    instance = pricing.instances[instance_type]
    size = parameters or pricing.reference_parameters
    # Training FLOPs grow linearly with parameters, so throughput shrinks in proportion; below ~350M
    # parameters kernel launch and data loading overheads dominate, hence the cap on the speed-up.
    speedup = min(pricing.reference_parameters / size, MAX_SMALL_MODEL_SPEEDUP)
    throughput = instance.tokens_per_second_7b * speedup
    hours = tokens_per_epoch * epochs / throughput / 3600
    price = instance.price_per_hour * ((1 - pricing.spot_discount) if spot else 1)
    basis = f"{_human_count(size)} parameters" if parameters else "an assumed 7B model (no config.json)"
    return CostEstimate(
        instance_type=instance_type,
        epochs=epochs,
        tokens_per_epoch=tokens_per_epoch,
        throughput_tokens_per_second=round(throughput, 1),
        hours=round(hours, 6),
        price_per_hour_usd=round(price, 4),
        cost_usd=round(hours * price, 2),
        spot=spot,
        assumptions=(
            f"LoRA on {basis}, {instance.gpus}x {instance.gpu} at {throughput:,.0f} tokens/s; "
            "excludes instance start-up and evaluation; list prices from the pricing table"
        ),
    )


def load_model_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}
