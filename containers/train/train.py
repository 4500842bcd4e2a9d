"""LoRA / QLoRA supervised fine-tuning under the SageMaker training contract (the Train stage's entrypoint).

SageMaker runs the image as `train.py train`: hyperparameters come from /opt/ml/input/config/hyperparameters.json
(every value a string), the channels from SM_CHANNEL_TRAIN / SM_CHANNEL_EVAL / SM_CHANNEL_MODEL
(/opt/ml/input/data/<name>), the adapter goes to SM_MODEL_DIR (/opt/ml/model), checkpoints to /opt/ml/checkpoints
(synced to S3 for spot training) and a one-line cause of any failure to /opt/ml/output/failure.

Outside SageMaker (the local cloud runs it this way) give the paths explicitly; any field of `TrainConfig` can be
passed as `--name value`, with the same parsing as the hyperparameters file:

```bash
python containers/train/train.py \
    --model_dir /tmp/tiny-base --train_dir runs/demo/data/train.jsonl --eval_dir runs/demo/data/eval.jsonl \
    --output_dir /tmp/tiny-adapter --checkpoint_dir /tmp/tiny-ckpt --failure_file /tmp/tiny-failure \
    --max_steps 200 --learning_rate 3e-3 --lora_r 8 --max_seq_length 256
```

(`python -m local.tiny_model local/data/demo.jsonl /tmp/tiny-base` writes a base model directory without weights;
`local.tiny_model.write_tiny_weights` adds random ones.) Train data is chat JSONL, one `{"messages": [...]}` per line,
as the Validate stage writes it. The loss covers the assistant turns only (the chat template's `{% generation %}`
blocks, end-of-turn token included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the directory holding containers/ (the repository, /opt/program in the image)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from containers.common import jobkit  # noqa: E402
from containers.common.jobkit import ConfigError  # noqa: E402

# SageMaker MetricDefinitions (Name/Regex) for the lines `MetricsCallback` prints: the template uses these verbatim.
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\b{name}={_NUMBER};"}
    for name in ("train_loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "gpu_memory_gb")
]

SM_DEFAULTS = {
    "hyperparameters": "/opt/ml/input/config/hyperparameters.json",
    "train_dir": "/opt/ml/input/data/train",
    "eval_dir": "/opt/ml/input/data/eval",
    "model_dir": "/opt/ml/input/data/model",
    "output_dir": "/opt/ml/model",
    "checkpoint_dir": "/opt/ml/checkpoints",
    "failure_file": "/opt/ml/output/failure",
}
# Where each path comes from under SageMaker (the TUNEPLANE_* ones exist so that tests can redirect them).
PATH_ENV = {
    "train_dir": "SM_CHANNEL_TRAIN",
    "eval_dir": "SM_CHANNEL_EVAL",
    "model_dir": "SM_CHANNEL_MODEL",
    "output_dir": "SM_MODEL_DIR",
    "checkpoint_dir": "TUNEPLANE_CHECKPOINT_DIR",
    "failure_file": "TUNEPLANE_FAILURE_FILE",
}
HYPERPARAMETERS_ENV = "TUNEPLANE_HYPERPARAMETERS"
CHECKPOINT_COMPLETE = "tuneplane-checkpoint-complete"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _path_default(name: str) -> Any:
    return field(
        default_factory=lambda: os.environ.get(PATH_ENV[name], SM_DEFAULTS[name]),
        metadata={"help": f"(default: ${PATH_ENV[name]} or {SM_DEFAULTS[name]})", "path": True},
    )


@dataclass
class TrainConfig:
    # --- paths (from the SageMaker contract, or explicit outside it; not hyperparameters) ---
    train_dir: str = _path_default("train_dir")
    eval_dir: str = _path_default("eval_dir")
    model_dir: str = _path_default("model_dir")
    output_dir: str = _path_default("output_dir")
    checkpoint_dir: str = _path_default("checkpoint_dir")
    failure_file: str = _path_default("failure_file")

    # --- LoRA ---
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (> 0); vLLM serves it only if max_lora_rank >= r."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (> 0): the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, 0 <= p < 1."})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={"help": "'all-linear' (every linear projection but the output head) or comma-separated names."},
    )
    qlora: bool = field(
        default=False,
        metadata={"help": "Load the base in 4-bit NF4 (double quant, bf16 compute) with bitsandbytes. GPU only."},
    )

    # --- optimisation ---
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (> 0)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (> 0); ignored when max_steps > 0."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; -1: use num_train_epochs."})
    # One packed row per micro-batch, four micro-batches per step: the same tokens per optimizer step as 4 rows, but a
    # 7B model at seq 2048 without gradient checkpointing fits one H100 (32.8 GB measured; 4 rows ran out of memory).
    per_device_batch_size: int = field(
        default=1, metadata={"help": "Sequences per device and step (packed rows of max_seq_length when packing)."}
    )
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimizer step (>= 1)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of the steps spent warming up, 0 <= r < 1."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (>= 0)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (> 0)."})
    seed: int = field(default=42, metadata={"help": "Seed of the LoRA init, dropout and data order."})

    # --- sequences and memory ---
    max_seq_length: int = field(default=2048, metadata={"help": "Tokens per packed row / longest example kept."})
    packing: bool = field(
        default=True,
        metadata={"help": "Best-fit-decreasing packing of whole examples into rows (padding-free attention)."},
    )
    padding_free: bool = field(
        default=True,
        metadata={"help": "Without packing: flatten each batch into one sequence (no padding; no truncation)."},
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass: less memory, ~30% slower."}
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 where the GPU supports it, else fp32) | bf16 | fp16 | fp32."}
    )
    attn_implementation: str = field(
        default="auto", metadata={"help": "auto (flash_attention_2 if installed on a GPU, else sdpa) or a name."}
    )
    assistant_only_loss: bool = field(
        default=True, metadata={"help": "Loss on assistant turns only (the template's {% generation %} blocks)."}
    )

    # --- checkpoints, evaluation, logging ---
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N optimizer steps (> 0)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (>= 1)."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps; 0: at the end of each epoch."})
    logging_steps: int = field(default=10, metadata={"help": "Print a metrics line every N steps (> 0)."})

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.lora_r > 0, "lora_r", "> 0"),
            (self.lora_alpha > 0, "lora_alpha", "> 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)"),
            (bool(self.lora_target_modules.strip()), "lora_target_modules", "non-empty"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "> 0"),
            (self.max_steps > 0 or self.max_steps == -1, "max_steps", "> 0 or -1"),
            (self.max_steps > 0 or self.num_train_epochs > 0, "num_train_epochs", "> 0 (or set max_steps)"),
            (self.per_device_batch_size >= 1, "per_device_batch_size", ">= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", ">= 1"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.max_grad_norm > 0, "max_grad_norm", "> 0"),
            (self.max_seq_length >= 8, "max_seq_length", ">= 8"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
            (self.save_steps > 0, "save_steps", "> 0"),
            (self.save_total_limit >= 1, "save_total_limit", ">= 1"),
            (self.eval_steps >= 0, "eval_steps", ">= 0"),
            (self.logging_steps > 0, "logging_steps", "> 0"),
        ]
        jobkit.check_config(self, checks)
        if self.qlora:
            _check_qlora_possible()

    def target_modules(self) -> str | list[str]:
        value = self.lora_target_modules.strip()
        return value if value == "all-linear" else [name.strip() for name in value.split(",") if name.strip()]


def _check_qlora_possible() -> None:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ConfigError("qlora=true needs a CUDA GPU (bitsandbytes 4-bit); this machine has none: use qlora=false")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("qlora=true needs bitsandbytes, which is not installed in this image")


# ---------------------------------------------------------------------------------------------------------------------
# Hyperparameters: strings in, typed config out


def hyperparameter_fields() -> dict[str, type]:
    """The fields a hyperparameters file may set, with their types."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if not f.metadata.get("path")}


