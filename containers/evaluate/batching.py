"""How many prompts the Evaluate job generates for at once: as many as the GPU's free memory holds.

Greedy generation of a 7B model is bound by reading the weights once per step whatever the batch, so more rows per
step is nearly free throughput until memory runs out (bench/evaluate.py on one H200, 64 new tokens, 1,024 prompts:
batch 16 gave 761 generated tokens/s, batches sized here 5,306). A fixed batch of 16 leaves most of an 80-141 GB GPU
idle; a fixed large batch runs out of memory on long prompts. So each batch is cut from the prompts (sorted by length,
so similar lengths share one) to fit a memory budget: per row, the KV cache of its prompt and answer (2 x layers x kv
heads x head dim x bytes per value, per token) plus the prefill's widest activations (the MLP's intermediate
projections, gate/up/act, for each prompt token), both at the width of the batch's longest prompt (left padding). Pure
Python: the GPU's free bytes and the model's config come from the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# More rows gain nothing past this: on one H200 (random Mistral-7B shape, 64 new tokens) one batch of 4,096 ran at
# 0.91x the generated tokens/s of four batches of 1,024 (2026-12-05, with this cap raised by hand; no results file:
# `python bench/evaluate.py --model-size 7b --examples 4096 --baseline-batch-size 1024 --max-batch-rows 4096`
# repeats it).
MAX_ROWS = 1024
CPU_ROWS = 16  # on the CPU memory is not the limit, time is: the batch the job always used
MEMORY_SHARE = 0.7  # of the free memory after loading the model: the rest for the allocator's fragmentation
PREFILL_COPIES = 3  # the MLP's gate, up and activation outputs alive at once during a prompt's forward pass


def bytes_per_token(config: Mapping[str, Any], dtype_bytes: int) -> tuple[int, int]:
    """(KV cache bytes per token, prefill activation bytes per prompt token) of a decoder config.json."""
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    intermediate = int(config.get("intermediate_size") or 4 * int(config["hidden_size"]))
    return 2 * layers * kv_heads * head_dim * dtype_bytes, PREFILL_COPIES * intermediate * dtype_bytes


def row_bytes(width: int, max_new_tokens: int, kv_per_token: int, prefill_per_token: int) -> int:
    """Memory one row of a batch needs: its KV cache at full length, and its prompt's prefill activations."""
    return kv_per_token * (width + max_new_tokens) + prefill_per_token * width


def plan_batches(
    lengths: Sequence[int],
    *,
    max_new_tokens: int,
    budget_bytes: int | None,
    kv_per_token: int,
    prefill_per_token: int,
    fixed: int = 0,
    max_rows: int = MAX_ROWS,
) -> list[list[int]]:
    """Prompt indices grouped into batches, shortest prompts first. ``fixed`` > 0: batches of that many (the
    ``batch_size`` option). Otherwise each batch grows while its rows, all at the width of its longest prompt, fit
    ``budget_bytes`` (None: the CPU, CPU_ROWS rows), at most ``max_rows`` and at least one row."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if fixed > 0 or budget_bytes is None:
        size = fixed if fixed > 0 else CPU_ROWS
        return [order[start : start + size] for start in range(0, len(order), size)]
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[index]  # sorted: the newest row is the widest
        rows = len(current) + 1
        fits = rows * row_bytes(width, max_new_tokens, kv_per_token, prefill_per_token) <= budget_bytes
        if current and (not fits or rows > max_rows):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def memory_budget(free_bytes: int) -> int:
    return int(free_bytes * MEMORY_SHARE)
