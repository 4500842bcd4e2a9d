"""Evaluate a fine-tuned model against its base (and production) under the SageMaker Processing contract.

SageMaker Processing mounts the inputs under /opt/ml/processing/input/{candidate,base,production,eval} (the merged
candidate model, the base model it was trained from, optionally the model now in production, and the eval split as
chat JSONL) and uploads /opt/ml/processing/output/evaluation; a one-line cause of any failure goes to the failure
file (/opt/ml/output/message by default: SageMaker Processing reports it as the job's ExitMessage; the job exits
non-zero). No production input (the directory is absent or `--production_dir ""`) means there is no model in
production yet: that threshold is then skipped.

What it does: for each eval conversation the prompt is every message but the final assistant one, rendered with the
model's chat template (`add_generation_prompt`), and the reference is that final assistant message. Each model
answers greedily, in batches with left padding, at most `max_new_tokens` tokens, stopping on its end-of-turn
token(s) (the tokenizer's eos plus generation_config.json's eos ids plus a known end-of-turn marker of the chat
template). The answers are scored (exact match, token F1, ROUGE-L F, JSON validity and schema match when every
reference is JSON, mean generated length, stop rate: the share of answers that ended on an end-of-turn token rather
than at `max_new_tokens`), and `passed` is decided from the thresholds given (`min_score` on `primary_metric`,
`max_regression_vs_production`, `min_improvement_over_base`, `min_stop_rate`), each failure spelled out in
`reasons`. The gate itself is a decision of the state machine: this job only computes the numbers and the flag.

Writes `evaluation.json` (per-model metrics, deltas vs base and vs production, passed, reasons, the worst
`worst_examples` examples with prompt/reference/answers) and `evaluation.png` (grouped bars per metric in [0, 1]:
candidate, base, production; no text in the image, the legend is in evaluation.json's `chart`).

Outside SageMaker give the paths explicitly (any field of `EvaluateConfig` is a `--name value` argument):

```bash
python containers/evaluate/evaluate.py \
    --candidate_dir /tmp/tiny-merged --base_dir /tmp/tiny-base --production_dir "" \
    --eval_dir runs/demo/data/eval.jsonl --output_dir /tmp/tiny-evaluation --failure_file /tmp/tiny-eval-failure \
    --max_new_tokens 32 --batch_size 4 --min_stop_rate 0
```

(`containers/merge/merge.py`'s docstring shows how to make /tmp/tiny-merged and /tmp/tiny-base.)
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import struct
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the directory holding containers/ (the repository, /opt/program in the image)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from containers.common import jobkit  # noqa: E402
from containers.common.jobkit import END_OF_TURN_TOKENS, ConfigError  # noqa: E402

SM_DEFAULTS = {
    "candidate_dir": "/opt/ml/processing/input/candidate",
    "base_dir": "/opt/ml/processing/input/base",
    "production_dir": "/opt/ml/processing/input/production",
    "eval_dir": "/opt/ml/processing/input/eval",
    "output_dir": "/opt/ml/processing/output/evaluation",
    "failure_file": jobkit.PROCESSING_FAILURE_FILE,
}
PATH_FIELDS = tuple(SM_DEFAULTS)
MODELS = ("candidate", "base", "production")
# Metrics in [0, 1] where higher is better: these can be the primary metric and are drawn in the chart.
SCORE_METRICS = ("exact_match", "token_f1", "rouge_l", "json_valid", "json_schema_match", "stop_rate")
JSON_METRICS = ("json_valid", "json_schema_match")
DTYPES = ("auto", "bf16", "fp16", "fp32")
# Chart colours (RGB): candidate, base, production.
CHART_COLORS = {"candidate": (31, 119, 180), "base": (160, 160, 160), "production": (255, 127, 14)}


def _path_default(name: str) -> Any:
    return jobkit.path_field(SM_DEFAULTS[name])


@dataclass
class EvaluateConfig:
    candidate_dir: str = _path_default("candidate_dir")
    base_dir: str = _path_default("base_dir")
    production_dir: str = jobkit.path_field(
        SM_DEFAULTS["production_dir"],
        f"(default: {SM_DEFAULTS['production_dir']}; absent or empty: no production model)",
    )
    eval_dir: str = _path_default("eval_dir")
    output_dir: str = _path_default("output_dir")
    failure_file: str = _path_default("failure_file")

    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per answer (>= 1)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts generated together, left-padded (>= 1)."})
    max_examples: int = field(default=0, metadata={"help": "Eval conversations used (0: all)."})
    max_prompt_tokens: int = field(
        default=4096, metadata={"help": "Longer prompts keep their last max_prompt_tokens tokens (>= 8)."}
    )
    primary_metric: str = field(
        default="exact_match", metadata={"help": f"Metric the thresholds apply to: one of {', '.join(SCORE_METRICS)}."}
    )
    min_score: float = field(default=0.0, metadata={"help": "Candidate's primary metric must be >= this (0: off)."})
    max_regression_vs_production: float = field(
        default=0.0,
        metadata={"help": "Candidate may be at most this much below production on the primary metric (inf: off)."},
    )
    min_improvement_over_base: float = field(
        default=0.0,
        metadata={
            "help": "Candidate minus base on the primary metric must be >= this (may be < 0); off: "
            "--min_improvement_over_base=-inf (with =: argparse takes a bare -inf for an option)."
        },
    )
    min_stop_rate: float = field(
        default=0.9,
        metadata={"help": "Candidate's share of answers that stopped on their own must be >= this (0: off)."},
    )
    worst_examples: int = field(default=20, metadata={"help": "Per-example results kept for the worst cases."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on cuda, fp32 on cpu) | bf16 | fp16 | fp32."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu) | cpu | cuda."})

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.max_new_tokens >= 1, "max_new_tokens", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.max_examples >= 0, "max_examples", ">= 0 (0: all)"),
            (self.max_prompt_tokens >= 8, "max_prompt_tokens", ">= 8"),
            (self.primary_metric in SCORE_METRICS, "primary_metric", f"one of {', '.join(SCORE_METRICS)}"),
            (0.0 <= self.min_score <= 1.0, "min_score", "in [0, 1]"),
            (self.max_regression_vs_production >= 0, "max_regression_vs_production", ">= 0 (inf: off)"),
            (not math.isnan(self.min_improvement_over_base), "min_improvement_over_base", "a number (-inf: off)"),
            (0.0 <= self.min_stop_rate <= 1.0, "min_stop_rate", "in [0, 1]"),
            (self.worst_examples >= 0, "worst_examples", ">= 0"),
            (self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}"),
            (self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda"),
        ]
        jobkit.check_config(self, checks)


def load_config(argv: list[str] | None = None) -> EvaluateConfig:
    """`--name value` arguments, one per EvaluateConfig field."""
    return jobkit.load_options(EvaluateConfig, argv, __doc__)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics (pure Python)


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer equals the reference after stripping surrounding whitespace."""
    return 1.0 if answer.strip() == reference.strip() else 0.0


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style F1 over whitespace tokens (multiset overlap); two empty texts score 1, one empty text 0."""
    pred, ref = answer.split(), reference.split()
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens: 2PR/(P+R) with P = LCS/len(answer), R = LCS/len(reference)."""
    pred, ref = answer.split(), reference.split()
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def parse_json(text: str) -> tuple[bool, Any]:
    """(True, value) when the stripped text is a JSON document, else (False, None)."""
    try:
        return True, json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return False, None


