"""Merge-stage time and peak memory on a 7B-shaped random model (Mistral-7B shapes, bf16), through merge.main.

    python bench/merge.py --model-size 7b --out bench/results/merge_h100.json    # a GPU: the issue's target < 5 min
    python bench/merge.py --model-size tiny                                      # CPU smoke run

Builds the base (random weights, the tiny tokenizer + ChatML template of local/tiny_model.py, config of the given
shape; no downloads) and a LoRA adapter (r=16 on every linear projection, lora_B random so the merge is not a
no-op) in a temporary directory, then runs the Merge entrypoint on it with the defaults (bf16, 8 verified prompts,
5GB shards). Prints and writes the merge report's numbers: load / merge / total time, peak GPU memory, peak host
RSS, output size, max abs logit diff.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from containers.merge import merge  # noqa: E402
from local.tiny_model import write_base_model  # noqa: E402

from train_gpu import SHAPES as TRAIN_SHAPES  # noqa: E402  (bench/ is the script's own directory)

SHAPES: dict[str, dict[str, Any]] = {
    # the same Mistral-7B shape the training benchmark uses
    "7b": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **TRAIN_SHAPES["7b"]},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "vocab_size": 1024},
}
PROMPTS = [
    {
        "messages": [
            {"role": "user", "content": f"please summarise order {i} and the delivery report"},
            {"role": "assistant", "content": f"order {i} shipped; the delivery report says it arrived on time"},
        ]
    }
    for i in range(8)
]


def build(root: Path, shape: dict[str, Any], rank: int) -> tuple[Path, Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    texts = [m["content"] for row in PROMPTS for m in row["messages"]]
    base_dir = write_base_model(root / "base", texts)
    config = json.loads((base_dir / "config.json").read_text())
    config.update(shape)
    (base_dir / "config.json").write_text(json.dumps(config, indent=2))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.monotonic()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir), dtype=torch.bfloat16)
    model.save_pretrained(base_dir, max_shard_size="5GB")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    peft_model.save_pretrained(str(root / "adapter"))
    del model, peft_model
    if device == "cuda":
        torch.cuda.empty_cache()
    print(f"built base + adapter in {time.monotonic() - started:.1f}s", flush=True)
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    return base_dir, root / "adapter", root / "eval.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--workdir", default=None, help="where the base, adapter and output go (default: a tmp dir)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        base, adapter, eval_file = build(root, SHAPES[args.model_size], args.rank)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        cfg = merge.MergeConfig(
            model_dir=str(base),
            adapter_dir=str(adapter),
            eval_dir=str(eval_file),
            output_dir=str(root / "merged"),
            failure_file=str(root / "failure"),
            dtype=args.dtype,
        )
        started = time.monotonic()
        report = merge.main(cfg)
        total = time.monotonic() - started
    check = report["verification"]
    result = {
        "model_size": args.model_size,
        "shape": SHAPES[args.model_size],
        "lora_rank": args.rank,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "total_seconds_including_io": round(total, 2),
        "load_seconds": report["load_seconds"],
        "merge_seconds": report["merge_seconds"],
        "peak_memory_gb": report["peak_memory_gb"],
        "peak_memory_kind": report["peak_memory_kind"],
        "peak_host_rss_gb": report["peak_host_rss_gb"],
        "output_gb": round(report["output_bytes"] / 2**30, 3),
        "shards": len(report["shards"]),
        "max_abs_logit_diff": check["merged_vs_base_plus_adapter"]["max_abs"],
        "argmax_agreement": check["merged_vs_base_plus_adapter"]["argmax_agreement"],
        "adapter_effect_max_abs": check["adapter_effect_vs_base"]["max_abs"],
        "tolerance": check["tolerance_max_abs"],
        "bedrock_compatible": report["bedrock_custom_model_import"]["compatible"],
        "versions": report["versions"],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
