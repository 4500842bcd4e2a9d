"""Data-parallel scaling of the training container itself: containers/train/train.py run twice on one machine, with
nproc_per_node=1 and =N, on the same random model and synthetic chat data, and the same global batch.

    python bench/train_multi_gpu.py --model-size 7b --nproc 2 --steps 30                  # a 2-GPU machine
    python bench/train_multi_gpu.py --model-size tiny --nproc 2 --steps 6 --seq-len 256 --grad-accum 1   # CPU smoke

The base model directory (a byte-level BPE tokenizer with the ChatML template of local/tiny_model.py, a Llama config
of the --model-size shape from bench/train_gpu.py, random bf16 weights written by a child process so that this one
never holds a GPU) and the data (bench/datagen.py conversations) are written under --work-dir. Run A: one process,
gradient_accumulation_steps = N x --grad-accum; run B: N ranks, --grad-accum each: the same rows in every optimizer
step (packed rows, per-device batch --batch). Everything else is the container's defaults but lora_dropout=0 (dropout
masks would differ between a rank and a micro-batch) and no evaluation.

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
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import datagen
from train_gpu import SHAPES

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "containers" / "train" / "train.py"


def write_data(directory: Path, examples: int, seed: int) -> list[str]:
    """`examples` synthetic conversations as directory/train.jsonl; returns every message text (for the tokenizer)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [datagen.example(rng) for _ in range(examples)]
    (directory / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    texts: list[str] = []
    for row in rows:
        messages = row["messages"]
        assert isinstance(messages, list)
        texts += [str(message["content"]) for message in messages]
    return texts


def write_model_config(directory: Path, texts: list[str], size: str, tokenizer_vocab: int) -> None:
    """Tokenizer, chat template and a config.json of the given shape (no weights)."""
    sys.path.insert(0, str(REPO))
    from local.tiny_model import write_base_model

    write_base_model(directory, texts, vocab_size=tokenizer_vocab)
    config = json.loads((directory / "config.json").read_text())
    shape = SHAPES[size]
    config.update({key: value for key, value in shape.items() if key != "vocab_size"})
    config["vocab_size"] = max(shape["vocab_size"], config["vocab_size"])
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def write_weights(directory: Path, seed: int) -> None:
    """Random weights for directory/config.json (bf16, initialised on GPU 0 when there is one); run in a child."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size="5GB")


def run_train(args: argparse.Namespace, work: Path, name: str, processes: int, accumulation: int) -> dict[str, Any]:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, str(TRAIN), "--hyperparameters", str(work / "no-hyperparameters.json")]
    options = {
        "model_dir": work / "model",
        "train_dir": work / "data",
        "eval_dir": work / "no-eval",
        "output_dir": run / "model",
        "checkpoint_dir": run / "checkpoints",
        "failure_file": run / "failure",
        "nproc_per_node": processes,
        "per_device_batch_size": args.batch,
        "gradient_accumulation_steps": accumulation,
        "max_steps": args.steps,
        "max_seq_length": args.seq_len,
        "lora_r": args.lora_r,
        "lora_dropout": 0.0,
        "gradient_checkpointing": str(args.gradient_checkpointing).lower(),
        "qlora": str(args.qlora).lower(),
        "logging_steps": 1,
        "save_steps": args.steps,
        "seed": 42,
    }
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"[{name}] {' '.join(command)}", flush=True)
    started = time.monotonic()
    with (work / f"{name}.log").open("w") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.monotonic() - started
    if code != 0:
        failure = run / "failure"
        reason = failure.read_text().strip() if failure.is_file() else "(no failure file)"
        raise SystemExit(f"[{name}] train.py exited {code}: {reason}; log: {work / f'{name}.log'}")
    summary = json.loads((run / "model" / "training_summary.json").read_text())
    curve = summary["loss_curve"]
    steady = [p["tokens_per_second"] for p in curve[args.warmup_steps :] if "tokens_per_second" in p]
    tokens_per_second = statistics.median(steady) if steady else float(summary["tokens_per_second"] or 0.0)
    return {
        "processes": processes,
        "gradient_accumulation_steps": accumulation,
        "world_size": summary["world_size"],
        "tokens_seen": summary["tokens_seen"],
        "tokens_per_second": tokens_per_second,
        "tokens_per_second_per_gpu": tokens_per_second / processes,
        "peak_memory_gb_per_gpu": summary["peak_memory_gb_per_rank"],
        "peak_memory_kind": summary["peak_memory_kind"],
        "last_epoch": curve[-1]["epoch"],
        "losses": [p["train_loss"] for p in curve],
        "wall_time_s": round(wall, 1),
        "precision": summary["precision"],
        "attn_implementation": summary["attn_implementation"],
        "adapter": str(run / "model" / "adapter_model.safetensors"),
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


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def main(args: argparse.Namespace) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tuneplane-multi-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "no-hyperparameters.json").write_text("{}")
    global_rows = args.nproc * args.grad_accum * args.batch * args.steps
    # At least ~150 tokens per conversation: enough rows of seq_len tokens for every step within one epoch.
    examples = args.examples or max(200, math.ceil(2 * global_rows * args.seq_len / 150))
    model = work / "model"
    if not (model / "config.json").is_file() or not any(model.glob("*.safetensors")):
        started = time.monotonic()
        texts = write_data(work / "data", examples, seed=0)
        write_model_config(model, texts, args.model_size, args.tokenizer_vocab)
        subprocess.run([sys.executable, __file__, "--write-weights", str(model)], check=True)
        elapsed = time.monotonic() - started
        print(f"wrote {examples} conversations and a random {args.model_size} model in {elapsed:.0f} s", flush=True)
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
        "gpus": gpu_names(),
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
    parser.add_argument("--batch", type=int, default=1, help="per-device batch (packed rows)")
    parser.add_argument("--grad-accum", type=int, default=4, help="gradient accumulation per rank of the N-rank run")
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
    parser.add_argument("--write-weights", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    if parsed.write_weights:
        write_weights(Path(parsed.write_weights), seed=0)
        sys.exit(0)
    sys.exit(main(parsed))