def _convert(key: str, raw: object, kind: type) -> object:
    if isinstance(raw, str):
        text = raw.strip()
        # The SageMaker Python SDK JSON-encodes each value ('"cosine"'); the CreateTrainingJob API does not.
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
    elif isinstance(raw, bool | int | float):
        text = str(raw).lower() if isinstance(raw, bool) else str(raw)
    else:
        raise ConfigError(f"hyperparameter {key!r}: expected a string, got {type(raw).__name__}")
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError
        if kind is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            value = float(text)
            if math.isnan(value):
                raise ValueError
            return value
        return text
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ConfigError(f"hyperparameter {key!r}: expected {expected}, got {text!r}") from None


def parse_hyperparameters(values: dict[str, object]) -> dict[str, object]:
    """Typed keyword arguments for TrainConfig from SageMaker's string map; unknown keys are an error."""
    known = hyperparameter_fields()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {key: _convert(key, raw, known[key]) for key, raw in values.items()}


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Hyperparameters file (SageMaker), then `--name value` arguments; paths from SM_* variables by default."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["train"], help="SageMaker passes 'train'; ignored")
    parser.add_argument("--hyperparameters", help=f"JSON file (default: ${HYPERPARAMETERS_ENV} or SageMaker's)")
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name}", dest=f.name, default=None, help=jobkit.help_text(f))
    args = vars(parser.parse_args(argv))
    hp_path = Path(args.pop("hyperparameters") or os.environ.get(HYPERPARAMETERS_ENV, SM_DEFAULTS["hyperparameters"]))
    args.pop("mode")
    values: dict[str, object] = {}
    if hp_path.is_file():
        try:
            loaded = json.loads(hp_path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{hp_path} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{hp_path} must hold a JSON object, got {type(loaded).__name__}")
        values.update(loaded)
    paths = {name: value for name, value in args.items() if value is not None and name in PATH_ENV}
    values.update({name: value for name, value in args.items() if value is not None and name not in PATH_ENV})
    return TrainConfig(**paths, **parse_hyperparameters(values))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# Data and checkpoints


def read_chat_rows(location: str) -> list[dict[str, Any]]:
    """Every `{"messages": [...]}` line of a .jsonl file, or of the .jsonl files of a channel directory (sorted)."""
    return [{"messages": messages} for messages in jobkit.read_chat_jsonl(location)]


def newest_complete_checkpoint(checkpoint_dir: str) -> Path | None:
    """The checkpoint-N directory with the highest N whose save finished (a half-written one is skipped)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    complete = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit()
        and (p / CHECKPOINT_COMPLETE).is_file()
        and (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def _metric_fields(logs: dict[str, float], step: int) -> dict[str, float]:
    """The metrics of one Trainer log record under their MetricDefinitions names; a non-finite loss stops the run."""
    fields: dict[str, float] = {}
    if "loss" in logs:
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"train loss became {loss} at step {step}: "
                "lower learning_rate (or set max_grad_norm), check the data for empty or broken examples"
            )
        fields["train_loss"] = loss
        fields.update({key: float(logs[key]) for key in ("learning_rate", "grad_norm") if key in logs})
    if "eval_loss" in logs:
        fields["eval_loss"] = float(logs["eval_loss"])
    return fields


def _throughput(last: tuple[float, int] | None, now: float, tokens: int) -> dict[str, float]:
    if last is None or now <= last[0]:
        return {}
    return {"tokens_per_second": (tokens - last[1]) / (now - last[0])}


def _make_callbacks(cfg: TrainConfig, summary: dict[str, Any], stop: dict[str, bool]) -> list[Any]:
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Prints `name=value;` lines for SageMaker MetricDefinitions, records the curve, stops on NaN."""

        def __init__(self) -> None:
            self.last: tuple[float, int] | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            now, tokens = time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0)
            fields = _metric_fields(logs or {}, state.global_step)
            if "train_loss" in fields:
                fields.update(_throughput(self.last, now, tokens))
                self.last = (now, tokens)
                summary["loss_curve"].append({"step": state.global_step, "epoch": state.epoch, **fields})
            if "eval_loss" in fields:
                summary["eval_curve"].append({"step": state.global_step, "eval_loss": fields["eval_loss"]})
            if fields:
                fields["gpu_memory_gb"] = jobkit.peak_memory_gb(True) if _cuda() else 0.0
                print(f"step={state.global_step}; " + " ".join(f"{k}={v:.6g};" for k, v in fields.items()), flush=True)

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.last = (time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0))

    class CheckpointCallback(TrainerCallback):
        """Marks each finished checkpoint as complete; on SIGTERM saves one and stops."""

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if stop["sigterm"]:  # spot interruption: checkpoint now, then stop
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if args.should_save:
                done = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_COMPLETE
                if done.parent.is_dir():
                    done.write_text(str(state.global_step))

    return [MetricsCallback(), CheckpointCallback()]


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------------------------------
# Training