def json_type(value: Any) -> str:
    """JSON type name of a parsed value; int and float are both 'number' (bool is not)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_json_reference(reference: str) -> bool:
    """A reference counts as JSON when it parses to an object or an array (a bare number or word does not)."""
    ok, value = parse_json(reference)
    return ok and isinstance(value, dict | list)


def json_valid(answer: str) -> float:
    return 1.0 if parse_json(answer)[0] else 0.0


def json_schema_match(answer: str, reference: str) -> float:
    """1.0 when the answer parses as JSON of the reference's shape: same top-level keys with the same value types for
    objects, the same top-level type otherwise."""
    ok, value = parse_json(answer)
    ref_ok, ref = parse_json(reference)
    if not ok or not ref_ok or json_type(value) != json_type(ref):
        return 0.0
    if isinstance(ref, dict):
        if set(value) != set(ref):
            return 0.0
        return 1.0 if all(json_type(value[k]) == json_type(ref[k]) for k in ref) else 0.0
    return 1.0


def score_example(answer: str, reference: str, *, json_references: bool) -> dict[str, float]:
    scores = {
        "exact_match": exact_match(answer, reference),
        "token_f1": token_f1(answer, reference),
        "rouge_l": rouge_l(answer, reference),
    }
    if json_references:
        scores["json_valid"] = json_valid(answer)
        scores["json_schema_match"] = json_schema_match(answer, reference)
    return scores


def aggregate(
    answers: list[str], references: list[str], lengths: list[int], stopped: list[bool], *, json_references: bool
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean of each metric over the examples, mean generated tokens and stop rate; plus the per-example scores."""
    if not (len(answers) == len(references) == len(lengths) == len(stopped)) or not answers:
        raise ValueError("answers, references, lengths and stop flags must be non-empty lists of the same length")
    per_example = [
        score_example(a, r, json_references=json_references) for a, r in zip(answers, references, strict=True)
    ]
    metrics = {name: sum(s[name] for s in per_example) / len(per_example) for name in per_example[0]}
    metrics["mean_generated_tokens"] = sum(lengths) / len(lengths)
    metrics["stop_rate"] = sum(1 for s in stopped if s) / len(stopped)
    return metrics, per_example


