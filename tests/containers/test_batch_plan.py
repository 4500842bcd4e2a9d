"""The auto batch: how many packed rows per micro-batch, and whether to recompute activations, for a model and GPU.

The estimate is checked against the peaks bench/train_gpu.py measured on an H100 with a 7B (Mistral-shaped) model at
seq 2048 (bench/results/train_gpu_7b_h100_2026-11-23.json): it must not promise less memory than was used.
"""

from __future__ import annotations

import pytest
from containers.train import batch_plan
from containers.train.batch_plan import ModelShape

GIB = 2**30
MISTRAL_7B = ModelShape(layers=32, hidden=4096, intermediate=14336, weight_bytes=7_241_732_096 * 2)
MISTRAL_7B_NF4 = ModelShape(layers=32, hidden=4096, intermediate=14336, weight_bytes=int(3.9 * GIB))
LLAMA_3B = ModelShape(layers=28, hidden=3072, intermediate=8192, weight_bytes=3_212_749_824 * 2)
H100 = int(79.2 * GIB)
A10G = int(22.0 * GIB)


def auto(shape: ModelShape | None, gpu: int | None, **overrides: object) -> batch_plan.BatchPlan:
    settings: dict[str, object] = {
        "per_device_batch_size": 0,
        "gradient_accumulation_steps": 0,
        "gradient_checkpointing": "auto",
        "qlora": False,
        "seq_len": 2048,
    }
    settings.update(overrides)
    return batch_plan.plan(shape=shape, gpu_memory_bytes=gpu, **settings)  # type: ignore[arg-type]


def test_estimates_cover_the_measured_h100_peaks() -> None:
    # GIVEN the peaks measured on an H100: 48.6 GiB (4 rows, no checkpointing), 7.65 GiB (QLoRA, 4 rows, checkpointing)
    full = batch_plan.estimated_peak_bytes(MISTRAL_7B, 4, 2048, checkpointing=False) / GIB
    qlora = batch_plan.estimated_peak_bytes(MISTRAL_7B_NF4, 4, 2048, checkpointing=True) / GIB
    # THEN the estimates are above them, by less than 15%
    assert 48.6 <= full <= 48.6 * 1.15
    assert 7.65 <= qlora <= 7.65 * 1.15


def test_a_7b_on_an_h100_gets_four_rows_at_once() -> None:
    plan = auto(MISTRAL_7B, H100)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (4, 1, False)
    assert "estimated peak" in plan.describe() and "may not fit" not in plan.describe()


def test_a_smaller_gpu_splits_the_batch_before_recomputing() -> None:
    # GIVEN a 3B model on a 24 GB A10G: four rows do not fit, two do
    plan = auto(LLAMA_3B, A10G)
    # THEN two rows x two micro-batches: still four rows per optimizer step, no recomputation
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (2, 2, False)


def test_a_7b_on_an_a10g_recomputes_activations() -> None:
    # GIVEN a 7B in bf16 on 24 GB: not even one row fits without checkpointing
    plan = auto(MISTRAL_7B, A10G)
    assert plan.gradient_checkpointing and plan.per_device_batch_size * plan.gradient_accumulation_steps == 4
    assert plan.estimated_peak_gib is not None and plan.estimated_peak_gib <= 22.0 * batch_plan.USABLE_FRACTION


def test_qlora_recomputes_by_default_and_explicit_settings_win() -> None:
    assert auto(MISTRAL_7B_NF4, H100, qlora=True).gradient_checkpointing
    # An explicit batch, accumulation or checkpointing choice is kept as given
    plan = auto(MISTRAL_7B, H100, per_device_batch_size=8, gradient_accumulation_steps=3)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (8, 3)
    assert not auto(MISTRAL_7B_NF4, H100, qlora=True, gradient_checkpointing="false").gradient_checkpointing


def test_nothing_fits_gives_the_most_frugal_plan_and_says_so() -> None:
    # GIVEN a 7B in bf16, checkpointing refused, on 16 GiB
    plan = auto(MISTRAL_7B, 16 * GIB, gradient_checkpointing="false")
    # THEN one row per micro-batch, and the description warns
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (1, 4, False)
    assert "(it may not fit)" in plan.describe()


@pytest.mark.parametrize("shape", [MISTRAL_7B, None])
def test_without_a_gpu_auto_is_four_rows_at_once(shape: ModelShape | None) -> None:
    plan = auto(shape, None)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing) == (4, 1, False)
