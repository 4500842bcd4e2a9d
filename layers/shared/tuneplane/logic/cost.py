"""Time and cost estimates: training (tokens x epochs, or steps x rows x sequence length, / instance throughput x
hourly price) and, for a pipeline run, the whole run: merge, quantize, evaluate (processing jobs, a documented
assumption per stage) and deploy (endpoint hours during creation and the bake). The Validate stage checks the run's
estimate against the stack's MaxRunCostUsd and MaxTrainingRuntimeSeconds before any job starts.

An instance type missing from the pricing table never fails the run: its stage is marked unknown, the estimate says
so in ``warnings``, and the figures cover the priced stages only (a lower bound, still checked against the caps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tuneplane.errors import InvalidConfiguration
from tuneplane.models.validation import CostEstimate, StageCost

# Evaluate's generation throughput, conservative: bench/results/evaluate_7b_h100_2026-11-23.json measured the evaluate
# container generating on a 7B model at 25.9 tokens/s one prompt at a time and 190.7 tokens/s in batches of 16 (its
# default batch_size) on one H100. Batched decoding is bound by memory bandwidth, so the default processing instance's
# A10G (about 600 GB/s against the H100's 3,350) would do about 190.7 x 600 / 3350 = 34 tokens/s: 25 covers both.
GENERATE_TOKENS_PER_SECOND_7B = 25.0
EVALUATED_MODELS = 3  # containers/evaluate: candidate, base and (when there is one) production generate each prompt
DEFAULT_MAX_NEW_TOKENS = 256  # containers/evaluate/evaluate.py max_new_tokens


class InstancePrice(BaseModel):
    gpus: int = Field(ge=1)
    gpu: str
    price_per_hour: float = Field(gt=0)
    tokens_per_second_7b: float = Field(gt=0, description="LoRA training throughput on a 7B model.")


class StageHours(BaseModel):
    """Assumed hours of the stages that are not estimated from the data, for a model of ``reference_parameters``
    (a larger model scales them up in proportion, a smaller one does not scale them down)."""

    merge: float = Field(default=0.5, ge=0, description="Load base + adapter, merge, verify, save (bf16).")
    quantize: float = Field(default=1.0, ge=0, description="AWQ calibration and save.")
    evaluate: float = Field(
        default=0.5,
        ge=0,
        description="Evaluate's fixed part (loading the models, scoring); its generation is estimated from the eval "
        "split when known (PricingTable.generate_tokens_per_second_7b), else this is the whole stage.",
    )
    endpoint_startup: float = Field(
        default=0.25, ge=0, description="Creating (or updating) a vLLM endpoint until InService, billed per instance."
    )


class PricingTable(BaseModel):
    reference_parameters: int = Field(gt=0)
    spot_discount: float = Field(ge=0, lt=1)
    instances: dict[str, InstancePrice]
    stage_hours: StageHours = Field(default_factory=StageHours)
    generate_tokens_per_second_7b: float = Field(
        default=GENERATE_TOKENS_PER_SECOND_7B,
        gt=0,
        description="Evaluate's greedy generation on the processing instance, tokens/s for a 7B model (conservative).",
    )

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
StageName = Literal["merge", "quantize", "evaluate"]


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


def _no_price(instance_type: str, pricing: PricingTable) -> str:
    known = ", ".join(sorted(pricing.instances))
    return f"no price for instance type '{instance_type}' in the pricing table (known: {known})"


def _size(parameters: int | None, pricing: PricingTable) -> int:
    return parameters or pricing.reference_parameters


def estimate_cost(
    tokens_per_epoch: int,
    epochs: float,
    instance_type: str,
    pricing: PricingTable,
    parameters: int | None,
    spot: bool,
    tokens_trained: int | None = None,
) -> CostEstimate:
    """Training only: ``tokens_trained`` (default ``tokens_per_epoch x epochs``) at the instance's throughput.

    An instance type the table does not price gives an estimate marked unknown (``known=False``), never an error.
    """
    tokens = tokens_trained if tokens_trained is not None else round(tokens_per_epoch * epochs)
    if instance_type not in pricing.instances:
        return CostEstimate(
            instance_type=instance_type,
            epochs=epochs,
            tokens_per_epoch=tokens_per_epoch,
            throughput_tokens_per_second=None,
            hours=None,
            price_per_hour_usd=None,
            cost_usd=None,
            spot=spot,
            assumptions="unknown: the instance type has no price",
            known=False,
            tokens_trained=tokens,
            warnings=[_no_price(instance_type, pricing) + ": the training estimate is unknown"],
        )
    instance = pricing.instances[instance_type]
    size = _size(parameters, pricing)
    # Training FLOPs grow linearly with parameters, so throughput shrinks in proportion; below ~350M
    # parameters kernel launch and data loading overheads dominate, hence the cap on the speed-up.
    speedup = min(pricing.reference_parameters / size, MAX_SMALL_MODEL_SPEEDUP)
    throughput = instance.tokens_per_second_7b * speedup
    hours = tokens / throughput / 3600
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
        tokens_trained=tokens,
        assumptions=(
            f"LoRA on {basis}, {instance.gpus}x {instance.gpu} at {throughput:,.0f} tokens/s; "
            "excludes instance start-up and evaluation; list prices from the pricing table"
        ),
    )


@dataclass(frozen=True)
class RunShape:
    """What a run will do, as the stack's settings and the dataset's sidecar decide it (tuneplane.logic.run_limits
    builds it): the inputs of :func:`estimate_run`."""

    tokens_per_epoch: int
    parameters: int | None
    instance_type: str  # the first training instance type: the one the run asks for
    spot: bool
    epochs: float
    max_steps: int | None
    rows_per_device_step: int  # per-device batch x gradient accumulation (upper bound when auto)
    seq_len: int
    processing_instance_type: str
    quantize: bool
    deploy_target: str  # none | vllm | bedrock
    endpoint_instance_type: str
    endpoint_instances: int
    bake_time_s: int
    # Evaluate: generation on the eval split (None: unknown, the table's stage_hours.evaluate is the whole stage).
    eval_examples: int | None = None  # examples the evaluate job generates for (after evaluation.max_examples)
    eval_tokens_per_example: float | None = None  # prompt tokens per eval example (None: the sequence length)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    max_processing_runtime_s: int | None = None  # MaxProcessingRuntimeSeconds: SageMaker stops the job there
    # The evaluation's LLM judge (logic/grading.py): the most tokens it may read and write, and their price.
    judge_tokens: int | None = None
    judge_price_per_million_tokens: float = 0.0


@dataclass(frozen=True)
class RunCaps:
    """The stack's caps an estimate is checked against."""

    max_run_cost_usd: float
    max_training_runtime_s: int


