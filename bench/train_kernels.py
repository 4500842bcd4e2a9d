"""Where LoRA training time goes: one 7B-shaped model, a hand-written training loop, speed-ups switched on in turn.

    python bench/train_kernels.py eager      # PEFT input cast, sdpa vs torch_varlen, packed rows, Liger kernels
    python bench/train_kernels.py compile    # torch_varlen with each decoder layer torch.compile'd (no Liger)

A GPU only. A randomly initialised Mistral-7B-shaped model (bf16), LoRA r=16 on all linear projections (fp32 adapter
weights, as PEFT keeps them), AdamW, bf16 autocast; each step one flattened row of packed examples (lognormal lengths,
64..2048 tokens) with position ids restarting per example and the collator's cu_seq_lens, as TRL's padding-free
collator gives them. Before timing, torch_varlen is checked against sdpa per segment. Prints one JSON line per
variant: tokens/s, MFU (4 x parameters x tokens/s / 989e12), peak memory. bench/train_gpu.py measures the container.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from containers.train import varlen_attention

from shapes import H100_BF16_FLOPS, SHAPES


def example_lengths(count: int, seq_len: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(seq_len, max(64, int(rng.lognormvariate(6.2, 0.7)))) for _ in range(count)]


def pack(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Best-fit-decreasing bins of example lengths, each bin <= seq_len tokens."""
    bins: list[list[int]] = []
    space: list[int] = []
    for length in sorted(lengths, reverse=True):
        fits = [i for i, free in enumerate(space) if free >= length]
        if fits:
            best = min(fits, key=lambda i: space[i])
            bins[best].append(length)
            space[best] -= length
        else:
            bins.append([length])
            space.append(seq_len - length)
    return bins


def check_varlen_matches_sdpa() -> float:
    """Largest difference of torch_varlen's output from sdpa run per segment (GQA 8:2, bf16)."""
    import torch

    torch.manual_seed(0)
    lengths = [300, 700, 48]
    total = sum(lengths)
    q = torch.randn(1, 8, total, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, total, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 2, total, 128, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, 300, 1000, total], dtype=torch.int32, device="cuda")
    out, _ = varlen_attention.attention_forward(None, q, k, v, None, cu_seq_lens_q=cu, max_length_q=max(lengths))
    parts = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        segment = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], is_causal=True, enable_gqa=True
        )
        parts.append(segment.transpose(1, 2))
    return float((out - torch.cat(parts, dim=1)).abs().max())


def batches(steps: int, rows: int, seq_len: int, vocab: int) -> list[tuple[dict[str, Any], int]]:
    import torch

    gen = torch.Generator().manual_seed(1)
    bins = pack(example_lengths(steps * rows * 64, seq_len, 1), seq_len)
    out = []
    for step in range(steps):
        lengths = [n for b in bins[step * rows : (step + 1) * rows] for n in b]
        total = sum(lengths)
        ids = torch.randint(0, vocab, (1, total), generator=gen)
        starts = torch.cumsum(torch.tensor([0, *lengths[:-1]]), 0)
        labels = ids.clone()
        labels[0, starts] = -100  # no loss across example boundaries
        cu = torch.cat([starts, torch.tensor([total])]).to(torch.int32).cuda()
        inputs = {
            "input_ids": ids.cuda(),
            "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).cuda(),
            "labels": labels.cuda(),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
        }
        out.append((inputs, total))
    return out


def timed(model: Any, data: list[tuple[dict[str, Any], int]], warm: int = 2) -> tuple[float, float]:
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    tokens, started = 0, time.perf_counter()
    for index, (inputs, count) in enumerate(data):
        if index == warm:
            torch.cuda.synchronize()
            tokens, started = 0, time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += count
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started), torch.cuda.max_memory_allocated() / 2**30


def main(mode: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, MistralConfig

    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    print(json.dumps({"torch_varlen_max_abs_diff_vs_sdpa": check_varlen_matches_sdpa()}), flush=True)
    varlen_attention.register()
    torch.manual_seed(0)
    config = MistralConfig(**SHAPES["7b"], max_position_embeddings=4096, tie_word_embeddings=False, use_cache=False)
    with torch.device("cuda"):
        base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model: Any = get_peft_model(base, lora)
    params = sum(p.numel() for p in model.parameters())

    def run(variant: str, rows: int, steps: int = 8) -> None:
        try:
            tokens_per_second, peak = timed(model, batches(steps + 2, rows, 2048, config.vocab_size))
            line = {
                "tok_s": round(tokens_per_second),
                "mfu": round(4 * params * tokens_per_second / H100_BF16_FLOPS, 4),
            }
            line["peak_gb"] = round(peak, 1)
        except torch.OutOfMemoryError:
            line = {"error": "CUDA out of memory"}
            torch.cuda.empty_cache()
        print(json.dumps({"variant": variant, "rows": rows, **line}), flush=True)

    def cast_inputs(enabled: bool) -> None:
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = enabled

    if mode == "eager":
        run("sdpa, PEFT input cast", 1)
        cast_inputs(False)
        run("sdpa", 1)
        run("sdpa", 4)
        model.get_base_model().set_attn_implementation(varlen_attention.NAME)
        for rows in (1, 2, 4):
            run("torch_varlen", rows)
        from liger_kernel.transformers import _apply_liger_kernel_to_instance  # type: ignore[import-not-found]

        _apply_liger_kernel_to_instance(model=model.get_base_model())
        for rows in (1, 2, 4, 8):
            run("torch_varlen + liger", rows)
    else:
        cast_inputs(False)
        model.get_base_model().set_attn_implementation(varlen_attention.NAME)
        started = time.perf_counter()
        for layer in model.get_base_model().model.layers:
            layer.compile(dynamic=True)
        run("torch_varlen + compiled layers", 4)
        print(json.dumps({"compile_and_first_run_s": round(time.perf_counter() - started, 1)}))
        run("torch_varlen + compiled layers", 2)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "eager")