def deltas(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """a - b for every metric the two share."""
    return {name: a[name] - b[name] for name in a if name in b}


def gate(
    metrics: dict[str, dict[str, float]],
    *,
    primary_metric: str,
    min_score: float,
    max_regression_vs_production: float,
    min_improvement_over_base: float,
    min_stop_rate: float,
) -> tuple[bool, list[str]]:
    """Whether the candidate passes; one sentence per failed threshold. `metrics` maps candidate/base/production
    (production optional) to their aggregate metrics."""
    candidate = metrics["candidate"]
    if primary_metric not in candidate:
        raise ConfigError(
            f"primary_metric {primary_metric} was not computed (JSON metrics need JSON references); "
            f"computed: {', '.join(sorted(candidate))}"
        )
    reasons: list[str] = []
    score = candidate[primary_metric]
    if score < min_score:
        reasons.append(f"candidate {primary_metric} {score:.4f} is below the minimum score {min_score:.4f}")
    base = metrics["base"][primary_metric]
    if score - base < min_improvement_over_base:
        reasons.append(
            f"candidate {primary_metric} {score:.4f} improves on the base's {base:.4f} by {score - base:+.4f}, "
            f"less than the required {min_improvement_over_base:+.4f}"
        )
    production = metrics.get("production")
    if production is not None:
        current = production[primary_metric]
        if current - score > max_regression_vs_production:
            reasons.append(
                f"candidate {primary_metric} {score:.4f} regresses from production's {current:.4f} by "
                f"{current - score:.4f}, more than the allowed {max_regression_vs_production:.4f}"
            )
    stop_rate = candidate.get("stop_rate", 1.0)
    if stop_rate < min_stop_rate:
        reasons.append(
            f"candidate stopped on its own in only {stop_rate:.1%} of answers (minimum {min_stop_rate:.1%}): the "
            "rest ran to max_new_tokens, so it does not emit its end-of-turn token (EOS problem)"
        )
    return not reasons, reasons


def worst_examples(
    prompts: list[Any], references: list[str], results: dict[str, dict[str, Any]], primary_metric: str, count: int
) -> list[dict[str, Any]]:
    """The `count` examples where the candidate scores lowest on the primary metric (then lowest token F1)."""
    candidate = results["candidate"]["per_example"]
    order = sorted(
        range(len(references)),
        key=lambda i: (candidate[i].get(primary_metric, 0.0), candidate[i]["token_f1"], i),
    )
    out = []
    for i in order[:count]:
        entry: dict[str, Any] = {"index": i, "prompt": prompts[i], "reference": references[i]}
        for name, result in results.items():
            entry[name] = {
                "answer": result["answers"][i],
                "stopped": result["stopped"][i],
                "generated_tokens": result["lengths"][i],
                "scores": result["per_example"][i],
            }
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Chart (pure Python PNG: no plotting library in the image)


def write_png(path: Path, width: int, height: int, pixels: list[bytearray]) -> None:
    """An 8-bit RGB PNG from rows of width*3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(row) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    )


def bar_chart(path: Path, metrics: dict[str, dict[str, float]], names: list[str]) -> dict[str, Any]:
    """Grouped bars (one group per metric in `names`, one bar per model, height = value in [0, 1]) on a white
    background with grid lines at 0.25 steps; returns the legend that evaluation.json records."""
    models = [m for m in MODELS if m in metrics]
    bar, gap, margin, plot_h = 24, 24, 20, 200
    width = margin * 2 + len(names) * (len(models) * bar + gap)
    height = plot_h + margin * 2
    pixels = [bytearray(b"\xff" * (width * 3)) for _ in range(height)]

    def fill(x0: int, x1: int, y0: int, y1: int, rgb: tuple[int, int, int]) -> None:
        for y in range(max(0, y0), min(height, y1)):
            row = pixels[y]
            for x in range(max(0, x0), min(width, x1)):
                row[3 * x : 3 * x + 3] = bytes(rgb)

    baseline = margin + plot_h
    for quarter in range(5):
        y = baseline - quarter * plot_h // 4
        fill(margin, width - margin, y, y + 1, (220, 220, 220))
    for g, name in enumerate(names):
        x = margin + gap // 2 + g * (len(models) * bar + gap)
        for k, model in enumerate(models):
            value = min(max(metrics[model].get(name, 0.0), 0.0), 1.0)
            top = baseline - round(value * plot_h)
            fill(x + k * bar + 2, x + (k + 1) * bar - 2, top, baseline + 1, CHART_COLORS[model])
    fill(margin, width - margin, baseline, baseline + 1, (0, 0, 0))
    write_png(path, width, height, pixels)
    return {
        "file": path.name,
        "groups_left_to_right": names,
        "bars_in_each_group": models,
        "colors_rgb": {m: CHART_COLORS[m] for m in models},
        "y_axis": "0 to 1, grid lines every 0.25",
    }


# ---------------------------------------------------------------------------------------------------------------------
# Inputs and generation


def read_eval(location: str, limit: int) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Prompt messages and reference answers of a .jsonl file or of a directory's .jsonl files (sorted)."""
    files = jobkit.jsonl_files(location)
    if not files:
        raise FileNotFoundError(f"no eval split at {location} (a .jsonl file or a directory of them)")
    prompts: list[list[dict[str, Any]]] = []
    references: list[str] = []
    for file in files:
        for number, record in jobkit.iter_jsonl(file):
            if limit and len(prompts) >= limit:
                return prompts, references
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or len(messages) < 2:
                raise ValueError(f'{file.name} line {number}: expected {{"messages": [...]}} with a prompt and answer')
            last = messages[-1]
            if (
                not isinstance(last, dict)
                or last.get("role") != "assistant"
                or not isinstance(last.get("content"), str)
            ):
                raise ValueError(f"{file.name} line {number}: the last message must be the assistant's text answer")
            prompts.append(messages[:-1])
            references.append(last["content"])
    if not prompts:
        raise ValueError(f"the eval split at {location} holds no conversations")
    return prompts, references


def check_model_dir(name: str, location: str) -> Path:
    path = Path(location)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no {name} model in {path} (config.json missing)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors weights in {path} ({name} model): only safetensors are loaded")
    return path


def stop_token_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """The tokenizer's eos, generation_config.json's eos ids, and known end-of-turn markers the template emits."""
    ids: list[int] = []

    def add(value: Any) -> None:
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))

    add(tokenizer.eos_token_id)
    generation_path = model_dir / "generation_config.json"
    if generation_path.is_file():
        add(json.loads(generation_path.read_text()).get("eos_token_id"))
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            add(vocab[token])
    if not ids:
        raise ValueError(f"no end-of-turn token for {model_dir}: no eos in the tokenizer or generation_config.json")
    return ids