def _tokens_trained(shape: RunShape, pricing: PricingTable) -> int:
    """Epochs: every epoch's tokens. max_steps (the container then ignores epochs): steps x rows per optimizer step
    (per device x accumulation x one data-parallel rank per GPU) x sequence length, an upper bound (packed rows)."""
    if shape.max_steps is None:
        return round(shape.tokens_per_epoch * shape.epochs)
    instance = pricing.instances.get(shape.instance_type)
    gpus = instance.gpus if instance else 1
    return shape.max_steps * shape.rows_per_device_step * gpus * shape.seq_len


def _scale(shape: RunShape, pricing: PricingTable) -> float:
    """How much slower than at 7B a processing stage runs: a larger model in proportion, a smaller one no faster."""
    return max(1.0, _size(shape.parameters, pricing) / pricing.reference_parameters)


def evaluate_generation(shape: RunShape, pricing: PricingTable) -> tuple[float, str] | None:
    """Hours the evaluate job generates for, and how they were arrived at; None when the eval split is unknown.

    Every evaluated model (candidate, base, production: EVALUATED_MODELS, the most there are) reads each prompt and
    generates up to max_new_tokens: examples x models x (prompt tokens + max_new_tokens) at the table's
    generate_tokens_per_second_7b, slower in proportion for a larger model (never faster for a smaller one). Prompt
    tokens are counted at the generation rate too (prefill is faster): an upper bound, like the rest."""
    if shape.eval_examples is None:
        return None
    prompt = shape.eval_tokens_per_example if shape.eval_tokens_per_example is not None else shape.seq_len
    # A quantized candidate is judged against the merged model it was made from too: one more model.
    models = EVALUATED_MODELS + (1 if shape.quantize and shape.deploy_target != "bedrock" else 0)
    tokens = shape.eval_examples * models * (prompt + shape.max_new_tokens)
    throughput = pricing.generate_tokens_per_second_7b / _scale(shape, pricing)
    basis = (
        f"{shape.eval_examples:,} eval examples x {models} models x ({prompt:,.0f} prompt + "
        f"{shape.max_new_tokens:,} new tokens) at {throughput:,.1f} tokens/s"
    )
    return tokens / throughput / 3600, basis


