"""FlashAttention-2 for padding-free batches without the flash-attn package.

The flash-attn package has no binary wheel for current torch/CUDA pairs (building it takes hours), but torch ships
FlashAttention-2's variable-length kernels itself (`torch.nn.attention.varlen.varlen_attn`, CUDA only). This module
registers them with transformers as the attention implementation "torch_varlen": each packed example attends only to
itself (causal, per segment of the collator's `cu_seq_lens_q`), with no attention mask and no padding. sdpa, given
the same flattened batch, gets a block-diagonal mask over all of it and computes every masked score: on an H100 with a
7B shape and four packed rows of 2048 tokens, torch_varlen trains at 1.48x sdpa's tokens/s (bench/train_kernels.py;
at one row the two are within 10%).

    from containers.train import varlen_attention
    varlen_attention.register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=varlen_attention.NAME)
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from typing import Any

NAME = "torch_varlen"


def available() -> bool:
    """True where the kernels can run: a CUDA GPU and a torch that has torch.nn.attention.varlen."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        return importlib.util.find_spec("torch.nn.attention.varlen") is not None
    except ModuleNotFoundError:
        return False


def usable_for(model_config: Any, max_seq_length: int) -> str | None:
    """None when "torch_varlen" serves this model's training, else why not (a sentence)."""
    window = getattr(model_config, "sliding_window", None)
    if window is not None and window < max_seq_length:
        return f"the model's sliding window ({window}) is shorter than max_seq_length ({max_seq_length})"
    if getattr(model_config, "attn_logit_softcapping", None):
        return "the model soft-caps attention logits"
    if getattr(model_config, "attention_dropout", 0.0):
        return "the model uses attention dropout"
    return None


def register() -> str:
    """Make "torch_varlen" an attention implementation transformers accepts (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, attention_forward)
    # Like flash attention, it needs no mask: segments come from cu_seq_lens, causality from the kernel.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    return NAME


def attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention signature: query (batch, heads, tokens, dim), key/value (batch, kv heads, tokens, dim);
    returns (batch, tokens, heads, dim). The batch is the collator's one flattened row of packed examples."""
    import torch
    from torch.nn.attention.varlen import varlen_attn

    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    max_length = kwargs.get("max_length_q")
    if cu_seq_lens is None or max_length is None or attention_mask is not None:
        raise ValueError(
            f"attn_implementation={NAME} needs padding-free batches (packing=true or padding_free=true); "
            "use attn_implementation=sdpa for padded batches"
        )
    if dropout or softcap:
        raise ValueError(f"attn_implementation={NAME} supports neither attention dropout nor soft-capping")
    if sliding_window is not None and sliding_window < int(max_length):
        raise ValueError(f"attn_implementation={NAME} does not apply a sliding window ({sliding_window})")
    batch, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    # (batch, heads, tokens, dim) -> (batch * tokens, heads, dim): the kernel's packed layout.
    q = query.transpose(1, 2).reshape(batch * tokens, heads, dim)
    k = key.transpose(1, 2).reshape(batch * tokens, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * tokens, kv_heads, dim)
    cu_seq_lens = cu_seq_lens.to(device=q.device, dtype=torch.int32)
    longest = int(max_length)
    out = varlen_attn(
        q, k, v, cu_seq_lens, cu_seq_lens, longest, longest, scale=scaling, **_causal_gqa(heads, kv_heads)
    )
    if isinstance(out, tuple):  # (output, aux) when aux outputs were asked for
        out = out[0]
    return out.reshape(batch, tokens, heads, dim), None


@functools.lru_cache(maxsize=8)
def _causal_gqa(heads: int, kv_heads: int) -> dict[str, Any]:
    """Keyword arguments for causal attention with kv_heads <= heads, across torch versions: torch 2.11 takes
    window_size=(-1, 0) for causal and fewer KV heads as they are (the FlashAttention kernel's own GQA); torch 2.13
    spells them is_causal=True and enable_gqa=True."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = kv_heads != heads
    return kwargs
