"""torch_varlen: FlashAttention-2 varlen kernels inside torch, registered as a transformers attention implementation.

The kernels run only on a CUDA GPU: the equivalence test runs there (bench/train_kernels.py runs the same check before
it times anything); on a CPU the registration, the refusals and the choice of when to use it are checked.
"""

from __future__ import annotations

import types

import pytest
from containers.train import varlen_attention

torch = pytest.importorskip("torch")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention kernels need a CUDA GPU")


def test_registration_makes_the_name_loadable() -> None:
    # GIVEN transformers' attention and mask registries
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    # WHEN registered THEN the name maps to the forward and to flash attention's (mask-free) mask function
    assert varlen_attention.register() == "torch_varlen"
    assert AttentionInterface()["torch_varlen"] is varlen_attention.attention_forward
    assert "torch_varlen" in ALL_MASK_ATTENTION_FUNCTIONS


def test_padded_batches_are_refused_with_the_way_out() -> None:
    # GIVEN a batch with an attention mask and no cu_seq_lens (a padded batch)
    q = torch.zeros(2, 4, 8, 16)
    kv = torch.zeros(2, 2, 8, 16)
    # WHEN attention runs THEN it names the settings that give padding-free batches
    with pytest.raises(ValueError, match="needs padding-free batches.*attn_implementation=sdpa"):
        varlen_attention.attention_forward(None, q, kv, kv, torch.ones(2, 8))


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (types.SimpleNamespace(sliding_window=4096), None),
        (types.SimpleNamespace(sliding_window=None), None),
        (types.SimpleNamespace(sliding_window=1024), "sliding window (1024) is shorter than max_seq_length (2048)"),
        (types.SimpleNamespace(attn_logit_softcapping=50.0), "soft-caps attention logits"),
        (types.SimpleNamespace(attention_dropout=0.1), "attention dropout"),
    ],
)
def test_usable_only_where_it_computes_what_the_model_does(config: object, reason: str | None) -> None:
    why_not = varlen_attention.usable_for(config, max_seq_length=2048)
    assert why_not == reason if reason is None else (why_not is not None and reason in why_not)


@cuda_only
def test_matches_sdpa_per_segment_forward_and_backward() -> None:
    # GIVEN three packed segments, GQA 8 query heads : 2 KV heads, bf16
    torch.manual_seed(0)
    lengths = [300, 700, 48]
    total = sum(lengths)
    shape = {"device": "cuda", "dtype": torch.bfloat16, "requires_grad": True}
    q = torch.randn(1, 8, total, 128, **shape)
    k = torch.randn(1, 2, total, 128, **shape)
    v = torch.randn(1, 2, total, 128, **shape)
    cu = torch.tensor([0, 300, 1000, total], dtype=torch.int32, device="cuda")
    # WHEN attention runs on the packed row, and sdpa on each segment alone
    out, _ = varlen_attention.attention_forward(None, q, k, v, None, cu_seq_lens_q=cu, max_length_q=700)
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True, enable_gqa=True
        ).transpose(1, 2)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
    ]
    reference = torch.cat(parts, dim=1)
    # THEN outputs agree to bf16 precision, and no token sees another segment
    assert out.shape == (1, total, 8, 128)
    assert (out - reference).abs().max().item() < 2e-2
    # AND so do the gradients of q, k and v
    grad = torch.randn_like(out)
    mine = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(reference, (q, k, v), grad)
    for a, b in zip(mine, theirs, strict=True):
        assert (a - b).abs().max().item() < 5e-2 * max(1.0, b.abs().max().item())
