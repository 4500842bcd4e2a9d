"""Merge-stage time and peak memory on a 7B-shaped random model (Mistral-7B shapes, bf16): streaming vs in memory.

    python bench/merge.py --model-size 7b --method streaming --device cpu  --workdir /tmp/merge-bench \
        --out bench/results/merge_stream_cpu.json        # streaming, then the in_memory baseline, on the CPU
    python bench/merge.py --model-size 7b --method streaming --device cuda --workdir /tmp/merge-bench \
        --out bench/results/merge_stream_cuda.json       # the same on the GPU
    python bench/merge.py --model-size tiny --method streaming --device cpu   # smoke run (seconds)

Builds a base (random weights, the tiny tokenizer + ChatML template of local/tiny_model.py, a config of the given
shape; no downloads) saved in safetensors shards of `--shard-size` (5GB: three shards for 7B, as a hub checkpoint
is), and a LoRA adapter (r=16 on every linear projection, lora_B random so the merge is not a no-op). Then runs the
Merge entrypoint (containers/merge/merge.py) once per method, each in its own process so that each peak RSS is its
own (VmHWM, which merge.py reads per phase): `--method streaming` runs streaming, then the in_memory baseline
(`--baseline none`: not); `--method in_memory` runs only that. `--device cpu` hides the GPU from the merge
(CUDA_VISIBLE_DEVICES=""), as on a CPU instance; the base is still built on the GPU if there is one.

Prints per method: wall time, merge time, peak host RSS of the whole job and of its merge phase, peak GPU memory
allocated (cuda), per-shard times (streaming), max abs logit diff vs base+adapter and the tolerance; then the ratios
streaming / in_memory and, with both outputs on disk, how far apart their tensors are (bf16: expected equal).

With `--workdir` the base and adapter are built once and kept, and each method's result is kept too: a later run with
the same settings reuses it (`--rerun`: run again). That splits a long CPU comparison over several commands:

    python bench/merge.py --model-size 7b --method streaming --baseline none --device cpu --workdir /tmp/mb
    python bench/merge.py --model-size 7b --method in_memory --device cpu --workdir /tmp/mb
    python bench/merge.py --model-size 7b --method streaming --device cpu --workdir /tmp/mb --out results.json

Needs torch, transformers, peft, accelerate and safetensors (tokenizers comes with transformers); no trl, no datasets.
Disk: the base (14.5 GB for 7B) plus one output per method (14.5 GB each, bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from containers.merge import merge, streaming

from random_model import write_random_model  # bench/ is the script's own directory
from shapes import SHAPES as TRAIN_SHAPES

ENTRYPOINT = Path(merge.__file__)
SHAPES: dict[str, dict[str, Any]] = {
    # the same Mistral-7B shape the training benchmark uses
    "7b": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **TRAIN_SHAPES["7b"]},
    "1b": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **TRAIN_SHAPES["1b"]},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "vocab_size": 1024},
}
DEFAULT_SHARD_SIZE = {"7b": "5GB", "1b": "1GB", "tiny": "200KB"}
PROMPTS = [
    {
        "messages": [
            {"role": "user", "content": f"please summarise order {i} and the delivery report"},
            {"role": "assistant", "content": f"order {i} shipped; the delivery report says it arrived on time"},
        ]
    }
    for i in range(8)
]


def build(root: Path, shape: dict[str, Any], rank: int, shard_size: str) -> tuple[Path, Path, Path]:
    """The base (sharded safetensors, bf16), the adapter and the eval file under root; kept if already there."""
    base_dir, adapter_dir, eval_file = root / "base", root / "adapter", root / "eval.jsonl"
    if (root / "built.json").is_file():
        print(f"reusing the base and adapter in {root}", flush=True)
        return base_dir, adapter_dir, eval_file
    import torch
    from peft import LoraConfig, get_peft_model

    shutil.rmtree(base_dir, ignore_errors=True)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    texts = [m["content"] for row in PROMPTS for m in row["messages"]]
    started = time.monotonic()
    model = write_random_model(base_dir, texts, shape, shard_size)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    peft_model.save_pretrained(str(adapter_dir))
    del model, peft_model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    shards = sorted(p.name for p in base_dir.glob("*.safetensors"))
    (root / "built.json").write_text(json.dumps({"shape": shape, "rank": rank, "shard_size": shard_size}))
    print(f"built base ({len(shards)} shards) + adapter in {time.monotonic() - started:.1f}s", flush=True)
    return base_dir, adapter_dir, eval_file


def run_method(method: str, root: Path, inputs: tuple[Path, Path, Path], args: argparse.Namespace) -> dict[str, Any]:
    """The Merge entrypoint in a process of its own; the numbers of its merge_report.json (or why it failed)."""
    base, adapter, eval_file = inputs
    out, failure = root / f"merged-{method}", root / f"failure-{method}"
    shutil.rmtree(out, ignore_errors=True)
    failure.unlink(missing_ok=True)
    command = [
        sys.executable, str(ENTRYPOINT), "--model_dir", str(base), "--adapter_dir", str(adapter),
        "--eval_dir", str(eval_file), "--output_dir", str(out), "--failure_file", str(failure),
        "--method", method, "--device", args.device, "--dtype", args.dtype,
        "--merge_precision", args.merge_precision, "--verify_precision", args.verify_precision,
        "--verify_prompts", str(args.verify_prompts),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # as on a CPU instance
    print(f"\n=== {method} on {args.device}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    code = subprocess.run(command, env=env, check=False).returncode
    result: dict[str, Any] = {
        "method": method,
        "exit_code": code,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    if code != 0:
        reason = failure.read_text().strip() if failure.is_file() else ""
        result["failure"] = reason or (f"killed by signal {-code} (out of memory?)" if code < 0 else "no reason")
        return result
    return {**result, **summarize(json.loads((out / "merge_report.json").read_text()))}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    check = report["verification"]
    merged = check.get("merged_vs_base_plus_adapter") or {}
    phases = report.get("phases") or {}
    merge_phase = phases.get("merge") or phases.get("in_memory") or {}
    return {
        "method_reason": report.get("method_reason"),
        "load_seconds": report["load_seconds"],
        "merge_seconds": report["merge_seconds"],
        "job_wall_time_s": report["wall_time_s"],
        "peak_host_rss_gb": report["peak_host_rss_gb"],
        "merge_phase_peak_host_rss_gb": merge_phase.get("peak_host_rss_gb"),
        "peak_gpu_gb": max((p.get("peak_gpu_gb", 0.0) for p in phases.values()), default=None)
        if report["device"] == "cuda"
        else None,
        "phases": phases,
        "peak_memory_reset_per_phase": report.get("peak_memory_reset_per_phase"),
        "per_shard": (report.get("streaming") or {}).get("files"),
        "output_gb": round(report["output_bytes"] / 2**30, 3),
        "shards": len(report["shards"]),
        "max_abs_logit_diff": merged.get("max_abs"),
        # the shipped (dtype-rounded) weights vs base+adapter: streaming checks exactly that; in memory it is the cast
        "shipped_weights_max_abs_logit_diff": (check.get("cast_to_dtype_vs_base_plus_adapter") or merged).get(
            "max_abs"
        ),
        "argmax_agreement": merged.get("argmax_agreement"),
        "tolerance": check.get("tolerance_max_abs"),
        "weights_vs_peft_merge": check.get("weights_vs_peft_merge"),
        "cast_to_dtype_vs_base_plus_adapter": check.get("cast_to_dtype_vs_base_plus_adapter"),
        "adapter_effect_max_abs": (check.get("adapter_effect_vs_base") or {}).get("max_abs"),
        "bedrock_compatible": report["bedrock_custom_model_import"]["compatible"],
        "versions": report["versions"],
    }


def compare_outputs(a: Path, b: Path) -> dict[str, Any]:
    """Tensor by tensor (one in memory at a time): how many elements differ, and by how much at most."""
    from safetensors import safe_open

    def files(directory: Path) -> dict[str, Path]:
        names: dict[str, Path] = {}
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                names.update({key: path for key in handle.keys()})
        return names

    left, right = files(a), files(b)
    if left.keys() != right.keys():
        return {"same_tensor_names": False, "only_in_one": sorted(left.keys() ^ right.keys())[:5]}
    unequal, max_abs, worst = 0, 0.0, ""
    for key in sorted(left):
        x, y = streaming.read_tensor(left[key], key), streaming.read_tensor(right[key], key)
        if x.dtype != y.dtype or x.shape != y.shape:
            return {
                "same_tensor_names": True,
                "mismatch": f"{key}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}",
            }
        differ = int((x != y).sum())
        if differ:
            unequal += differ
            diff = float((x.float() - y.float()).abs().max())
            max_abs, worst = (diff, key) if diff > max_abs else (max_abs, worst)
    return {"same_tensor_names": True, "tensors": len(left), "unequal_elements": unequal, "max_abs_diff": max_abs,
            "worst_tensor": worst or None}  # fmt: skip


def ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 4) if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "model_size",
        "rank",
        "dtype",
        "device",
        "merge_precision",
        "verify_precision",
        "verify_prompts",
        "shard_size",
    )
    return {key: getattr(args, key) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--method", choices=("streaming", "in_memory"), default="streaming")
    parser.add_argument(
        "--baseline", choices=("in_memory", "none"), default="in_memory", help="with --method streaming: run it too"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the merge runs")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--merge-precision", default="fp32", help="in_memory: fp32 | same")
    parser.add_argument("--verify-precision", default="auto", help="streaming: auto (= dtype) | dtype | fp32")
    parser.add_argument("--verify-prompts", type=int, default=8, help="0: streaming without verification")
    parser.add_argument("--shard-size", default=None, help="the base's max_shard_size (default: by model size)")
    parser.add_argument("--workdir", default=None, help="keep base, adapter, outputs and results here (reused)")
    parser.add_argument("--rerun", action="store_true", help="run each method even if --workdir has its result")
    parser.add_argument("--no-compare", action="store_true", help="do not compare the two outputs tensor by tensor")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args()
    args.shard_size = args.shard_size or DEFAULT_SHARD_SIZE[args.model_size]
    methods = [args.method] + (["in_memory"] if args.method == "streaming" and args.baseline != "none" else [])

    keep = args.workdir is not None
    root = Path(args.workdir or tempfile.mkdtemp(prefix="merge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = run_all(root, methods, args)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    print_summary(results)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def run_all(root: Path, methods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    inputs = build(root, SHAPES[args.model_size], args.rank, args.shard_size)
    settings = settings_of(args)
    runs: dict[str, Any] = {}
    for method in methods:
        saved = root / f"result-{method}.json"
        kept = json.loads(saved.read_text()) if saved.is_file() and not args.rerun else None
        if kept and kept.get("settings") == settings and (root / f"merged-{method}").is_dir():
            print(f"reusing the {method} result in {saved}", flush=True)
            runs[method] = kept["result"]
            continue
        runs[method] = run_method(method, root, inputs, args)
        saved.write_text(json.dumps({"settings": settings, "result": runs[method]}, indent=2))
    results: dict[str, Any] = {
        **settings,
        "shape": SHAPES[args.model_size],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    stream, baseline = runs.get("streaming"), runs.get("in_memory")
    if stream and baseline:
        keys = ("peak_host_rss_gb", "merge_phase_peak_host_rss_gb", "peak_gpu_gb", "job_wall_time_s", "wall_seconds")
        results["streaming_over_in_memory"] = {key: ratio(stream.get(key), baseline.get(key)) for key in keys}
        results["streaming_over_in_memory"]["merge_phase_vs_in_memory_peak_host_rss"] = ratio(
            stream.get("merge_phase_peak_host_rss_gb"), baseline.get("peak_host_rss_gb")
        )
        both_ok = stream["exit_code"] == 0 and baseline["exit_code"] == 0
        if both_ok and not args.no_compare:
            print("comparing the two outputs tensor by tensor ...", flush=True)
            results["outputs_compared"] = compare_outputs(root / "merged-streaming", root / "merged-in_memory")
    return results


def print_summary(results: dict[str, Any]) -> None:
    columns = {
        "exit": "exit_code",
        "wall s": "wall_seconds",
        "merge s": "merge_seconds",
        "RSS GiB": "peak_host_rss_gb",
        "merge RSS": "merge_phase_peak_host_rss_gb",
        "GPU GiB": "peak_gpu_gb",
        "logit diff": "max_abs_logit_diff",
        "tolerance": "tolerance",
        "shipped diff": "shipped_weights_max_abs_logit_diff",
    }

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str("-" if value is None else value)

    print(f"\n{'method':<10}" + "".join(f"{name:>13}" for name in columns))
    for method, run in results["runs"].items():
        print(f"{method:<10}" + "".join(f"{cell(run.get(key)):>13}" for key in columns.values()))
        if run.get("failure"):
            print(f"    failed: {run['failure']}")
    if "streaming_over_in_memory" in results:
        print("streaming / in_memory:", json.dumps(results["streaming_over_in_memory"]))
    if "outputs_compared" in results:
        print("outputs:", json.dumps(results["outputs_compared"]))


if __name__ == "__main__":
    main()
