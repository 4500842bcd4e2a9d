"""Evaluate a fine-tuned model against its base (and production) under the SageMaker Processing contract.

SageMaker Processing mounts the inputs under
/opt/ml/processing/input/{candidate,base,production,unquantized,adapter,eval,graders,regression} (the candidate model
in the form the endpoint serves it: merged, or AWQ-quantized when the run quantizes, or with ServeMode=lora no
candidate but the run's LoRA adapter, applied unmerged to the base as that endpoint does (generation.py), the base
model it was trained from, optionally the model now in production, optionally the merged model a quantized candidate
was made from (its scores say what quantization cost, in each grader's terms: `quantization` in evaluation.json), the
eval split as chat JSONL, optionally graders/graders.json, optionally the stack's regression set as *.jsonl files) and
uploads /opt/ml/processing/output/evaluation; a one-line cause of any failure goes to the failure file
(/opt/ml/output/message by default: SageMaker Processing reports it as the job's ExitMessage; the job exits non-zero).
No production input (the directory is absent or `--production_dir ""`) means there is no model in production yet: that
threshold is then skipped. No graders.json (neither `--graders_file` nor graders.json in `--graders_dir`, the graders
input's folder) means `{}`. No regression set (`--regression_dir` absent, "", without *.jsonl files or with blank
ones) means no regression metric, rule or output: the rest is unchanged.

What it does: for each eval conversation the prompt is every message but the final assistant one, rendered with the
model's chat template (`add_generation_prompt`), and the reference is that final assistant message. Each model
answers greedily (generation.py: vLLM's offline engine where the image has it and a GPU is there, else transformers
in batches with left padding), at most `max_new_tokens` tokens, stopping on its end-of-turn
token(s) (the tokenizer's eos plus generation_config.json's eos ids plus a known end-of-turn marker of the chat
template). The answers are scored by graders.py (its docstring lists every metric and graders.json's keys): exact
match, token F1, ROUGE-L F, mean generated length, stop rate (the share of answers that ended on an end-of-turn token
rather than at `max_new_tokens`); JSON validity and schema match (against graders.json's `json.schema`, or the
references' shape when every reference is JSON); classification accuracy, macro-F1 and a confusion matrix (with
graders.json's `classification.labels`, or automatically when the references are a few short labels); pattern checks
(`pattern`: regex, must_contain, must_not_contain). `passed` is decided from the thresholds given (`min_score` on
the primary metric, `max_regression_vs_production`, `min_improvement_over_base`, `min_stop_rate`, and graders.json's
`thresholds`, a minimum per metric for the candidate; graders.json's `primary_metric` overrides `--primary_metric`),
each failure spelled out in `reasons`. A primary metric or threshold on a metric that is not computed is a
ConfigError, raised before any model is loaded. The gate itself is a decision of the state machine: this job only
computes the numbers and the flag.

Regression set: general prompts with expected behaviours, the same for every run of the stack, so that a fine-tune
that forgets how to follow an instruction or how to stop is caught even when its task metric improves. Each line of
each `*.jsonl` file in `--regression_dir` (sorted by name; at most 2,000 prompts) is `{"id": "optional", "messages":
[... ending with a user turn], "expect": {...}}`, expect keys must_contain, must_not_contain, regex, stops, max_words
(regression.py's docstring has the details); a bad line is a ConfigError naming `file:line`, raised before any model
loads. Every model answers them in the same generate call as the eval split (same chat template, greedy settings and
batching; `generation_seconds` covers both). Metric: `regression_pass_rate` (the share of prompts whose every
expectation holds) in each model's metrics: it can be the primary metric or a threshold and is drawn in the chart.
Gate: the candidate's rate may be at most `max_regression_drop` (default 0.1; inf: off) below the base's; the reason
lists up to 5 ids of the prompts the base passed and the candidate failed.

Writes `evaluation.json` (per-model metrics, deltas vs base and vs production, passed, reasons, thresholds with
graders.json's under `thresholds.metrics`, `graders`: the classification labels / whether they were detected / each
model's confusion matrix, the JSON schema (with per model `json_schema_errors`, the answers the schema itself failed
on) or "inferred", the pattern checks, each null when off; `regression`: null without a regression set, else its
examples, files, per model the pass rate and the first 20 ids it failed, and `lost`, the ids the base passed and the
candidate failed; the worst `worst_examples` examples with prompt/reference/answers), `answers.jsonl` (one line per
eval example, in eval order: index, prompt, reference, and per model its answer, stop flag and scores; the control
plane's judge and custom graders read it), with a regression set `regression_answers.jsonl` (one line per regression
prompt, in set order: id, messages, expect, and per model its answer, stop flag, whether it passed and the
expectations it failed) and `evaluation.png` (grouped bars per score metric computed, each in [0, 1]: candidate, base,
production; no text in the image, the legend is in evaluation.json's `chart`).

Outside SageMaker give the paths explicitly (any field of `EvaluateConfig` is a `--name value` argument):

```bash
echo '{"pattern": {"must_not_contain": ["As an AI"]}, "thresholds": {"pattern_pass_rate": 0.5}}' \
    > /tmp/tiny-graders.json
python containers/evaluate/evaluate.py \
    --candidate_dir /tmp/tiny-merged --base_dir /tmp/tiny-base --production_dir "" \
    --eval_dir runs/demo/data/eval.jsonl --graders_file /tmp/tiny-graders.json \
    --output_dir /tmp/tiny-evaluation --failure_file /tmp/tiny-eval-failure \
    --max_new_tokens 32 --batch_size 4 --min_stop_rate 0
```

(`containers/merge/merge.py`'s docstring shows how to make /tmp/tiny-merged and /tmp/tiny-base.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the directory holding containers/ (the repository, /opt/program in the image)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from containers.common import jobkit
from containers.common.jobkit import ConfigError
from containers.evaluate import batching, charts, gate, generation, graders, regression
from containers.evaluate.graders import SCORE_METRICS, Graders

SM_DEFAULTS = {
    "candidate_dir": "/opt/ml/processing/input/candidate",
    "base_dir": "/opt/ml/processing/input/base",
    "production_dir": "/opt/ml/processing/input/production",
    "unquantized_dir": "/opt/ml/processing/input/unquantized",
    "adapter_dir": "/opt/ml/processing/input/adapter",
    "eval_dir": "/opt/ml/processing/input/eval",
    "graders_file": "/opt/ml/processing/input/graders/graders.json",
    "graders_dir": "/opt/ml/processing/input/graders",
    "regression_dir": "/opt/ml/processing/input/regression",
    "output_dir": "/opt/ml/processing/output/evaluation",
    "failure_file": jobkit.PROCESSING_FAILURE_FILE,
}
PATH_FIELDS = tuple(SM_DEFAULTS)
DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANTIZATION_NOTABLE_LOSS = 0.01  # a point of a [0, 1] metric: smaller losses are noise on an eval split
QUANTIZATION_LINES = 3


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
    unquantized_dir: str = jobkit.path_field(
        SM_DEFAULTS["unquantized_dir"],
        f"(default: {SM_DEFAULTS['unquantized_dir']}; absent or empty: the candidate is not a quantized model) the "
        "merged model the quantized candidate was made from: its scores say what quantization cost, in the graders' "
        "own terms",
    )
    adapter_dir: str = jobkit.path_field(
        SM_DEFAULTS["adapter_dir"],
        f"(default: {SM_DEFAULTS['adapter_dir']}; absent or empty: the candidate is candidate_dir) ServeMode=lora: "
        "the run's LoRA adapter (loose files, or the training job's model.tar.gz as uploaded); the candidate is then "
        "the base model with this adapter applied unmerged, as that endpoint serves it, and candidate_dir is not read",
    )
    eval_dir: str = _path_default("eval_dir")
    graders_file: str = jobkit.path_field(
        SM_DEFAULTS["graders_file"],
        f"(default: {SM_DEFAULTS['graders_file']}; absent or empty: {{}}; keys: see graders.py)",
    )
    graders_dir: str = jobkit.path_field(
        SM_DEFAULTS["graders_dir"],
        f"(default: {SM_DEFAULTS['graders_dir']}) The graders input's folder: its graders.json is read when "
        "--graders_file is not a file (the control plane passes each processing input as --<name>_dir).",
    )
    regression_dir: str = jobkit.path_field(
        SM_DEFAULTS["regression_dir"],
        f"(default: {SM_DEFAULTS['regression_dir']}; absent, empty or without *.jsonl files: no regression set) "
        "The stack's regression prompts (see regression.py).",
    )
    output_dir: str = _path_default("output_dir")
    failure_file: str = _path_default("failure_file")

    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per answer (>= 1)."})
    batch_size: int = field(
        default=0,
        metadata={
            "help": "Prompts generated together, left-padded (>= 1); 0: as many as the GPU's free memory holds "
            "(batching.py), 16 on the CPU."
        },
    )
    max_batch_rows: int = field(
        default=batching.MAX_ROWS,
        metadata={
            "help": "With batch_size 0, the most prompts of one batch (>= 1; batching.py says why this default)."
        },
    )
    max_examples: int = field(default=0, metadata={"help": "Eval conversations used (0: all)."})
    max_prompt_tokens: int = field(
        default=4096, metadata={"help": "Longer prompts keep their last max_prompt_tokens tokens (>= 8)."}
    )
    primary_metric: str = field(
        default="exact_match",
        metadata={
            "help": f"Metric the thresholds apply to: one of {', '.join(SCORE_METRICS)} (graders.json's "
            "primary_metric overrides it)."
        },
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
    max_regression_drop: float = field(
        default=0.1,
        metadata={
            "help": "With a regression set, the candidate's regression_pass_rate may be at most this much below the "
            "base's (inf: off)."
        },
    )
    max_quantization_drop: float = field(
        default=0.05,
        metadata={
            "help": "With an unquantized model beside a quantized candidate, how much of any score metric the "
            "candidate may lose against it (inf: off)."
        },
    )
    worst_examples: int = field(default=20, metadata={"help": "Per-example results kept for the worst cases."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on cuda, fp16 for a quantized candidate as the endpoint serves it; fp32 on cpu) | "
            "bf16 | fp16 | fp32."
        },
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu) | cpu | cuda."})

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.max_new_tokens >= 1, "max_new_tokens", ">= 1"),
            (self.batch_size >= 0, "batch_size", ">= 0 (0: sized to the GPU's memory)"),
            (self.max_batch_rows >= 1, "max_batch_rows", ">= 1"),
            (self.max_examples >= 0, "max_examples", ">= 0 (0: all)"),
            (self.max_prompt_tokens >= 8, "max_prompt_tokens", ">= 8"),
            (self.primary_metric in SCORE_METRICS, "primary_metric", f"one of {', '.join(SCORE_METRICS)}"),
            (0.0 <= self.min_score <= 1.0, "min_score", "in [0, 1]"),
            (self.max_regression_vs_production >= 0, "max_regression_vs_production", ">= 0 (inf: off)"),
            (not math.isnan(self.min_improvement_over_base), "min_improvement_over_base", "a number (-inf: off)"),
            (0.0 <= self.min_stop_rate <= 1.0, "min_stop_rate", "in [0, 1]"),
            (self.max_regression_drop >= 0, "max_regression_drop", ">= 0 (inf: off)"),
            (self.max_quantization_drop >= 0, "max_quantization_drop", ">= 0 (inf: off)"),
            (self.worst_examples >= 0, "worst_examples", ">= 0"),
            (self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}"),
            (self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda"),
        ]
        jobkit.check_config(self, checks)


def load_config(argv: list[str] | None = None) -> EvaluateConfig:
    """`--name value` arguments, one per EvaluateConfig field."""
    return jobkit.load_options(EvaluateConfig, argv, __doc__)


def worst_examples(
    prompts: list[Any], references: list[str], results: dict[str, dict[str, Any]], primary_metric: str, count: int
) -> list[dict[str, Any]]:
    """The `count` examples where the candidate scores lowest on the primary metric (its per-example stand-in for
    macro-F1: accuracy), then lowest token F1."""
    candidate = results["candidate"]["per_example"]
    key = graders.per_example_key(primary_metric)
    order = sorted(range(len(references)), key=lambda i: (candidate[i].get(key, 0.0), candidate[i]["token_f1"], i))
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


def answer_records(
    prompts: list[Any], references: list[str], results: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """answers.jsonl's lines: every eval example in eval order with every model's answer, stop flag and scores."""
    return [
        {
            "index": i,
            "prompt": prompts[i],
            "reference": references[i],
            "answers": {name: result["answers"][i] for name, result in results.items()},
            "stopped": {name: result["stopped"][i] for name, result in results.items()},
            "scores": {name: result["per_example"][i] for name, result in results.items()},
        }
        for i in range(len(references))
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Quantization's cost


def quantization_cost(metrics: dict[str, dict[str, float]], names: list[str]) -> dict[str, Any] | None:
    """What serving the quantized candidate costs against the merged model it was made from, per score metric, and
    the losses said in words ("quantization lost 0.0300 of classification_accuracy (0.9100 -> 0.8800)")."""
    if "unquantized" not in metrics:
        return None
    before, after = metrics["unquantized"], metrics["candidate"]
    lost = {name: before[name] - after[name] for name in names if name in before and name in after}
    # Said: the losses of a point or more, largest first, at most QUANTIZATION_LINES (the rest are in `lost`), so
    # that they do not crowd the run's other notes out of its Slack message.
    worst = sorted((item for item in lost.items() if item[1] >= QUANTIZATION_NOTABLE_LOSS), key=lambda x: -x[1])
    said = [
        f"quantization lost {loss:.4f} of {name} ({before[name]:.4f} -> {after[name]:.4f})"
        for name, loss in worst[:QUANTIZATION_LINES]
    ]
    return {"lost": lost, "said": said}


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


def graders_path(cfg: EvaluateConfig) -> str:
    """--graders_file when it is a file, else graders.json in --graders_dir, else "" (graders.json is then {})."""
    in_dir = Path(cfg.graders_dir) / "graders.json" if cfg.graders_dir else None
    if cfg.graders_file and Path(cfg.graders_file).is_file():
        return cfg.graders_file
    return str(in_dir) if in_dir is not None and in_dir.is_file() else ""


def check_adapter_dir(location: str, scratch: Path) -> Path | None:
    """The LoRA adapter to apply to the base (None: no adapter input), unpacked from the training job's
    model.tar.gz when that is what the input holds."""
    if not location or not Path(location).exists():
        return None
    adapter_dir, _ = jobkit.unpack_model_archive(Path(location), scratch)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"no LoRA adapter in {location} ({name} missing, and no {jobkit.MODEL_ARCHIVE})")
    return adapter_dir


def check_model_dir(name: str, location: str) -> Path:
    path = Path(location)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no {name} model in {path} (config.json missing)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors weights in {path} ({name} model): only safetensors are loaded")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The evaluation


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """Generate, score, gate; write cfg.output_dir/evaluation.json, answers.jsonl and evaluation.png; returns the
    report."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tuneplane-evaluate-") as scratch:
        adapter_dir = check_adapter_dir(cfg.adapter_dir, Path(scratch) / "adapter")
        return evaluate(cfg, adapter_dir, started)


