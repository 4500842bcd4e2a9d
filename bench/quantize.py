"""Quantize-stage time and peak memory (llm-compressor AWQ W4A16, group 128) through quantize.main.

    python bench/quantize.py --model-size 7b --out bench/results/quantize_h100.json   # a GPU (target: < 30 min)
    python bench/quantize.py --model-size tiny --samples 16                           # CPU smoke run

Builds a bf16 model of the given shape with random weights (the tiny tokenizer + ChatML template of
local/tiny_model.py, Mistral-7B config for 7b; no downloads) and synthetic chat conversations (`--samples` for
calibration, rendered through the chat template and cut at `--seq-len` tokens, 32 for the NLL), then runs the
Quantize entrypoint with the stage's defaults. Prints and writes the report's numbers: load / AWQ / total time, peak
GPU memory, peak host RSS, weights before/after, mean token NLL before/after. A random model says nothing about
accuracy: read the NLL as a smoke check.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from containers.quantize import quantize

from random_model import write_random_model  # bench/ is the script's own directory
from shapes import SHAPES as TRAIN_SHAPES

SHAPES: dict[str, dict[str, Any]] = {
    "7b": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **TRAIN_SHAPES["7b"]},
    "1b": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **TRAIN_SHAPES["1b"]},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "vocab_size": 1024},
}
WORDS = "order shipped delivery report arrived invoice customer refund warehouse parcel late early on time".split()


def conversations(count: int, seed: int) -> list[dict[str, Any]]:
    """Chat rows of varied length (about 20 to 400 words)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        question = " ".join(rng.choices(WORDS, k=rng.randint(10, 150)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(10, 250)))
        rows.append(
            {"messages": [{"role": "user", "content": f"{i}: {question}"}, {"role": "assistant", "content": answer}]}
        )
    return rows


def build(root: Path, shape: dict[str, Any], samples: int) -> tuple[Path, Path, Path]:
    import torch

    train, evaluation = conversations(samples, seed=0), conversations(32, seed=1)
    texts = [m["content"] for row in train[:64] for m in row["messages"]]
    model_dir = root / "model"
    started = time.monotonic()
    model = write_random_model(model_dir, texts, shape, "5GB")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"built the model in {time.monotonic() - started:.1f}s", flush=True)
    for name, rows in (("train", train), ("eval", evaluation)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, root / "train.jsonl", root / "eval.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--samples", type=int, default=256, help="calibration conversations (the stage's default)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per conversation (the stage's default)")
    parser.add_argument("--workdir", default=None, help="where the model and output go (default: a tmp dir)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        model_dir, train, evaluation = build(root, SHAPES[args.model_size], args.samples)
        cfg = quantize.QuantizeConfig(
            model_dir=str(model_dir),
            calibration_dir=str(train),
            eval_dir=str(evaluation),
            output_dir=str(root / "quantized"),
            failure_file=str(root / "failure"),
            num_calibration_samples=args.samples,
            max_seq_length=args.seq_len,
            max_nll_increase=float("inf"),  # a random model: measured, not gated
        )
        started = time.monotonic()
        report = quantize.main(cfg)
        total = time.monotonic() - started
    result = {
        "model_size": args.model_size,
        "shape": SHAPES[args.model_size],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "scheme": report["scheme"],
        "group_size": report["group_size"],
        "calibration_samples": report["calibration"]["samples"],
        "calibration_tokens": report["calibration"]["tokens"],
        "total_seconds_including_io": round(total, 2),
        "load_seconds": report["load_seconds"],
        "quantize_seconds": report["quantize_seconds"],
        "peak_memory_gb": report["peak_memory_gb"],
        "peak_memory_kind": report["peak_memory_kind"],
        "peak_host_rss_gb": report["peak_host_rss_gb"],
        "weights_gb_before": round(report["size"]["weights_bytes_before"] / 2**30, 3),
        "weights_gb_after": round(report["size"]["weights_bytes_after"] / 2**30, 3),
        "mean_token_nll_before": report["nll"]["before"]["mean_token_nll"],
        "mean_token_nll_after": report["nll"]["after"]["mean_token_nll"],
        "cpu_pin_memory_workaround": report["cpu_pin_memory_workaround"],
        "versions": report["versions"],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
