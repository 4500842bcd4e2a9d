"""AWQ 4-bit quantization of the merged model under the SageMaker Processing contract (the Quantize stage).

SageMaker Processing mounts the inputs under /opt/ml/processing/input/{model,calibration,eval} (the Merge stage's
output: bf16 safetensors + tokenizer + chat template; the training split and the eval split as chat JSONL) and
uploads /opt/ml/processing/output/quantized; a one-line cause of any failure goes to the failure file
(/opt/ml/output/message by default: SageMaker Processing reports it as the job's ExitMessage; the job exits
non-zero). The pipeline runs this stage only for the vLLM deploy target (Bedrock imports the merged bf16 model).

What it does: loads the model (`dtype`: the checkpoint's by default), measures the mean token NLL of up to
`max_eval_examples` eval conversations rendered through the chat template (the perplexity is exp of it), draws
`num_calibration_samples` conversations of the training split (seeded), renders them through the chat template and
runs llm-compressor's AWQ (`AWQModifier`, then a `QuantizationModifier` with 4-bit integer weights in groups of
`group_size` and 16-bit activations, W4A16; `lm_head` stays in full precision) on them. It writes the result in the
compressed-tensors format (pack-quantized) that vLLM loads natively, with the tokenizer, chat template and
generation_config.json; reloads it with plain transformers, checks its quantization_config, measures the NLL again
and fails when it rose by more than `max_nll_increase` (the weights are then removed; the report stays). Writes
`quantize_report.json` (sizes before/after, NLL and perplexity before/after, time, peak memory, calibration data).

Outside SageMaker give the paths explicitly (any field of `QuantizeConfig` is a `--name value` argument):

```bash
python containers/quantize/quantize.py \
    --model_dir /tmp/tiny-merged --calibration_dir runs/demo/data/train.jsonl --eval_dir runs/demo/data/eval.jsonl \
    --output_dir /tmp/tiny-quantized --failure_file /tmp/tiny-quantize-failure --dtype fp32 \
    --num_calibration_samples 16 --max_seq_length 128
```

(`containers/merge/merge.py`'s docstring shows how to make /tmp/tiny-merged.) The model's linear layers need input
sizes divisible by `group_size`. On a machine without an accelerator llm-compressor 0.14 needs one workaround
(`allow_cpu_calibration`); it is slow there but works for small models.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the directory holding containers/ (the repository, /opt/program in the image)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from containers.common import jobkit
from containers.common.jobkit import ConfigError, read_chat_jsonl

SM_DEFAULTS = {
    "model_dir": "/opt/ml/processing/input/model",
    "calibration_dir": "/opt/ml/processing/input/calibration",
    "eval_dir": "/opt/ml/processing/input/eval",
    "output_dir": "/opt/ml/processing/output/quantized",
    "failure_file": jobkit.PROCESSING_FAILURE_FILE,
}
# W4A16: 4-bit integer weights in groups along the input dimension, activations left in 16 bits. AWQ's own format is
# asymmetric (a zero point per group); both load in vLLM as compressed-tensors "pack-quantized".
SCHEMES = {"W4A16_ASYM": False, "W4A16": True}  # name -> symmetric
# Group sizes vLLM's 4-bit kernels (Marlin / Machete) take.
GROUP_SIZES = (32, 64, 128)
DTYPES = ("auto", "bf16", "fp16", "fp32")
REPORT = "quantize_report.json"


class QuantizationDegradedError(RuntimeError):
    """The quantized model's eval NLL rose by more than the configured bound."""


def _path_default(name: str) -> Any:
    return jobkit.path_field(SM_DEFAULTS[name])


