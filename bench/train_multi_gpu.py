"""Data-parallel scaling of the training container itself: containers/train/train.py run twice on one machine, with
nproc_per_node=1 and =N, on the same random model and synthetic chat data, and the same global batch.

    python bench/train_multi_gpu.py --model-size 7b --nproc 2 --steps 30                  # a 2-GPU machine
    python bench/train_multi_gpu.py --model-size tiny --nproc 2 --steps 6 --seq-len 256 --grad-accum 1   # CPU smoke

The base model directory (a byte-level BPE tokenizer with the ChatML template of local/tiny_model.py, a Llama config
of the --model-size shape from bench/train_gpu.py, random bf16 weights written by a child process so that this one
never holds a GPU) and the data (bench/datagen.py conversations) are written under --work-dir. Run A: one process,
gradient_accumulation_steps = N x --grad-accum; run B: N ranks, --grad-accum each: the same rows in every optimizer
step (packed rows, per-device batch --batch). Everything else is the container's defaults (lora_dropout=0 is forced:
dropout masks would differ between a rank and a micro-batch) and no evaluation.

Reported: steady tokens/s (the median of the per-step metric lines after --warmup-steps; all ranks' tokens) and per
GPU, the scaling efficiency (B's tokens/s per GPU / A's), peak memory per GPU (torch.cuda.max_memory_allocated of
each rank), wall times, and the equivalence of the two runs: tokens seen (must be equal), the largest relative
difference of the step losses, and the adapters' relative L2 difference. The defaults of --loss-rtol / --adapter-rtol
allow for bf16 and non-deterministic GPU kernels (flash-attention's backward); on a CPU (fp32) the runs are
bit-identical. Exit status 1 when the runs are not equivalent or a run failed.
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
from shapes import SHAPES

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "containers" / "train" / "train.py"


def run_train(args: argparse.Namespace, work: Path, name: str, processes: int, accumulation: int) -> dict[str, Any]:
    options = {
        "nproc_per_node": processes,
        "per_device_batch_size": args.batch,
        "gradient_accumulation_steps": accumulation,
        "max_steps": args.steps,
        "max_seq_length": args.seq_len,
        "lora_r": args.lora_r,
        "lora_dropout": 0.0,
        "gradient_checkpointing": args.gradient_checkpointing,
        "qlora": args.qlora,
        "save_steps": args.steps,
        "seed": 42,
    }
    result = container_runs.run_train(work, name, options, args.warmup_steps)
    result.pop("options")
    return {
        "processes": processes,
        "gradient_accumulation_steps": accumulation,
        **result,
        "tokens_per_second_per_gpu": result["tokens_per_second"] / processes,
    }


def compare_adapters(first: str, second: str) -> dict[str, float]:
    import torch
    from safetensors.torch import load_file

    a, b = load_file(first), load_file(second)
    if a.keys() != b.keys():
        return {"relative_l2": math.inf, "max_abs_diff": math.inf, "max_abs": 0.0}
    difference = torch.cat([(a[k].float() - b[k].float()).flatten() for k in sorted(a)])
    reference = torch.cat([b[k].float().flatten() for k in sorted(b)])
    return {
        "relative_l2": float(difference.norm() / reference.norm().clamp(min=1e-30)),
        "max_abs_diff": float(difference.abs().max()),
        "max_abs": float(reference.abs().max()),
    }


def main(args: argparse.Namespace) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tuneplane-multi-gpu-"))
    global_rows = args.nproc * args.grad_accum * args.batch * args.steps
    # At least ~150 tokens per conversation: enough rows of seq_len tokens for every step within one epoch.
    examples = args.examples or max(200, math.ceil(2 * global_rows * args.seq_len / 150))
    container_runs.prepare(work, args.model_size, examples, args.tokenizer_vocab)
    one = run_train(args, work, "one_process", 1, args.nproc * args.grad_accum)
    many = run_train(args, work, f"{args.nproc}_processes", args.nproc, args.grad_accum)

    cpu = one["peak_memory_kind"] != "cuda_max_allocated"
    loss_rtol = args.loss_rtol if args.loss_rtol is not None else (1e-4 if cpu else 2e-2)
    adapter_rtol = args.adapter_rtol if args.adapter_rtol is not None else (1e-4 if cpu else 5e-2)
    loss_diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(many["losses"], one["losses"], strict=True))
    adapters = compare_adapters(many["adapter"], one["adapter"])
    equivalent = (
        one["tokens_seen"] == many["tokens_seen"]
        and loss_diff <= loss_rtol
        and adapters["relative_l2"] <= adapter_rtol
        and many["last_epoch"] <= 1.0
    )
    results = {
        "model_size": args.model_size,
        "gpus": container_runs.gpu_names(),
        "seq_len": args.seq_len,
        "global_rows_per_step": args.nproc * args.grad_accum * args.batch,
        "steps": args.steps,
        "one_process": {k: v for k, v in one.items() if k != "adapter"},
        "n_processes": {k: v for k, v in many.items() if k != "adapter"},
        "scaling_efficiency": many["tokens_per_second_per_gpu"] / one["tokens_per_second_per_gpu"],
        "speedup": many["tokens_per_second"] / one["tokens_per_second"],
        "equivalence": {
            "tokens_seen_equal": one["tokens_seen"] == many["tokens_seen"],
            "max_loss_rel_diff": loss_diff,
            "loss_rtol": loss_rtol,
            "adapter": adapters,
            "adapter_rtol": adapter_rtol,
            "within_one_epoch": many["last_epoch"] <= 1.0,
            "equivalent": equivalent,
        },
        "work_dir": str(work),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(
        f"1 process {one['tokens_per_second']:.0f} tok/s, peak {max(one['peak_memory_gb_per_gpu']):.1f} GB; "
        f"{args.nproc} processes {many['tokens_per_second']:.0f} tok/s = {many['tokens_per_second_per_gpu']:.0f}/GPU, "
        f"peak {', '.join(f'{m:.1f}' for m in many['peak_memory_gb_per_gpu'])} GB: scaling efficiency "
        f"{results['scaling_efficiency']:.0%}; losses within {loss_diff:.1e}, adapters within "
        f"{adapters['relative_l2']:.1e} (relative L2): {'equivalent' if equivalent else 'NOT EQUIVALENT'}"
    )
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if equivalent else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the second run (GPUs, or gloo ranks on a CPU)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (packed rows; the container's default)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation per rank of the N-rank run")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--qlora", action="store_true", help="the base in 4-bit NF4 (bitsandbytes, GPU only)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the steady tokens/s")
    parser.add_argument("--examples", type=int, default=0, help="conversations to write (0: enough for --steps)")
    parser.add_argument("--tokenizer-vocab", type=int, default=8000)
    parser.add_argument("--loss-rtol", type=float, default=None)
    parser.add_argument("--adapter-rtol", type=float, default=None)
    parser.add_argument("--work-dir", help="keep the model, data and runs here (reused when present)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--out", help="also write the results JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