def generate(
    model_dir: Path, prompts: list[list[dict[str, Any]]], cfg: EvaluateConfig, device: str, dtype: Any
) -> dict[str, Any]:
    """Greedy answers of one model: text, generated token count (end-of-turn token excluded), stopped flag."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {model_dir} has no chat template")
    stops = stop_token_ids(tokenizer, model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, device_map=device, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    model.eval()
    generation = GenerationConfig(
        do_sample=False, max_new_tokens=cfg.max_new_tokens, eos_token_id=stops, pad_token_id=pad_id
    )
    encoded = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        encoded.append(list(ids["input_ids"])[-cfg.max_prompt_tokens :])
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    answers, lengths, stopped = [""] * len(encoded), [0] * len(encoded), [False] * len(encoded)
    started = time.monotonic()
    with torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding
                input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=generation
            )
            for row, i in enumerate(batch):
                new = output[row, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in stops), None)
                tokens = new if end is None else new[:end]
                answers[i] = tokenizer.decode(tokens, skip_special_tokens=True)
                lengths[i] = len(tokens)
                stopped[i] = end is not None
    seconds = time.monotonic() - started
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "answers": answers,
        "lengths": lengths,
        "stopped": stopped,
        "stop_token_ids": stops,
        "generation_seconds": round(seconds, 3),
        "examples_per_second": round(len(encoded) / seconds, 3) if seconds > 0 else None,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The evaluation


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """Generate, score, gate; write cfg.output_dir/evaluation.json and evaluation.png; returns the report."""
    import torch
    import transformers

    started = time.monotonic()
    dirs = {
        "candidate": check_model_dir("candidate", cfg.candidate_dir),
        "base": check_model_dir("base", cfg.base_dir),
    }
    if cfg.production_dir and Path(cfg.production_dir).exists():
        dirs["production"] = check_model_dir("production", cfg.production_dir)
    prompts, references = read_eval(cfg.eval_dir, cfg.max_examples)
    json_references = all(is_json_reference(r) for r in references)
    if cfg.primary_metric in JSON_METRICS and not json_references:
        raise ConfigError(f"primary_metric {cfg.primary_metric} needs JSON references, and the eval split's are not")

    device = jobkit.resolve_device(cfg.device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dtype_name = cfg.dtype if cfg.dtype != "auto" else ("bf16" if cuda else "fp32")
    dtype = jobkit.torch_dtype(dtype_name)

    results: dict[str, dict[str, Any]] = {}
    for name, model_dir in dirs.items():
        result = generate(model_dir, prompts, cfg, device, dtype)
        result["metrics"], result["per_example"] = aggregate(
            result["answers"], references, result["lengths"], result["stopped"], json_references=json_references
        )
        results[name] = result
        print(f"{name}: " + " ".join(f"{k}={v:.4f};" for k, v in result["metrics"].items()), flush=True)

    metrics = {name: result["metrics"] for name, result in results.items()}
    passed, reasons = gate(
        metrics,
        primary_metric=cfg.primary_metric,
        min_score=cfg.min_score,
        max_regression_vs_production=cfg.max_regression_vs_production,
        min_improvement_over_base=cfg.min_improvement_over_base,
        min_stop_rate=cfg.min_stop_rate,
    )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart_metrics = [m for m in SCORE_METRICS if m in metrics["candidate"]]
    chart = bar_chart(out / "evaluation.png", metrics, chart_metrics)
    warnings = [
        f"{name} stopped on its own in only {m['stop_rate']:.0%} of answers: check its end-of-turn token"
        for name, m in metrics.items()
        if m["stop_rate"] < 0.5
    ]
    report = {
        "passed": passed,
        "reasons": reasons,
        "primary_metric": cfg.primary_metric,
        "thresholds": {
            "min_score": cfg.min_score,
            "max_regression_vs_production": cfg.max_regression_vs_production,
            "min_improvement_over_base": cfg.min_improvement_over_base,
            "min_stop_rate": cfg.min_stop_rate,
        },
        "metrics": metrics,
        "delta_vs_base": deltas(metrics["candidate"], metrics["base"]),
        "delta_vs_production": deltas(metrics["candidate"], metrics["production"])
        if "production" in metrics
        else None,
        "examples": len(references),
        "json_references": json_references,
        "models": {
            name: {
                "path": str(dirs[name]),
                "stop_token_ids": r["stop_token_ids"],
                "generation_seconds": r["generation_seconds"],
                "examples_per_second": r["examples_per_second"],
            }
            for name, r in results.items()
        },
        "worst_examples": worst_examples(prompts, references, results, cfg.primary_metric, cfg.worst_examples),
        "chart": chart,
        "warnings": warnings,
        "device": device,
        "dtype": dtype_name,
        "wall_time_s": round(time.monotonic() - started, 3),
        "peak_memory_gb": round(jobkit.peak_memory_gb(cuda), 4),
        "peak_memory_kind": "cuda_max_allocated" if cuda else "process_max_rss",
        "config": dataclasses.asdict(cfg),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
    verdict = "passed" if passed else "did not pass: " + "; ".join(reasons)
    print(f"evaluation written to {out}; the candidate {verdict}", flush=True)
    return report


def failure_reason(exc: BaseException, cfg: EvaluateConfig | None = None) -> str:
    """One line for SageMaker's ExitMessage: the cause and what to do."""
    if jobkit.is_out_of_memory(exc):
        reason = "CUDA out of memory while generating: lower batch_size or max_new_tokens, or use a larger GPU"
    elif isinstance(exc, ConfigError):
        reason = f"invalid evaluation request: {exc}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return jobkit.one_line(reason)


def run(argv: list[str] | None = None) -> int:
    """Load the config, evaluate; on failure write the reason to the failure file and return 1 (2: bad config)."""
    return jobkit.run_job(
        argv,
        load_config=load_config,
        main=main,
        failure_reason=failure_reason,
        default_failure_file=SM_DEFAULTS["failure_file"],
        what="evaluation",
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(run())