def _processing(stage: StageName, shape: RunShape, pricing: PricingTable) -> StageCost:
    instance_type = shape.processing_instance_type
    hours = getattr(pricing.stage_hours, stage) * _scale(shape, pricing)
    basis = f"assumed {hours:g} h (pricing table stage_hours.{stage}, per 7B parameters), on demand"
    generation = evaluate_generation(shape, pricing) if stage == "evaluate" else None
    if generation is not None:
        generate_hours, how = generation
        basis = f"{hours:g} h to load and score (stage_hours.evaluate) + {generate_hours:.2f} h generating ({how})"
        hours += generate_hours
        cap = shape.max_processing_runtime_s
        if cap is not None and hours * 3600 > cap:  # SageMaker stops the job at MaxRuntimeInSeconds: no more billed
            hours = cap / 3600
            basis += f", capped at MaxProcessingRuntimeSeconds {cap}"
        basis += ", on demand"
    instance = pricing.instances.get(instance_type)
    if instance is None:
        return StageCost(
            stage=stage,
            instance_type=instance_type,
            hours=round(hours, 4),
            price_per_hour_usd=None,
            cost_usd=None,
            basis=basis,
        )
    return StageCost(
        stage=stage,
        instance_type=instance_type,
        hours=round(hours, 4),
        price_per_hour_usd=instance.price_per_hour,
        cost_usd=round(hours * instance.price_per_hour, 2),
        basis=basis,
    )


def _deploy(shape: RunShape, pricing: PricingTable) -> StageCost | None:
    if shape.deploy_target == "bedrock":
        # Amazon Bedrock's pricing page lists no charge for Custom Model Import itself; inference (the smoke test) is
        # billed per use in Custom Model Units, a few minutes' worth: not priced here.
        return StageCost(
            stage="deploy",
            instance_type=None,
            hours=0.0,
            price_per_hour_usd=0.0,
            cost_usd=0.0,
            basis="Bedrock Custom Model Import: no import charge; smoke-test inference not priced",
        )
    if shape.deploy_target != "vllm":
        return None
    hours = pricing.stage_hours.endpoint_startup + shape.bake_time_s / 3600
    instance_type, count = shape.endpoint_instance_type, shape.endpoint_instances
    basis = (
        f"endpoint creation (assumed {pricing.stage_hours.endpoint_startup:g} h) + bake {shape.bake_time_s} s on "
        f"{count} instance(s), at the table's (training) list price; the endpoint's running cost afterwards is not "
        "part of a run"
    )
    instance = pricing.instances.get(instance_type)
    price = instance.price_per_hour if instance else None
    return StageCost(
        stage="deploy",
        instance_type=instance_type,
        instances=count,
        hours=round(hours, 4),
        price_per_hour_usd=price,
        cost_usd=round(hours * count * price, 2) if price is not None else None,
        basis=basis,
    )