def build_trainer(cfg: TrainConfig, extra_callbacks: list[Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The SFTTrainer for `cfg` and the run's context (summary being filled, SIGTERM flag, data sizes, precision)."""
    import datasets
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # lazy re-exports

    datasets.disable_progress_bars()
    transformers.set_seed(cfg.seed)
    cuda = torch.cuda.is_available()
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise ConfigError(f"precision={precision} needs a GPU here; use precision=auto or fp32 on a CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    attn = cfg.attn_implementation
    if attn == "auto":
        import importlib.util

        attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"

    train_rows = read_chat_rows(cfg.train_dir)
    if not train_rows:
        raise ValueError(f"no training examples in {cfg.train_dir} (expected *.jsonl with messages)")
    eval_rows = read_chat_rows(cfg.eval_dir)

    model_dir = Path(cfg.model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no base model in {model_dir} (config.json missing from the model channel)")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}: only safetensors are loaded")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {model_dir} has no chat template")

    quantization = None
    if cfg.qlora:
        quantization = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=dtype,
        attn_implementation=attn,
        quantization_config=quantization,
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    )
    model.config.use_cache = False  # padding-free under sdpa needs it; training never uses the cache

    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules(),
        bias="none",
        task_type="CAUSAL_LM",
    )
    has_eval = bool(eval_rows)
    args = SFTConfig(
        output_dir=cfg.checkpoint_dir,
        seed=cfg.seed,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        max_length=cfg.max_seq_length if cfg.packing or not cfg.padding_free else None,
        packing=cfg.packing,
        packing_strategy="bfd",
        padding_free=cfg.padding_free,
        assistant_only_loss=cfg.assistant_only_loss,
        dataset_num_proc=None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if has_eval else "no",
        eval_steps=cfg.eval_steps or None,
        eval_on_start=has_eval,  # the base model's eval loss: the first point of the eval curve
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach the callback, not be averaged away
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        trust_remote_code=False,
    )
    summary: dict[str, Any] = {"loss_curve": [], "eval_curve": []}
    stop = {"sigterm": False}
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=_make_callbacks(cfg, summary, stop) + list(extra_callbacks or []),
    )
    context = {
        "summary": summary,
        "stop": stop,
        "train_examples": len(train_rows),
        "eval_examples": len(eval_rows),
        "precision": precision,
        "attn_implementation": attn,
        "tokenizer": tokenizer,
    }
    return trainer, context


