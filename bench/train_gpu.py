"""LoRA training throughput of the training container: its defaults vs the tutorial "seed recipe", in one run.

    python bench/train_gpu.py --model-size 7b --steps 20 --out results.json  # a GPU: tokens/s, memory, MFU, ratio
    python bench/train_gpu.py --model-size tiny --steps 2 --seq-len 256     # CPU smoke run

Both recipes are containers/train/train.py itself (TRL SFTTrainer + PEFT), run as a subprocess on the same randomly
initialised model (a Llama model of the size's shape; the 7b shape is Mistral-7B's, built in code: no downloads) and
the same synthetic chat data (bench/datagen.py), LoRA r=16 on all linear projections, bf16 on a GPU, loss on the
assistant tokens:
(a) the container's defaults: examples packed (best fit) into rows of --seq-len tokens, padding-free batches
    (FlashAttention-2 varlen kernels: flash-attn when installed, else torch's own), Liger's RMSNorm/SwiGLU/RoPE
    kernels, no gradient checkpointing, per-device batch and accumulation from the container;
(b) the seed recipe: per-device batch 4 examples, gradient accumulation 4, gradient checkpointing, no packing, padding
    to the longest example of the batch, sdpa, no Liger kernels.
Tokens/s counts real (non-padding) tokens: the median of the per-step metric lines after --warmup-steps. MFU =
4 x base parameters x tokens/s / 989e12 (H100 dense bf16; forward and input-gradient passes, recomputation not
counted). QLoRA: the defaults with the base in 4-bit NF4 + double quantization and gradient checkpointing
(bitsandbytes; GPU only), for its peak memory. Options of (a) can be overridden with --a-options '{"name": value}'.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import container_runs
from shapes import H100_BF16_FLOPS, SHAPES

SEED_RECIPE = {
    "per_device_batch_size": 4,
    "gradient_accumulation_steps": 4,
    "gradient_checkpointing": True,
    "packing": False,
    "padding_free": False,
    "attn_implementation": "sdpa",
    "liger_kernels": "false",
}


def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tuneplane-train-gpu-"))
    gpus = container_runs.gpu_names()
    # Enough conversations (about 150 tokens and up each) for every step of (a) within one epoch.
    examples = args.examples or max(400, math.ceil(2 * args.steps * 8 * args.seq_len / 150))
    container_runs.prepare(work, args.model_size, examples)
    params = container_runs.base_parameters(work)
    common: dict[str, Any] = {"max_steps": args.steps, "max_seq_length": args.seq_len, "save_steps": args.steps}
    if gpus:
        common["nproc_per_node"] = 1

    def measured(name: str, options: dict[str, Any], warmup: int) -> dict[str, Any]:
        result = container_runs.run_train(work, name, {**common, **options}, warmup)
        result.pop("adapter")
        result["mfu"] = 4 * params * result["tokens_per_second"] / H100_BF16_FLOPS
        return result

    results: dict[str, Any] = {
        "model_size": args.model_size,
        "parameters": params,
        "gpus": gpus,
        "seq_len": args.seq_len,
    }
    a = results["defaults"] = measured("defaults", json.loads(args.a_options), args.warmup_steps)
    if not args.skip_seed_recipe:
        b = results["seed_recipe"] = measured("seed_recipe", SEED_RECIPE, args.warmup_steps)
        results["speedup"] = a["tokens_per_second"] / b["tokens_per_second"]
    if gpus and not args.skip_qlora:
        qlora = {"qlora": True, "gradient_checkpointing": True, "max_steps": max(4, args.steps // 3)}
        results["qlora"] = measured("qlora", qlora, 2)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    lines = [f"{'recipe':<12} {'tok/s':>8} {'MFU':>6} {'peak GB':>8}  attention, liger"]
    for name in ("defaults", "seed_recipe", "qlora"):
        if name in results:
            r = results[name]
            lines.append(
                f"{name:<12} {r['tokens_per_second']:>8.0f} {r['mfu']:>6.1%} {max(r['peak_memory_gb_per_gpu']):>8.1f}"
                f"  {r['attn_implementation']}, {r['liger_kernels']}"
            )
            lines.append(f"{'':<12} batch: {r['batch_plan']}")
    print("\n".join(lines))
    if "speedup" in results:
        print(f"defaults vs seed recipe: ratio {results['speedup']:.2f}x")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per recipe")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the steady tokens/s")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--a-options", default="{}", help="JSON object of container settings for the defaults run")
    parser.add_argument("--examples", type=int, default=0, help="conversations to write (0: enough for --steps)")
    parser.add_argument("--skip-qlora", action="store_true")
    parser.add_argument("--skip-seed-recipe", action="store_true", help="time the defaults (and QLoRA) only")
    parser.add_argument("--work-dir", help="keep the model, data and runs here (reused when present)")
    parser.add_argument("--out", help="also write the results JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
    sys.exit(0)