@dataclass
class QuantizeConfig:
    model_dir: str = _path_default("model_dir")
    calibration_dir: str = _path_default("calibration_dir")
    eval_dir: str = jobkit.path_field(
        SM_DEFAULTS["eval_dir"],
        f"(default: {SM_DEFAULTS['eval_dir']}; absent or empty: calibration conversations not used for calibration)",
    )
    output_dir: str = _path_default("output_dir")
    failure_file: str = _path_default("failure_file")

    scheme: str = field(
        default="W4A16_ASYM",
        metadata={"help": "W4A16_ASYM (AWQ's usual: a zero point per group) | W4A16 (symmetric int4 weights)."},
    )
    group_size: int = field(
        default=128, metadata={"help": f"Weights per quantization group: one of {', '.join(map(str, GROUP_SIZES))}."}
    )
    num_calibration_samples: int = field(
        default=256, metadata={"help": "Training conversations used for AWQ calibration (>= 1; fewer if fewer)."}
    )
    max_seq_length: int = field(
        default=512, metadata={"help": "Tokens kept per calibration / eval conversation (>= 16)."}
    )
    max_eval_examples: int = field(default=256, metadata={"help": "Eval conversations for the NLL (0: all)."})
    max_nll_increase: float = field(
        default=0.1,
        metadata={
            "help": "Fail when the mean eval token NLL rises by more than this, in nats (>= 0; 0.1 = perplexity "
            "x1.105; inf: off)."
        },
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights loaded and kept unquantized: auto (the checkpoint's) | bf16 | ..."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the calibration sample."})

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.scheme in SCHEMES, "scheme", f"one of {', '.join(SCHEMES)}"),
            (self.group_size in GROUP_SIZES, "group_size", f"one of {', '.join(map(str, GROUP_SIZES))}"),
            (self.num_calibration_samples >= 1, "num_calibration_samples", ">= 1"),
            (self.max_seq_length >= 16, "max_seq_length", ">= 16"),
            (self.max_eval_examples >= 0, "max_eval_examples", ">= 0 (0: all)"),
            (self.max_nll_increase >= 0, "max_nll_increase", ">= 0 (inf: off)"),
            (self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}"),
        ]
        jobkit.check_config(self, checks)


def load_config(argv: list[str] | None = None) -> QuantizeConfig:
    """`--name value` arguments, one per QuantizeConfig field."""
    return jobkit.load_options(QuantizeConfig, argv, __doc__)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def check_model_dir(location: str) -> dict[str, Any]:
    """The input must be a full-precision safetensors model; returns its config.json."""
    path = Path(location)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model in {path} (config.json missing)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors weights in {path}: only safetensors are loaded")
    config: dict[str, Any] = json.loads((path / "config.json").read_text())
    existing = config.get("quantization_config")
    if existing:
        method = existing.get("quant_method", "?") if isinstance(existing, dict) else "?"
        raise ConfigError(f"the model in {path} is already quantized ({method}): quantize the merged bf16 model")
    return config


def render(tokenizer: Any, conversations: list[list[dict[str, Any]]], max_tokens: int) -> list[list[int]]:
    """Token ids of each conversation rendered with the chat template (answers included), at most max_tokens."""
    rendered = []
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        if len(ids) >= 2:
            rendered.append([int(i) for i in ids[:max_tokens]])
    return rendered


def split_calibration(
    conversations: list[list[dict[str, Any]]], count: int, seed: int
) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
    """A seeded sample of `count` conversations (all if fewer), and the rest."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:count])
    picked = [conversations[i] for i in order[:count]]
    return picked, [c for i, c in enumerate(conversations) if i not in chosen]


def calibration_dataset(samples: list[list[int]]) -> Any:
    """A datasets.Dataset of pre-tokenized rows (input_ids, attention_mask), as llm-compressor's oneshot takes it."""
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in samples])


# ---------------------------------------------------------------------------------------------------------------------
# Measurements


def mean_token_nll(model: Any, samples: list[list[int]], device: str) -> dict[str, float]:
    """Mean negative log-likelihood (nats) of every token after the first, over all samples, and its perplexity."""
    import torch

    total, tokens = 0.0, 0
    with torch.inference_mode():
        for ids in samples:
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            logits = model(input_ids=input_ids, use_cache=False).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, input_ids[0, 1:], reduction="sum"))
            tokens += len(ids) - 1
    nll = total / tokens if tokens else math.nan
    return {"mean_token_nll": nll, "perplexity": math.exp(nll) if nll < 700 else math.inf, "tokens": tokens}


def weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def check_quantization_config(out: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """The saved config.json must describe compressed-tensors W4A16 with cfg's group size; returns its summary."""
    config = json.loads((out / "config.json").read_text())
    quantization = config.get("quantization_config") or {}
    groups = quantization.get("config_groups") or {}
    weights = [group.get("weights") or {} for group in groups.values()]

    def values(key: str) -> list[Any]:
        return list(dict.fromkeys(w.get(key) for w in weights))

    summary = {
        "quant_method": quantization.get("quant_method"),
        "format": quantization.get("format"),
        "num_bits": values("num_bits"),
        "group_size": values("group_size"),
        "strategy": values("strategy"),
        "symmetric": values("symmetric"),
        "activations_quantized": any(group.get("input_activations") for group in groups.values()),
        "ignore": quantization.get("ignore"),
    }
    expected = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "num_bits": [4],
        "group_size": [cfg.group_size],
        "strategy": ["group"],
        "symmetric": [SCHEMES[cfg.scheme]],
        "activations_quantized": False,
    }
    wrong = {k: summary[k] for k, v in expected.items() if summary[k] != v}
    if wrong:
        raise RuntimeError(f"the saved quantization_config is not W4A16 group {cfg.group_size} as expected: {wrong}")
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# llm-compressor


def allow_cpu_calibration() -> bool:
    """Make llm-compressor 0.14's AWQ run on a machine without an accelerator; True when the workaround was applied.

    AWQ pins the cached layer inputs (`IntermediatesCache.pin_memory`) so that their copies to the accelerator can be
    non-blocking. Without an accelerator torch refuses to pin ("Cannot access accelerator device") and the run
    fails, although nothing is ever copied to a device there. Only then is the method replaced by a no-op: pinning is
    a transfer optimisation, so the result is the same. On a GPU nothing is changed.
    """
    import torch

    if torch.accelerator.is_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache

    def no_pinning(self: Any, batch_index: int, input_names: list[str] | None = None) -> None:
        return None

    IntermediatesCache.pin_memory = no_pinning  # type: ignore[method-assign]
    return True


def awq_recipe(cfg: QuantizeConfig) -> list[Any]:
    """AWQ smoothing, then 4-bit grouped integer weights (16-bit activations) on every Linear but lm_head."""
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    # compressed-tensors' QuantizationScheme / QuantizationArgs, as the dicts pydantic validates into them.
    weights = {
        "num_bits": 4,
        "type": "int",
        "strategy": "group",
        "group_size": cfg.group_size,
        "symmetric": SCHEMES[cfg.scheme],
        "dynamic": False,
    }
    scheme = {"targets": ["Linear"], "weights": weights}
    return [AWQModifier(), QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]


# ---------------------------------------------------------------------------------------------------------------------
# The quantization