def estimate_run(shape: RunShape, caps: RunCaps, pricing: PricingTable) -> CostEstimate:
    """The whole run's estimate, checked against ``caps``: ``over_limits`` lists every cap it exceeds."""
    training = estimate_cost(
        tokens_per_epoch=shape.tokens_per_epoch,
        epochs=shape.epochs,
        instance_type=shape.instance_type,
        pricing=pricing,
        parameters=shape.parameters,
        spot=shape.spot,
        tokens_trained=_tokens_trained(shape, pricing),
    )
    spot = " spot" if shape.spot else ""
    how = f"{shape.max_steps:,} steps" if shape.max_steps is not None else f"{shape.epochs:g} epochs"
    stages = [
        StageCost(
            stage="train",
            instance_type=shape.instance_type,
            hours=training.hours,
            price_per_hour_usd=training.price_per_hour_usd,
            cost_usd=training.cost_usd,
            basis=f"{how}, {training.tokens_trained:,} tokens{spot}",
        ),
        _processing("merge", shape, pricing),
    ]
    if shape.quantize and shape.deploy_target != "bedrock":  # Bedrock imports the bf16 model: no quantize stage
        stages.append(_processing("quantize", shape, pricing))
    stages.append(_processing("evaluate", shape, pricing))
    if shape.judge_tokens:
        stages.append(
            StageCost(
                stage="judge",
                instance_type=None,
                hours=None,
                price_per_hour_usd=None,
                cost_usd=round(shape.judge_tokens * shape.judge_price_per_million_tokens / 1e6, 2),
                basis=f"at most {shape.judge_tokens:,} judge tokens at ${shape.judge_price_per_million_tokens:g} per "
                "million (JudgePricePerMillionTokens)",
            )
        )
    if (deploy := _deploy(shape, pricing)) is not None:
        stages.append(deploy)
    warnings = list(training.warnings)
    generation = evaluate_generation(shape, pricing)
    cap_s = shape.max_processing_runtime_s
    if generation is not None and cap_s is not None:
        whole = pricing.stage_hours.evaluate * _scale(shape, pricing)
        if (whole + generation[0]) * 3600 > cap_s:
            warnings.append(
                f"the evaluate job may need {whole + generation[0]:,.1f} h, more than MaxProcessingRuntimeSeconds "
                f"{cap_s} ({cap_s / 3600:,.1f} h): SageMaker would stop it (priced up to the cap); lower "
                "evaluation.max_examples or max_new_tokens"
            )
    for stage in stages[1:]:
        if stage.cost_usd is None and stage.instance_type:
            warnings.append(f"{_no_price(stage.instance_type, pricing)}: the {stage.stage} cost is unknown")
    total = round(sum(stage.cost_usd or 0.0 for stage in stages), 2)
    known = all(stage.cost_usd is not None for stage in stages)
    over: list[str] = []
    if total > caps.max_run_cost_usd:
        lower = "" if known else "at least "
        over.append(
            f"estimated cost {lower}${total:,.2f} exceeds the stack's MaxRunCostUsd ${caps.max_run_cost_usd:,.2f} "
            f"({describe_stages(stages)})"
        )
    cap_hours = caps.max_training_runtime_s / 3600
    if training.hours is not None and training.hours * 3600 > caps.max_training_runtime_s:
        over.append(
            f"estimated training time {training.hours:,.1f} h on {shape.instance_type} exceeds the stack's "
            f"MaxTrainingRuntimeSeconds {caps.max_training_runtime_s} ({cap_hours:,.1f} h): SageMaker would stop the "
            "job before it ends; train fewer epochs or steps, or on a faster instance type"
        )
    return training.model_copy(
        update={
            "max_steps": shape.max_steps,
            "known": known,
            "stages": stages,
            "total_cost_usd": total,
            "max_run_cost_usd": caps.max_run_cost_usd,
            "max_training_hours": round(cap_hours, 4),
            "over_limits": over,
            "warnings": warnings,
            "assumptions": training.assumptions.replace("excludes instance start-up and evaluation; ", "")
            if training.known
            else training.assumptions,
        }
    )


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def describe_stages(stages: list[StageCost]) -> str:
    """``training 2.0 h on ml.g5.2xlarge $1.21, merge 30 min on ml.g5.2xlarge $0.76, ...``"""
    parts = []
    for stage in stages:
        name = "training" if stage.stage == "train" else stage.stage
        if stage.stage == "judge":
            parts.append(f"judge ${stage.cost_usd:,.2f}")
            continue
        where = (
            f" on {stage.instances}x {stage.instance_type}" if stage.instances > 1 else f" on {stage.instance_type}"
        )
        hours = _duration(stage.hours) if stage.hours is not None else "? h"
        cost = f"${stage.cost_usd:,.2f}" if stage.cost_usd is not None else "$? (no price)"
        parts.append(f"{name} {hours}{where if stage.instance_type else ''} {cost}")
    return ", ".join(parts)


def render_estimate(estimate: CostEstimate) -> list[str]:
    """The estimate's lines in the validation summary: training, the run's stages and total against the caps."""
    spot = " spot" if estimate.spot else ""
    how = f"{estimate.max_steps:,} steps" if estimate.max_steps is not None else f"{estimate.epochs:g} epochs"
    if estimate.hours is None or estimate.cost_usd is None:
        lines = [f"Estimate: {how} on {estimate.instance_type}{spot} ~ unknown ({estimate.assumptions})"]
    else:
        lines = [
            f"Estimate: {how} on {estimate.instance_type}{spot} ~ {_duration(estimate.hours)} ~ "
            f"${estimate.cost_usd:,.2f} ({estimate.assumptions})"
        ]
    if estimate.stages and estimate.total_cost_usd is not None:
        cap = f" (cap: MaxRunCostUsd ${estimate.max_run_cost_usd:,.2f})" if estimate.max_run_cost_usd else ""
        lower = "" if estimate.known else "at least "
        lines.append(f"Run estimate: {lower}${estimate.total_cost_usd:,.2f}{cap}: {describe_stages(estimate.stages)}")
    if estimate.max_training_hours is not None:
        lines.append(f"Training runtime cap: {_duration(estimate.max_training_hours)} (MaxTrainingRuntimeSeconds)")
    lines += [f"Estimate warning: {warning}" for warning in estimate.warnings]
    lines += [f"Over the stack's limits: {problem}" for problem in estimate.over_limits]
    return lines


def load_model_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}