def main(cfg: TrainConfig, extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train, save the adapter + tokenizer + training_summary.json to cfg.output_dir; returns the summary."""
    import peft
    import torch
    import transformers
    import trl

    started = time.monotonic()
    trainer, context = build_trainer(cfg, extra_callbacks)
    summary: dict[str, Any] = context["summary"]
    stop, tokenizer = context["stop"], context["tokenizer"]
    has_eval = context["eval_examples"] > 0
    cuda = torch.cuda.is_available()

    def on_sigterm(signum: int, frame: types.FrameType | None) -> None:
        print("SIGTERM received: saving a checkpoint at the end of this step, then stopping", flush=True)
        stop["sigterm"] = True

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    resume = newest_complete_checkpoint(cfg.checkpoint_dir)
    if resume is not None:
        print(f"resuming from {resume}", flush=True)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stop["sigterm"]:
        raise InterruptedError(
            f"stopped by SIGTERM at step {trainer.state.global_step}; checkpoint saved in {cfg.checkpoint_dir}: "
            "a restarted job resumes from it"
        )

    final = dict(result.metrics)
    if has_eval:
        last_eval = summary["eval_curve"][-1] if summary["eval_curve"] else None
        if last_eval is None or last_eval["step"] != trainer.state.global_step:
            trainer.evaluate()  # the callback prints and records it
        final["eval_loss"] = summary["eval_curve"][-1]["eval_loss"]
        final["base_eval_loss"] = summary["eval_curve"][0]["eval_loss"]

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary.update(
        {
            "final_metrics": final,
            "global_step": trainer.state.global_step,
            "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
            "train_examples": context["train_examples"],
            "eval_examples": context["eval_examples"],
            "wall_time_s": round(time.monotonic() - started, 3),
            "peak_memory_gb": round(jobkit.peak_memory_gb(cuda), 4),
            "peak_memory_kind": "cuda_max_allocated" if cuda else "process_max_rss",
            "resumed_from": resume.name if resume else None,
            "precision": context["precision"],
            "attn_implementation": context["attn_implementation"],
            "config": dataclasses.asdict(cfg),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "trl": trl.__version__,
            },
        }
    )
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def failure_reason(exc: BaseException, cfg: TrainConfig | None) -> str:
    """One line for SageMaker's FailureReason: the cause and what to do."""
    if jobkit.is_out_of_memory(exc):
        where = f" at seq len {cfg.max_seq_length}, batch {cfg.per_device_batch_size}" if cfg else ""
        reason = (
            f"CUDA out of memory{where}: lower per_device_batch_size or max_seq_length"
            " (or set gradient_checkpointing=true or qlora=true)"
        )
    elif isinstance(exc, ConfigError):
        reason = f"invalid hyperparameters: {exc}"
    elif isinstance(exc, NonFiniteLossError | InterruptedError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return jobkit.one_line(reason)


def run(argv: list[str] | None = None) -> int:
    """Load the config, train; on failure write the reason to the failure file and return 1 (2: bad config)."""
    return jobkit.run_job(
        argv,
        load_config=load_config,
        main=main,
        failure_reason=failure_reason,
        default_failure_file=os.environ.get(PATH_ENV["failure_file"], SM_DEFAULTS["failure_file"]),
        what="training",
    )


if __name__ == "__main__":
    sys.exit(run())
