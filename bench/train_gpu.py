"""LoRA training throughput: the training container's defaults vs the tutorial "seed recipe", in one run.

    python bench/train_gpu.py --model-size 7b --steps 20          # an H100: tokens/s, peak memory, MFU, ratio
    python bench/train_gpu.py --model-size tiny --steps 2         # CPU smoke run
    python bench/train_gpu.py --attn flex_attention --a-batch 4 --skip-seed-recipe   # packed rows, block-sparse

A randomly initialised model of the given shape (Mistral-7B config built in code; no downloads), synthetic chat-like
token data (example lengths 64..seq_len), LoRA r=16 on all linear projections, bf16 on a GPU.
(a) defaults: examples packed (best fit) into rows of seq_len tokens, padding-free (position ids restart per example),
    no gradient checkpointing, flash-attention/sdpa, batch of `--a-batch` rows.
(b) seed recipe: per-device batch 4 examples, gradient accumulation 4, gradient checkpointing, no packing, padding to
    the longest example of the batch.
Tokens/s counts real (non-padding) tokens. MFU = 4 x parameters x tokens/s / 989e12 (H100 dense bf16). QLoRA: peak
memory of the defaults with the base in 4-bit NF4 (bitsandbytes; GPU only).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from typing import Any

H100_BF16_FLOPS = 989e12
SHAPES: dict[str, dict[str, Any]] = {
    "7b": {  # mistralai/Mistral-7B-v0.1 config.json
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
    },
}


def example_lengths(count: int, seq_len: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(seq_len, max(64 // (2048 // seq_len or 1), int(rng.lognormvariate(6.2, 0.7)))) for _ in range(count)]


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


def build_model(
    size: str,
    seq_len: int,
    device: str,
    qlora: bool,
    tmp: str | None,
    attn_choice: str = "auto",
    bf16_adapters: bool = False,
) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MistralConfig

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = MistralConfig(**SHAPES[size], max_position_embeddings=max(seq_len, 4096), tie_word_embeddings=False)
    config.use_cache = False
    attn = "sdpa" if attn_choice == "auto" else attn_choice
    if device == "cuda" and attn_choice == "auto":
        import importlib.util

        attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    if qlora:
        assert tmp is not None
        with torch.device("cpu"):
            AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(tmp)
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quant, dtype=dtype, attn_implementation=attn, device_map={"": 0}
        )
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    # PEFT keeps adapter weights in fp32 by default (autocast_adapter_dtype); the training container trains under
    # bf16 autocast. --bf16-adapters keeps them in bf16 (no fp32 casts of the activations in every LoRA layer).
    return get_peft_model(model, lora, autocast_adapter_dtype=not bf16_adapters), attn


def run_recipe(
    model: Any, device: str, batches: list[tuple[Any, ...]], accum: int, checkpointing: bool
) -> dict[str, float]:
    import torch

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    else:
        model.gradient_checkpointing_disable()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, started, warm = 0, 0.0, accum  # the first optimizer step is a warm-up, not timed
    for index, (inputs, real_tokens) in enumerate(batches):
        if index == warm:
            if device == "cuda":
                torch.cuda.synchronize()
            started, tokens = time.perf_counter(), 0
        loss = model(**inputs).loss / accum
        loss.backward()
        if (index + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        tokens += real_tokens
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {"tokens_per_second": tokens / elapsed, "peak_memory_gb": peak, "timed_tokens": tokens}


def packed_batches(steps: int, rows: int, seq_len: int, vocab: int, device: str, seed: int) -> list[tuple[Any, ...]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    bins = pack(example_lengths(steps * rows * 64, seq_len, seed), seq_len)
    batches = []
    for step in range(steps + 1):
        chosen = bins[step * rows : (step + 1) * rows]
        lengths = [n for b in chosen for n in b]
        total = sum(lengths)
        ids = torch.randint(0, vocab, (1, total), generator=gen)
        positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        labels = ids.clone()
        labels[0, torch.cumsum(torch.tensor([0, *lengths[:-1]]), 0)] = -100  # no loss across example boundaries
        inputs = {"input_ids": ids.to(device), "position_ids": positions.to(device), "labels": labels.to(device)}
        batches.append((inputs, total))
    return batches


def padded_batches(
    steps: int, batch: int, accum: int, seq_len: int, vocab: int, device: str, seed: int
) -> list[tuple[Any, ...]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = example_lengths((steps + 1) * batch * accum, seq_len, seed)
    batches = []
    for start in range(0, len(lengths), batch):
        chunk = lengths[start : start + batch]
        longest = max(chunk)
        ids = torch.randint(0, vocab, (len(chunk), longest), generator=gen)
        mask = torch.zeros(len(chunk), longest, dtype=torch.long)
        for row, n in enumerate(chunk):
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
        batches.append((inputs, sum(chunk)))
    return batches


def main(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    vocab = SHAPES[args.model_size]["vocab_size"]
    model, attn = build_model(
        args.model_size,
        args.seq_len,
        device,
        qlora=False,
        tmp=None,
        attn_choice=args.attn,
        bf16_adapters=args.bf16_adapters,
    )
    if args.compile:
        model = torch.compile(model, dynamic=True)
    params = sum(p.numel() for p in model.parameters())
    results: dict[str, Any] = {"model_size": args.model_size, "parameters": params, "device": device, "attn": attn}
    a = run_recipe(model, device, packed_batches(args.steps, args.a_batch, args.seq_len, vocab, device, 1), 1, False)
    a["mfu"] = 4 * params * a["tokens_per_second"] / H100_BF16_FLOPS
    results["defaults"] = a
    if args.skip_seed_recipe:
        print(json.dumps(results, indent=2))
        print(
            f"defaults ({attn}, {args.a_batch} packed rows) {a['tokens_per_second']:.0f} tok/s (MFU {a['mfu']:.1%}, "
            f"{a['peak_memory_gb']:.1f} GB)"
        )
        return results
    b_batches = padded_batches(args.steps, 4, 4, args.seq_len, vocab, device, 1)
    b = run_recipe(model, device, b_batches, 4, True)
    b["mfu"] = 4 * params * b["tokens_per_second"] / H100_BF16_FLOPS
    results["seed_recipe"] = b
    results["speedup"] = a["tokens_per_second"] / b["tokens_per_second"]
    del model
    gc.collect()
    if device == "cuda" and not args.skip_qlora:
        torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory() as tmp:
            qmodel, _ = build_model(args.model_size, args.seq_len, device, qlora=True, tmp=tmp)
            batches = packed_batches(max(2, args.steps // 4), 1, args.seq_len, vocab, device, 2)
            results["qlora"] = run_recipe(qmodel, device, batches, 1, True)
    print(json.dumps(results, indent=2))
    print(
        f"defaults {a['tokens_per_second']:.0f} tok/s (MFU {a['mfu']:.1%}, {a['peak_memory_gb']:.1f} GB) "
        f"vs seed recipe {b['tokens_per_second']:.0f} tok/s (MFU {b['mfu']:.1%}, {b['peak_memory_gb']:.1f} GB): "
        f"ratio {results['speedup']:.2f}x"
    )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per recipe (after 1 warm-up)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--a-batch", type=int, default=1, help="packed rows per step for the defaults")
    parser.add_argument("--skip-qlora", action="store_true")
    parser.add_argument("--skip-seed-recipe", action="store_true", help="time the defaults only")
    parser.add_argument("--bf16-adapters", action="store_true", help="LoRA weights in bf16 (PEFT's default: fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes)")
    parser.add_argument(
        "--attn",
        choices=["auto", "sdpa", "flex_attention", "eager", "flash_attention_2"],
        default="auto",
        help="attention of the defaults (auto: flash_attention_2 when installed, else sdpa)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
