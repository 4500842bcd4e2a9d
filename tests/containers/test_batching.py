"""The Evaluate job's batches (containers/evaluate/batching.py): sized to the GPU's free memory, one width each."""

from __future__ import annotations

import pytest
from containers.evaluate import batching

MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1 config.json
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}


def test_the_kv_cache_and_prefill_bytes_follow_the_config() -> None:
    # GIVEN Mistral-7B in bf16: 32 layers x 8 KV heads x 128 head dim x (K and V) x 2 bytes = 128 KiB per token
    kv, prefill = batching.bytes_per_token(MISTRAL_7B, 2)
    assert kv == 2 * 32 * 8 * 128 * 2 == 131_072
    # AND the prefill's widest activations: gate, up and act of 14336 values per prompt token
    assert prefill == 3 * 14336 * 2
    # AND a config with head_dim and no num_key_value_heads (multi-head attention) is read as such
    assert batching.bytes_per_token({**MISTRAL_7B, "num_key_value_heads": None, "head_dim": 64}, 4)[0] == (
        2 * 32 * 32 * 64 * 4
    )


def test_batches_fill_the_memory_budget_at_the_width_of_their_longest_prompt() -> None:
    # GIVEN 7B, 64 new tokens, short prompts of 100 tokens and a budget of exactly 300 such rows
    kv, prefill = batching.bytes_per_token(MISTRAL_7B, 2)
    row = batching.row_bytes(100, 64, kv, prefill)
    batches = batching.plan_batches(
        [100] * 1000, max_new_tokens=64, budget_bytes=300 * row, kv_per_token=kv, prefill_per_token=prefill
    )
    # THEN batches of 300 rows (and the rest), every prompt once
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    assert sorted(i for b in batches for i in b) == list(range(1000))


def test_long_prompts_get_smaller_batches_and_short_ones_are_grouped_first() -> None:
    # GIVEN prompts of 50 and of 2000 tokens, mixed, with the budget of 64 rows of 2000 tokens
    kv, prefill = batching.bytes_per_token(MISTRAL_7B, 2)
    lengths = [2000 if i % 2 else 50 for i in range(400)]
    budget = 64 * batching.row_bytes(2000, 256, kv, prefill)
    batches = batching.plan_batches(
        lengths, max_new_tokens=256, budget_bytes=budget, kv_per_token=kv, prefill_per_token=prefill
    )
    # THEN the short prompts share large batches, the long ones batches of 64, never a batch over the budget
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) * batching.row_bytes(width, 256, kv, prefill) <= budget
        assert len({lengths[i] for i in batch}) <= 2
    assert [len(b) for b in batches if lengths[b[-1]] == 2000][:3] == [64, 64, 64]
    assert len(batches[0]) > 64 and all(lengths[i] == 50 for i in batches[0])


def test_a_prompt_too_long_for_the_budget_still_runs_alone_and_rows_are_capped() -> None:
    kv, prefill = batching.bytes_per_token(MISTRAL_7B, 2)
    alone = batching.plan_batches(
        [5000, 10], max_new_tokens=64, budget_bytes=1, kv_per_token=kv, prefill_per_token=prefill
    )
    assert alone == [[1], [0]]
    capped = batching.plan_batches(
        [10] * 3000, max_new_tokens=8, budget_bytes=10**15, kv_per_token=kv, prefill_per_token=prefill
    )
    assert [len(b) for b in capped] == [batching.MAX_ROWS, batching.MAX_ROWS, 3000 - 2 * batching.MAX_ROWS]
    # AND the job's max_batch_rows moves the cap
    wider = batching.plan_batches(
        [10] * 3000, max_new_tokens=8, budget_bytes=10**15, kv_per_token=kv, prefill_per_token=prefill, max_rows=2500
    )
    assert [len(b) for b in wider] == [2500, 500]


@pytest.mark.parametrize(("fixed", "budget", "sizes"), [(7, 10**12, [7, 7, 6]), (0, None, [16, 4])])
def test_a_fixed_batch_size_or_the_cpu_keeps_fixed_batches(fixed: int, budget: int | None, sizes: list[int]) -> None:
    count = sum(sizes)
    batches = batching.plan_batches(
        list(range(count, 0, -1)),
        max_new_tokens=8,
        budget_bytes=budget,
        kv_per_token=1,
        prefill_per_token=1,
        fixed=fixed,
    )
    assert [len(b) for b in batches] == sizes
    assert batches[0][0] == count - 1  # the shortest prompt first