def evaluate(cfg: EvaluateConfig, adapter_dir: Path | None, started: float) -> dict[str, Any]:
    import torch
    import transformers

    base_dir = check_model_dir("base", cfg.base_dir)
    dirs = {
        # ServeMode=lora: the endpoint serves the base with the adapter, so that is the candidate.
        "candidate": base_dir if adapter_dir is not None else check_model_dir("candidate", cfg.candidate_dir),
        "base": base_dir,
    }
    if cfg.production_dir and Path(cfg.production_dir).exists():
        dirs["production"] = check_model_dir("production", cfg.production_dir)
    if cfg.unquantized_dir and Path(cfg.unquantized_dir).exists():
        dirs["unquantized"] = check_model_dir("unquantized", cfg.unquantized_dir)
    prompts, references = read_eval(cfg.eval_dir, cfg.max_examples)
    regression_set = regression.read_regression(cfg.regression_dir)
    config = graders.read_graders(graders_path(cfg))
    grading = Graders.resolve(config, references)
    primary_metric = config.primary_metric or cfg.primary_metric
    metric_names = grading.metric_names() + ([regression.METRIC] if regression_set is not None else [])
    gate.require_computed(metric_names, primary_metric, config.thresholds)  # before loading any model
    regression_prompts = regression_set.messages if regression_set is not None else []

    device = jobkit.resolve_device(cfg.device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dtype_name = cfg.dtype if cfg.dtype != "auto" else ("bf16" if cuda else "fp32")
    dtype = jobkit.torch_dtype(dtype_name)

    results: dict[str, dict[str, Any]] = {}
    regression_failed: dict[str, list[list[str]]] = {}
    for name, model_dir in dirs.items():
        # One load and one generate call per model: the regression prompts get exactly the eval split's settings.
        adapter = adapter_dir if name == "candidate" else None
        model_dtype = dtype
        if name == "candidate" and "unquantized" in dirs and cuda and cfg.dtype == "auto":
            # The endpoint serves the AWQ model in float16 (deploy/serving.py SM_VLLM_DTYPE): so is it scored.
            model_dtype = jobkit.torch_dtype("fp16")
        result = generation.generate(model_dir, prompts + regression_prompts, cfg, device, model_dtype, adapter)
        result["regression"] = generation.split_generation(result, len(prompts))
        result["metrics"], result["per_example"] = grading.aggregate(
            result["answers"], references, result["lengths"], result["stopped"], model=name
        )
        if regression_set is not None:
            tail = result["regression"]
            regression_failed[name] = regression.failures(regression_set, tail["answers"], tail["stopped"], model=name)
            result["metrics"][regression.METRIC] = regression.pass_rate(regression_failed[name])
        results[name] = result
        print(f"{name}: " + " ".join(f"{k}={v:.4f};" for k, v in result["metrics"].items()), flush=True)

    metrics = {name: result["metrics"] for name, result in results.items()}
    passed, reasons = gate.gate(
        metrics,
        primary_metric=primary_metric,
        min_score=cfg.min_score,
        max_regression_vs_production=cfg.max_regression_vs_production,
        min_improvement_over_base=cfg.min_improvement_over_base,
        min_stop_rate=cfg.min_stop_rate,
        thresholds=config.thresholds,
        max_regression_drop=cfg.max_regression_drop,
        regression_lost=regression.lost_ids(regression_set, regression_failed) if regression_set is not None else (),
    )
    unserved = results["candidate"]["unserved_end_of_turn"]
    if unserved:
        passed = False
        reasons.append(
            f"the endpoint would not stop at {', '.join(unserved)}: the candidate's chat template ends a turn with "
            "it, but neither the tokenizer's eos nor generation_config.json's eos_token_id has it (the server stops "
            "only on those); its answers end there here, but would run on when served"
            + (
                " (ServeMode=lora serves the base model's own files: add the id to its generation_config.json's "
                "eos_token_id, or serve the merged model, ServeMode=merged, whose files the Merge stage completes)"
                if adapter_dir is not None
                else ""
            )
        )
    quantization = quantization_cost(metrics, metric_names)
    # Every metric the job computed, not only the primary one: the dataset chooses its primary metric, and must not
    # be able to choose one quantization does not hurt (stop_rate) and so serve a model that lost its accuracy.
    beyond = sorted(
        (
            (name, loss)
            for name, loss in (quantization or {}).get("lost", {}).items()
            if loss > cfg.max_quantization_drop
        ),
        key=lambda item: -item[1],
    )
    if beyond:
        passed = False
        losses = "; ".join(
            f"{loss:.4f} of {name} ({metrics['unquantized'][name]:.4f} unquantized -> "
            f"{metrics['candidate'][name]:.4f} quantized)"
            for name, loss in beyond
        )
        reasons.append(
            f"quantization lost {losses}: more than max_quantization_drop {cfg.max_quantization_drop:g}; serve the "
            "merged model (QuantizeEnabled=false) or raise MaxQuantizationDrop"
        )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = charts.bar_chart(out / "evaluation.png", metrics, metric_names)
    # The candidate's only: a base model that never stops is ordinary, and its line would crowd out the rest.
    warnings = [
        f"{name} stopped on its own in only {m['stop_rate']:.0%} of answers: check its end-of-turn token"
        for name, m in metrics.items()
        if name == "candidate" and m["stop_rate"] < 0.5
    ]
    warnings += quantization["said"] if quantization else []
    report = {
        "passed": passed,
        "reasons": reasons,
        "primary_metric": primary_metric,
        "thresholds": {
            "min_score": cfg.min_score,
            "max_regression_vs_production": cfg.max_regression_vs_production,
            "min_improvement_over_base": cfg.min_improvement_over_base,
            "min_stop_rate": cfg.min_stop_rate,
            "max_regression_drop": cfg.max_regression_drop,
            "max_quantization_drop": cfg.max_quantization_drop,
            "metrics": config.thresholds,
        },
        "metrics": metrics,
        "delta_vs_base": gate.deltas(metrics["candidate"], metrics["base"]),
        "delta_vs_production": gate.deltas(metrics["candidate"], metrics["production"])
        if "production" in metrics
        else None,
        "quantization": quantization,
        "examples": len(references),
        "json_references": all(graders.is_json_reference(r) for r in references),
        "graders": grading.report({name: r["answers"] for name, r in results.items()}, references),
        "regression": regression.report(regression_set, regression_failed) if regression_set is not None else None,
        "models": {
            name: {
                "path": str(dirs[name]),
                "adapter": r["adapter"],
                "engine": r["engine"],
                "stop_token_ids": r["stop_token_ids"],
                "unserved_end_of_turn": r["unserved_end_of_turn"],
                "generation_seconds": r["generation_seconds"],
                "examples_per_second": r["examples_per_second"],
                "generated_tokens_per_second": r["generated_tokens_per_second"],
                "batches": r["batches"],
                "largest_batch": r["largest_batch"],
                "split_batches": r["split_batches"],
            }
            for name, r in results.items()
        },
        "worst_examples": worst_examples(prompts, references, results, primary_metric, cfg.worst_examples),
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
    with (out / "answers.jsonl").open("w") as lines:
        lines.writelines(json.dumps(record) + "\n" for record in answer_records(prompts, references, results))
    if regression_set is not None:
        records = regression.answer_records(
            regression_set,
            {name: r["regression"]["answers"] for name, r in results.items()},
            {name: r["regression"]["stopped"] for name, r in results.items()},
            regression_failed,
        )
        with (out / "regression_answers.jsonl").open("w") as lines:
            lines.writelines(json.dumps(record) + "\n" for record in records)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
    verdict = "passed" if passed else "did not pass: " + "; ".join(reasons)
    print(f"evaluation written to {out}; the candidate {verdict}", flush=True)
    return report


def failure_reason(exc: BaseException, cfg: EvaluateConfig | None = None) -> str:
    """One line for SageMaker's ExitMessage: the cause and what to do."""
    if jobkit.is_out_of_memory(exc):
        reason = (
            "CUDA out of memory while generating: set batch_size (0 sizes it to the free memory), lower "
            "max_new_tokens, or use a larger GPU"
        )
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