def main(cfg: QuantizeConfig) -> dict[str, Any]:
    """Measure, quantize, save, reload, measure again; write cfg.output_dir (model + quantize_report.json)."""
    import importlib.metadata

    import llmcompressor
    import torch
    import transformers
    from llmcompressor.entrypoints.oneshot import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    model_dir, out = Path(cfg.model_dir), Path(cfg.output_dir)
    model_config = check_model_dir(cfg.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {model_dir} has no chat template")

    training = read_chat_jsonl(cfg.calibration_dir)
    if not training:
        raise FileNotFoundError(f"no calibration conversations in {cfg.calibration_dir} (the training split)")
    picked, unused = split_calibration(training, cfg.num_calibration_samples, cfg.seed)
    calibration = render(tokenizer, picked, cfg.max_seq_length)
    eval_conversations = read_chat_jsonl(cfg.eval_dir, cfg.max_eval_examples)
    nll_source = "eval split"
    if not eval_conversations:
        eval_conversations = (unused or training)[: cfg.max_eval_examples or None]
        nll_source = "training conversations not used for calibration" if unused else "calibration conversations"
    eval_samples = render(tokenizer, eval_conversations, cfg.max_seq_length)
    if not calibration or not eval_samples:
        raise ValueError("the chat template renders the conversations to fewer than 2 tokens")

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dtype: Any = "auto" if cfg.dtype == "auto" else jobkit.torch_dtype(cfg.dtype)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    model.eval()
    loaded_at = time.monotonic()
    before = mean_token_nll(model.to(device), eval_samples, device)
    model.to("cpu")  # llm-compressor moves the layers to the accelerator itself, one at a time
    if cuda:
        torch.cuda.empty_cache()

    cpu_workaround = allow_cpu_calibration()
    quantize_started = time.monotonic()
    oneshot(
        model=model,
        dataset=calibration_dataset(calibration),
        recipe=awq_recipe(cfg),
        num_calibration_samples=len(calibration),
        max_seq_length=cfg.max_seq_length,
        shuffle_calibration_samples=False,
    )
    quantize_seconds = time.monotonic() - quantize_started

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    if (model_dir / "generation_config.json").is_file():  # the Merge stage's eos ids (end-of-turn token included)
        shutil.copyfile(model_dir / "generation_config.json", out / "generation_config.json")
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    quantization = check_quantization_config(out, cfg)
    reloaded: Any = AutoModelForCausalLM.from_pretrained(
        out, device_map=device, trust_remote_code=False, local_files_only=True
    )
    reloaded.eval()
    after = mean_token_nll(reloaded, eval_samples, device)
    del reloaded
    gc.collect()

    increase = after["mean_token_nll"] - before["mean_token_nll"]
    passed = increase <= cfg.max_nll_increase  # NaN fails too
    size_before, size_after = weights_bytes(model_dir), weights_bytes(out)
    report = {
        "passed": passed,
        "scheme": cfg.scheme,
        "group_size": cfg.group_size,
        "quantization_config": quantization,
        "architecture": (model_config.get("architectures") or ["?"])[0],
        "size": {
            "weights_bytes_before": size_before,
            "weights_bytes_after": size_after,
            "ratio": round(size_after / size_before, 4) if size_before else None,
            "directory_bytes_before": jobkit.directory_bytes(model_dir),
            "directory_bytes_after": jobkit.directory_bytes(out),
        },
        "nll": {
            "source": nll_source,
            "conversations": len(eval_samples),
            "before": before,
            "after": after,
            "increase": increase,
            "perplexity_ratio": math.exp(increase) if increase < 700 else math.inf,
            "max_nll_increase": cfg.max_nll_increase,
        },
        "calibration": {
            "source": "training split rendered through the chat template",
            "samples": len(calibration),
            "available": len(training),
            "tokens": sum(len(ids) for ids in calibration),
            "max_seq_length": cfg.max_seq_length,
            "seed": cfg.seed,
        },
        "device": device,
        "cpu_pin_memory_workaround": cpu_workaround,
        "load_seconds": round(loaded_at - started, 3),
        "quantize_seconds": round(quantize_seconds, 3),
        "wall_time_s": round(time.monotonic() - started, 3),
        "peak_memory_gb": round(jobkit.peak_memory_gb(cuda), 4),
        "peak_memory_kind": "cuda_max_allocated" if cuda else "process_max_rss",
        "peak_host_rss_gb": round(jobkit.peak_memory_gb(False), 4),
        "config": dataclasses.asdict(cfg),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": importlib.metadata.version("compressed-tensors"),
        },
    }
    summary = (
        f"mean eval token NLL {before['mean_token_nll']:.4f} -> {after['mean_token_nll']:.4f} "
        f"({increase:+.4f} nats, perplexity x{report['nll']['perplexity_ratio']:.4f}); weights "
        f"{size_before / 2**20:.1f} MiB -> {size_after / 2**20:.1f} MiB"
    )
    if not passed:
        for weights in out.glob("*.safetensors*"):  # nothing deployable is left behind
            weights.unlink()
        report["weights_removed"] = True
    (out / REPORT).write_text(json.dumps(report, indent=2, default=str))
    if not passed:
        raise QuantizationDegradedError(
            f"quantization degraded the model too much: {summary}; the bound is max_nll_increase="
            f"{cfg.max_nll_increase} (raise it, or add calibration samples)"
        )
    print(f"quantized to {cfg.scheme} group {cfg.group_size} in {quantize_seconds:.1f}s: {summary}", flush=True)
    return report


def failure_reason(exc: BaseException, cfg: QuantizeConfig | None = None) -> str:
    """One line for SageMaker's ExitMessage: the cause and what to do."""
    if jobkit.is_out_of_memory(exc):
        reason = (
            "CUDA out of memory while quantizing: lower num_calibration_samples or max_seq_length, or use a larger GPU"
        )
    elif isinstance(exc, ConfigError):
        reason = f"invalid quantization request: {exc}"
    elif isinstance(exc, QuantizationDegradedError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return jobkit.one_line(reason)


def run(argv: list[str] | None = None) -> int:
    """Load the config, quantize; on failure write the reason to the failure file and return 1 (2: bad config)."""
    return jobkit.run_job(
        argv,
        load_config=load_config,
        main=main,
        failure_reason=failure_reason,
        default_failure_file=SM_DEFAULTS["failure_file"],
        what="quantization",
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # llm-compressor's per-layer progress bars flood the job's log
    sys.exit(run())
