"""Evaluate stage throughput: the job's batches sized to the GPU's memory (batch_size 0, the default) against the
fixed batch of 16 it used before, in the same run.

    python bench/evaluate.py --model-size 7b --examples 512 --out bench/results/evaluate_auto_7b_<gpu>_<date>.json
    python bench/evaluate.py --model-size tiny --examples 8 --batch-size 4 --baseline-batch-size 1   # CPU smoke run
    python bench/evaluate.py --model-size 7b --examples 512 --adapter-rank 16   # ServeMode=lora: base + adapter
    python bench/evaluate.py --model-size 7b --examples 4096 --baseline-batch-size 1024 --max-batch-rows 4096

Builds a random model of the given shape (Mistral-7B dimensions; the vocabulary of the tiny tokenizer of
local/tiny_model.py, so every generated id decodes), writes synthetic chat conversations, and runs
containers/evaluate/evaluate.py as a subprocess twice on the same data: `--batch_size 16` (the baseline) and the given
batch size (0: sized to the free memory). With `--adapter-rank`, both runs evaluate the candidate as a ServeMode=lora
endpoint serves it: the base with a random LoRA adapter of that rank on every linear layer, unmerged (PEFT's layers:
more work per token than the merged model). A random model never emits its end-of-turn token, so every answer runs to
`--max-new-tokens`: the figure is the worst case. Prints the job's own generated tokens/s (the candidate's generation,
timed inside the job) of each run and the ratio.
Needs torch, transformers and safetensors (and peft with --adapter-rank).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from random_model import write_random_adapter, write_random_model  # noqa: E402  (bench/ is the script's own directory)
from shapes import SHAPES  # noqa: E402

ENTRYPOINT = ROOT / "containers" / "evaluate" / "evaluate.py"


def conversations(count: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You route support tickets to a team."},
                {"role": "user", "content": f"ticket {i}: my invoice {i * 7} was charged twice, please refund it"},
                {"role": "assistant", "content": "billing"},
            ]
        }
        for i in range(count)
    ]


def build(root: Path, size: str, examples: int, adapter_rank: int) -> tuple[Path, Path, Path | None]:
    model_dir, eval_file = root / "model", root / "eval.jsonl"
    rows = conversations(examples)
    shape = {key: value for key, value in SHAPES[size].items() if key != "vocab_size"}
    texts = [m["content"] for row in rows for m in row["messages"]]
    model = write_random_model(
        model_dir, texts, {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **shape}
    )
    adapter = write_random_adapter(model, root / "adapter", adapter_rank) if adapter_rank else None
    del model
    eval_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model_dir, eval_file, adapter


def evaluate(
    root: Path,
    model_dir: Path,
    eval_file: Path,
    batch: int,
    max_new_tokens: int,
    adapter: Path | None,
    max_batch_rows: int | None = None,
) -> dict[str, Any]:
    out = root / f"out-b{batch}"
    command = [
        sys.executable,
        str(ENTRYPOINT),
        "--candidate_dir", str(model_dir),
        "--base_dir", str(model_dir),
        "--production_dir", "",
        "--eval_dir", str(eval_file),
        "--output_dir", str(out),
        "--failure_file", str(root / f"failure-b{batch}"),
        "--max_new_tokens", str(max_new_tokens),
        "--batch_size", str(batch),
        "--min_stop_rate", "0",
        "--worst_examples", "0",
        "--adapter_dir", str(adapter or ""),
        *(["--max_batch_rows", str(max_batch_rows)] if max_batch_rows else []),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        failure = root / f"failure-b{batch}"
        reason = failure.read_text() if failure.is_file() else done.stderr[-2000:]
        raise SystemExit(f"evaluate.py --batch_size {batch} failed: {reason}")
    report = json.loads((out / "evaluation.json").read_text())
    candidate = report["models"]["candidate"]
    return {
        "batch_size": batch,
        "engine": candidate.get("engine"),
        "adapter": candidate.get("adapter") is not None,
        "split_batches": candidate.get("split_batches"),
        "job_wall_s": round(wall, 2),
        "device": report.get("device"),
        "generation_seconds": candidate["generation_seconds"],
        "examples_per_second": candidate["examples_per_second"],
        "generated_tokens_per_second": candidate.get("generated_tokens_per_second"),
        "batches": candidate.get("batches"),
        "largest_batch": candidate.get("largest_batch"),
        "mean_generated_tokens": report["metrics"]["candidate"].get("mean_generated_tokens"),
        "peak_memory_gb": report.get("peak_memory_gb"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=0, help="the run measured (0: sized to the GPU's memory)")
    parser.add_argument("--baseline-batch-size", type=int, default=16, help="the baseline (the job's old default)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--max-batch-rows", type=int, help="the measured run's cap on rows per batch (default: the job's own)"
    )
    parser.add_argument(
        "--adapter-rank", type=int, default=0, help="evaluate base + a random LoRA adapter of this rank (0: none)"
    )
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-eval-") as scratch:
        root = Path(scratch)
        started = time.monotonic()
        model_dir, eval_file, adapter = build(root, args.model_size, args.examples, args.adapter_rank)
        print(f"built a random {args.model_size} model in {time.monotonic() - started:.1f}s", flush=True)
        baseline = evaluate(root, model_dir, eval_file, args.baseline_batch_size, args.max_new_tokens, adapter)
        print(f"baseline: {json.dumps(baseline)}", flush=True)
        measured = evaluate(
            root, model_dir, eval_file, args.batch_size, args.max_new_tokens, adapter, args.max_batch_rows
        )
    ratio = (
        measured["generated_tokens_per_second"] / baseline["generated_tokens_per_second"]
        if measured["generated_tokens_per_second"] and baseline["generated_tokens_per_second"]
        else None
    )
    results = {
        "command": " ".join(["python", "bench/evaluate.py", *sys.argv[1:]]),
        "gpu": _gpu_name(),
        "model_size": args.model_size,
        "examples": args.examples,
        "max_new_tokens": args.max_new_tokens,
        "adapter_rank": args.adapter_rank,
        "max_batch_rows": args.max_batch_rows,
        "baseline": baseline,
        "measured": measured,
        "generated_tokens_per_second_ratio": ratio,
    }
    print(json.dumps(results, indent=2))
    if ratio is not None:
        print(
            f"batch {args.batch_size or 'auto'} (largest {measured['largest_batch']}): "
            f"{measured['generated_tokens_per_second']:.1f} generated tokens/s vs batch {args.baseline_batch_size}: "
            f"{baseline['generated_tokens_per_second']:.1f}: ratio {ratio:.2f}x"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


if __name__ == "__main__":
    main()
