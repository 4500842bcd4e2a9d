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

Several GPUs on one instance: with more than one GPU visible, `train.py` re-runs itself under torchrun
(`python -m torch.distributed.run --standalone --nproc_per_node=N train.py <same arguments>`), N data-parallel ranks
(NCCL) on the first N GPUs, N = `nproc_per_node` (auto: every visible GPU), waits, and exits non-zero if a rank
failed. On a CPU an integer `nproc_per_node` > 1 runs that many gloo ranks. The Trainer shards the batches across the
ranks and averages the loss over all ranks' tokens; rank 0 alone prints the metric lines and writes the adapter, the
tokenizer and training_summary.json; the first rank to fail writes the failure file. Per-device batch B on N ranks is
the optimizer step of one process with batch B and gradient_accumulation_steps x N (tests/containers/
test_train_distributed.py: the same losses and adapter). SIGTERM reaches every rank: all checkpoint after the same
step.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the directory holding containers/ (the repository, /opt/program in the image)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from containers.common import jobkit
from containers.common.jobkit import ConfigError
from containers.train import batch_plan, varlen_attention

# SageMaker MetricDefinitions (Name/Regex) for the lines `MetricsCallback` prints: the template uses these verbatim.
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\b{name}={_NUMBER};"}
    for name in ("train_loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "gpu_memory_gb")
    # printed once at the end: the step handed on and its eval loss, the last step run, the steps early stopping saved
    + ("best_step", "best_eval_loss", "last_step", "steps_saved")
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
AUTO_SWITCHES = ("auto", "true", "false")
# What torchrun waits for after forwarding SIGTERM (or after a rank failed) before it SIGKILLs the ranks: SageMaker
# waits 120 s after its SIGTERM, and a rank must finish its step and write the checkpoint in that time.
SHUTDOWN_TIMEOUT_S = 100
# Set in the ranks' environment unless the user set it: NVLink SHARP (NVLS) buffers cost GPU memory and need the
# fabric manager set up, which the lent and SageMaker hosts do not promise. (OMP_NUM_THREADS defaults to the CPU cores
# divided between the ranks.)
LAUNCH_ENV_DEFAULTS = {"NCCL_NVLS_ENABLE": "0"}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class WorkerFailedError(RuntimeError):
    """A rank of a multi-process run failed: the message is the first failing rank's reason."""


class WorkerConfigError(WorkerFailedError, ConfigError):
    """The first failing rank found a hyperparameter it cannot use (the launcher exits 2, as one process would)."""


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
    # No dropout by default: with it, PEFT keeps a dropped copy of every projection's input for the backward pass
    # (7B on an H100 at 4 rows of 2048: 66.1 GB and 13.8k tokens/s with 0.05, 48.6 GB and 14.5k tokens/s without).
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the LoRA input, 0 <= p < 1 (0.05-0.1 regularises small datasets)."}
    )
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
    # Auto: four packed rows per step, in one micro-batch where the GPU holds them (8k-token matmuls, per-layer launch
    # overheads paid once: 7B on an H100, 1.8x the tokens/s of 1 row x 4 micro-batches), else split (batch_plan.py).
    per_device_batch_size: int = field(
        default=0,
        metadata={
            "help": "Sequences per device and micro-batch (packed rows of max_seq_length when packing); 0: auto, the"
            " largest of 4, 2, 1 that the GPU's memory holds by estimate (4 on a CPU)."
        },
    )
    gradient_accumulation_steps: int = field(
        default=0,
        metadata={"help": "Micro-batches per optimizer step; 0: auto, 4 rows per step in all (4 / per-device batch)."},
    )
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
    gradient_checkpointing: str = field(
        default="auto",
        metadata={
            "help": "Recompute activations in the backward pass, less memory for ~30% of the speed: auto (on with"
            " qlora; otherwise off unless the memory estimate says the batch does not fit on the GPU without it;"
            " off on a CPU) | true | false."
        },
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 where the GPU supports it, else fp32) | bf16 | fp16 | fp32."}
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "auto (on a GPU: flash_attention_2 if installed, else torch_varlen for padding-free batches, the"
            " FlashAttention-2 kernels inside torch; else sdpa) or a transformers name."
        },
    )
    liger_kernels: str = field(
        default="auto",
        metadata={
            "help": "Liger's fused Triton kernels for RMSNorm, SwiGLU and RoPE: auto (on a GPU when liger-kernel is"
            " installed) | true | false."
        },
    )
    assistant_only_loss: bool = field(
        default=True, metadata={"help": "Loss on assistant turns only (the template's {% generation %} blocks)."}
    )

    # --- checkpoints, evaluation, logging ---
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N optimizer steps (> 0)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (>= 1)."})
    eval_steps: int = field(
        default=0,
        metadata={
            "help": "Evaluate every N steps; 0: every save_steps when keep_best, else at the end of each epoch. With "
            "keep_best a checkpoint is saved at every evaluation: this then sets the checkpoint interval too."
        },
    )
    keep_best: bool = field(
        default=True,
        metadata={
            "help": "With an eval split: checkpoint at every evaluation and hand on the adapter of the step with the "
            "lowest eval loss, not the last step's (training_summary.json's best_checkpoint says which)."
        },
    )
    early_stopping_patience: int = field(
        default=0,
        metadata={
            "help": "With keep_best: stop when the eval loss has not improved for this many evaluations in a row "
            "(>= 0; 0: off); training_summary.json's early_stopping says how many steps it saved."
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Print a metrics line every N steps (> 0)."})

    # --- devices ---
    gpu_memory_limit_gb: float = field(
        default=0.0,
        metadata={
            "help": "Cap this process's GPU memory at this many GiB and size auto batches for it (0: the whole GPU):"
            " a share of a GPU, or a large GPU standing in for a smaller one."
        },
    )
    nproc_per_node: str = field(
        default="auto",
        metadata={
            "help": "Data-parallel processes on this instance: auto (one per visible GPU) or an integer"
            " (on a CPU: that many gloo processes)."
        },
    )

    def __post_init__(self) -> None:
        # Python callers may pass booleans; the hyperparameters file passes strings.
        self.liger_kernels = str(self.liger_kernels).strip().lower()
        self.gradient_checkpointing = str(self.gradient_checkpointing).strip().lower()
        checks: list[tuple[bool, str, str]] = [
            (self.lora_r > 0, "lora_r", "> 0"),
            (self.lora_alpha > 0, "lora_alpha", "> 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)"),
            (bool(self.lora_target_modules.strip()), "lora_target_modules", "non-empty"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "> 0"),
            (self.max_steps > 0 or self.max_steps == -1, "max_steps", "> 0 or -1"),
            (self.max_steps > 0 or self.num_train_epochs > 0, "num_train_epochs", "> 0 (or set max_steps)"),
            (self.per_device_batch_size >= 0, "per_device_batch_size", ">= 1, or 0 (auto)"),
            (self.gradient_accumulation_steps >= 0, "gradient_accumulation_steps", ">= 1, or 0 (auto)"),
            (self.gpu_memory_limit_gb >= 0, "gpu_memory_limit_gb", ">= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.max_grad_norm > 0, "max_grad_norm", "> 0"),
            (self.max_seq_length >= 8, "max_seq_length", ">= 8"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
            (self.liger_kernels in AUTO_SWITCHES, "liger_kernels", f"one of {', '.join(AUTO_SWITCHES)}"),
            (
                self.gradient_checkpointing in AUTO_SWITCHES,
                "gradient_checkpointing",
                f"one of {', '.join(AUTO_SWITCHES)}",
            ),
            (self.save_steps > 0, "save_steps", "> 0"),
            (self.save_total_limit >= 1, "save_total_limit", ">= 1"),
            (self.eval_steps >= 0, "eval_steps", ">= 0"),
            (self.early_stopping_patience >= 0, "early_stopping_patience", ">= 0 (0: off)"),
            (
                not self.early_stopping_patience or self.keep_best,
                "early_stopping_patience",
                "0 unless keep_best (early stopping hands on the best checkpoint, not the last)",
            ),
            (self.logging_steps > 0, "logging_steps", "> 0"),
            (
                self.nproc_per_node == "auto" or (self.nproc_per_node.isdigit() and int(self.nproc_per_node) >= 1),
                "nproc_per_node",
                "auto or an integer >= 1",
            ),
        ]
        jobkit.check_config(self, checks)
        if self.qlora:
            _require_gpu_package("qlora=true", "bitsandbytes 4-bit", "use qlora=false", "bitsandbytes", "bitsandbytes")
        if self.liger_kernels == "true":
            _require_gpu_package("liger_kernels=true", "Triton kernels", "use auto", "liger-kernel", "liger_kernel")
        if self.attn_implementation == varlen_attention.NAME:
            if not (self.packing or self.padding_free):
                raise ConfigError(
                    f"attn_implementation={varlen_attention.NAME} needs padding-free batches: set packing=true or"
                    " padding_free=true, or use attn_implementation=sdpa"
                )
            if not varlen_attention.available():
                raise ConfigError(
                    f"attn_implementation={varlen_attention.NAME} needs a CUDA GPU and torch >= 2.10; use auto or sdpa"
                )

    def target_modules(self) -> str | list[str]:
        value = self.lora_target_modules.strip()
        return value if value == "all-linear" else [name.strip() for name in value.split(",") if name.strip()]

    def processes(self, gpus: int) -> int:
        """How many data-parallel processes to run on this instance with `gpus` GPUs (nproc_per_node resolved)."""
        if self.nproc_per_node == "auto":
            return max(gpus, 1)
        count = int(self.nproc_per_node)
        if gpus and count > gpus:
            raise ConfigError(f"nproc_per_node must be at most the {gpus} visible GPU(s), got {count}")
        return count


def _require_gpu_package(setting: str, kernels: str, way_out: str, package: str, module: str) -> None:
    """A setting that needs a CUDA GPU and a GPU-only package: refused up front, saying which is missing."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{setting} needs a CUDA GPU ({kernels}); this machine has none: {way_out}")
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{setting} needs {package}, which is not installed in this image")


def gpu_memory_bytes(cfg: TrainConfig, cuda: bool) -> int | None:
    """This rank's GPU memory, capped (and the cap enforced) by gpu_memory_limit_gb; None on a CPU."""
    if not cuda:
        return None
    import torch

    device = int(os.environ.get("LOCAL_RANK", "0"))
    total = int(torch.cuda.get_device_properties(device).total_memory)
    if not cfg.gpu_memory_limit_gb:
        return total
    cap = min(total, int(cfg.gpu_memory_limit_gb * 2**30))
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    return cap


def resolve_batch(cfg: TrainConfig, model: Any, cuda: bool) -> batch_plan.BatchPlan:
    """Settle per_device_batch_size, gradient_accumulation_steps and gradient_checkpointing in `cfg` (so the summary
    and a failure's reason show what ran) for this model and GPU; print the plan."""
    config = model.config
    shape = None
    if all(hasattr(config, name) for name in ("num_hidden_layers", "hidden_size")):
        shape = batch_plan.ModelShape(
            layers=int(config.num_hidden_layers),
            hidden=int(config.hidden_size),
            intermediate=int(getattr(config, "intermediate_size", None) or 4 * config.hidden_size),
            weight_bytes=sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
        )
    plan = batch_plan.plan(
        per_device_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        qlora=cfg.qlora,
        seq_len=cfg.max_seq_length,
        shape=shape,
        gpu_memory_bytes=gpu_memory_bytes(cfg, cuda),
    )
    cfg.per_device_batch_size = plan.per_device_batch_size
    cfg.gradient_accumulation_steps = plan.gradient_accumulation_steps
    cfg.gradient_checkpointing = "true" if plan.gradient_checkpointing else "false"
    if rank_and_world_size()[0] == 0:
        print(f"batch: {plan.describe()}", flush=True)
    return plan


def resolve_precision(precision: str, cuda: bool) -> str:
    """precision=auto resolved: bf16 where the GPU supports it, else fp32; half precision needs a GPU."""
    import torch

    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise ConfigError(f"precision={precision} needs a GPU here; use precision=auto or fp32 on a CPU")
    return precision


def keep_lora_inputs_in_half_precision(model: Any) -> None:
    """PEFT keeps the adapter weights in fp32 and casts each LoRA layer's input to fp32, then autocast casts it back
    for the matmul: two copies of every projection's input per step, for a matmul autocast runs in bf16 anyway. With
    the casts off the fp32 weights stay the optimizer's master copy (7B on an H100: 1.07x the tokens/s, 2 GB less)."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


def choose_attention(cfg: TrainConfig, cuda: bool, model_config: Any) -> str:
    """The attention implementation to load the model with (attn_implementation resolved)."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if not cuda:
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    padding_free = cfg.packing or cfg.padding_free
    if padding_free and varlen_attention.available():
        reason = varlen_attention.usable_for(model_config, cfg.max_seq_length)
        if reason is None:
            return varlen_attention.NAME
        print(f"attention: sdpa, not {varlen_attention.NAME}: {reason}", flush=True)
    return "sdpa"


def use_liger(cfg: TrainConfig, cuda: bool) -> bool:
    if cfg.liger_kernels == "auto":
        return cuda and importlib.util.find_spec("liger_kernel") is not None
    return cfg.liger_kernels == "true"


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


# ---------------------------------------------------------------------------------------------------------------------
# Data-parallel ranks


def is_distributed_worker() -> bool:
    """Whether this process is already a rank of a torchrun launch (it must train, not launch)."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def rank_and_world_size() -> tuple[int, int]:
    """This process's (rank, world size) as torchrun sets them; (0, 1) in a single-process run."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _distributed() -> Any:
    """torch.distributed when a process group of more than one rank is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _any_rank(flag: bool, group: Any) -> bool:
    """True on every rank if it is True on any (a no-op in a single process)."""
    dist = _distributed()
    if dist is None:
        return flag
    import torch

    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def _gather_floats(value: float) -> list[float]:
    """`value` of every rank, by rank ([value] in a single process)."""
    dist = _distributed()
    if dist is None:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [float(v) for v in values]


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
    return [_metrics_callback(summary), _checkpoint_callback(stop)]


def _metrics_callback(summary: dict[str, Any]) -> Any:
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Prints `name=value;` lines for SageMaker MetricDefinitions, records the curve, stops on NaN."""

        def __init__(self) -> None:
            self.last: tuple[float, int] | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            # The Trainer logs the same values on every rank: the loss averaged over all ranks' tokens, the tokens
            # seen summed over the ranks. Every rank records them (and stops on NaN); rank 0 alone prints them.
            now, tokens = time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0)
            fields = _metric_fields(logs or {}, state.global_step)
            if "train_loss" in fields:
                fields.update(_throughput(self.last, now, tokens))
                self.last = (now, tokens)
                summary["loss_curve"].append({"step": state.global_step, "epoch": state.epoch, **fields})
            if "eval_loss" in fields:
                summary["eval_curve"].append({"step": state.global_step, "eval_loss": fields["eval_loss"]})
            if fields and state.is_world_process_zero:
                fields["gpu_memory_gb"] = jobkit.peak_memory_gb(True) if _cuda() else 0.0
                print(f"step={state.global_step}; " + " ".join(f"{k}={v:.6g};" for k, v in fields.items()), flush=True)

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.last = (time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0))

    return MetricsCallback()


def _checkpoint_callback(stop: dict[str, bool]) -> Any:
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        """Marks each finished checkpoint as complete; on SIGTERM saves one and stops.

        With several ranks, the SIGTERM flag is or-ed across them after every step (one int over gloo) so that all
        stop after the same step and write one checkpoint together, and the marker waits for every rank's files."""

        def __init__(self) -> None:
            self.group: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            dist = _distributed()
            if dist is not None and dist.get_backend() != "gloo":
                self.group = dist.new_group(backend="gloo")  # a CPU flag: no GPU sync per step

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            stop["sigterm"] = _any_rank(stop["sigterm"], self.group)
            if stop["sigterm"]:  # spot interruption: checkpoint now (no evaluation first: time is short), then stop
                control.should_save = True
                control.should_evaluate = False
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            dist = _distributed()
            if dist is not None:
                dist.barrier(group=self.group)  # every rank's RNG state is on disk
            if args.should_save:
                done = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_COMPLETE
                if done.parent.is_dir():
                    done.write_text(str(state.global_step))

    return CheckpointCallback()


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------------------------------
# Training


def build_trainer(
    cfg: TrainConfig, extra_callbacks: list[Any] | None = None, resuming: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The SFTTrainer for `cfg` and the run's context (summary being filled, SIGTERM flag, data sizes, precision);
    ``resuming``: training continues from a checkpoint (the base model's step-0 evaluation is not repeated)."""
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
    precision = resolve_precision(cfg.precision, cuda)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]

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
    model_config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    attn = choose_attention(cfg, cuda, model_config)
    if attn == varlen_attention.NAME:
        varlen_attention.register()

    _, world_size = rank_and_world_size()
    if world_size > 1 and not cuda:
        # accelerate names a CPU rank's device "cpu:0", which torch.load cannot map a checkpoint's optimizer state to
        # on resume ("don't know how to restore data location ... cpu:0"); "cpu" works.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    quantization, device_map = None, None
    if cfg.qlora:
        if world_size > 1:  # a 4-bit model cannot be moved after loading: load each rank's copy on its own GPU
            device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
        quantization = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        config=model_config,
        dtype=dtype,
        attn_implementation=attn,
        quantization_config=quantization,
        device_map=device_map,
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    )
    model.config.use_cache = False  # padding-free under sdpa needs it; training never uses the cache
    plan = resolve_batch(cfg, model, cuda)

    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules(),
        bias="none",
        task_type="CAUSAL_LM",
    )
    has_eval = bool(eval_rows)
    keep_best = has_eval and cfg.keep_best
    # keep_best: a checkpoint at every evaluation, so the best evaluation always has one to hand on (transformers
    # keeps the best checkpoint out of save_total_limit's rotation, so it survives a restart from /opt/ml/checkpoints
    # too); at least 2 kept: with 1, the end of training deletes every checkpoint but the best, the one a SIGTERM
    # just wrote included.
    eval_steps = (cfg.eval_steps or cfg.save_steps) if keep_best else cfg.eval_steps
    liger = use_liger(cfg, cuda)
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
        # transformers 5 has no warmup_ratio: a warmup_steps in [0, 1) is read as a ratio of the total steps.
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_liger_kernel=liger,
        use_cpu=not cuda,
        # Several ranks (torchrun): the loss of each optimizer step is the mean over the tokens of all ranks, as in
        # one process; LoRA uses every adapter weight in every step, so DDP need not look for unused ones.
        ddp_backend=("nccl" if cuda else "gloo") if world_size > 1 else None,
        ddp_find_unused_parameters=False,
        average_tokens_across_devices=True,
        gradient_checkpointing=plan.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        max_length=cfg.max_seq_length if cfg.packing or not cfg.padding_free else None,
        packing=cfg.packing,
        packing_strategy="bfd",
        padding_free=cfg.padding_free,
        assistant_only_loss=cfg.assistant_only_loss,
        dataset_num_proc=None,
        save_strategy="steps",
        save_steps=eval_steps if keep_best else cfg.save_steps,
        save_total_limit=max(cfg.save_total_limit, 2) if keep_best else cfg.save_total_limit,
        save_only_model=False,
        eval_strategy=("steps" if eval_steps else "epoch") if has_eval else "no",
        eval_steps=eval_steps or None,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        eval_on_start=has_eval and not resuming,  # the base model's eval loss: the first point of the eval curve
        # early stopping's count of evaluations without improvement goes on where it was (else a resume restarts it)
        restore_callback_states_from_checkpoint=True,
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
        callbacks=_make_callbacks(cfg, summary, stop) + _early_stopping(cfg, keep_best) + list(extra_callbacks or []),
    )
    if precision in ("bf16", "fp16"):
        keep_lora_inputs_in_half_precision(trainer.model)
    context = {
        "summary": summary,
        "stop": stop,
        "train_examples": len(train_rows),
        "eval_examples": len(eval_rows),
        "precision": precision,
        "attn_implementation": attn,
        "liger_kernels": liger,
        "batch_plan": plan.describe(),
        "tokenizer": tokenizer,
        "keep_best": keep_best,
    }
    return trainer, context


def _early_stopping(cfg: TrainConfig, keep_best: bool) -> list[Any]:
    """transformers' EarlyStoppingCallback on the eval loss, when asked for and there is an eval split."""
    if not (keep_best and cfg.early_stopping_patience):
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)]


def _base_eval_loss(state: Any) -> float | None:
    """The base model's eval loss: the step-0 evaluation in the trainer's log history (restored on a resume, unlike
    this process's curve)."""
    return next((e["eval_loss"] for e in state.log_history if e.get("step") == 0 and "eval_loss" in e), None)


def best_and_stop(
    state: Any, keep_best: bool, patience: int, base_eval_loss: float | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """training_summary.json's best_checkpoint (the step handed on, its eval loss, whether it beat the base model's;
    None: no checkpoint was evaluated, or keep_best is off) and early_stopping (the steps planned, run and saved;
    None: off). The base model itself is never a candidate: the gate judges it against the candidate later."""
    best = None
    if keep_best and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.removeprefix("checkpoint-"))
        best = {
            "step": step,
            "eval_loss": state.best_metric,
            "last_step": state.global_step,
            "metric": "eval_loss",
            "beats_base": None if base_eval_loss is None else state.best_metric < base_eval_loss,
        }
    early = None
    if keep_best and patience:
        early = {
            "patience": patience,
            "planned_steps": state.max_steps,
            "stopped_at_step": state.global_step,
            "stopped_early": state.global_step < state.max_steps,
            "steps_saved": max(0, state.max_steps - state.global_step),
        }
    return best, early


def main(cfg: TrainConfig, extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train in this process, save the adapter + tokenizer + training_summary.json to cfg.output_dir (rank 0 of a
    multi-process run saves them; every rank trains); returns the summary."""
    import peft
    import torch
    import transformers
    import trl

    started = time.monotonic()
    resume = newest_complete_checkpoint(cfg.checkpoint_dir)
    trainer, context = build_trainer(cfg, extra_callbacks, resuming=resume is not None)
    summary: dict[str, Any] = context["summary"]
    stop, tokenizer = context["stop"], context["tokenizer"]
    has_eval = context["eval_examples"] > 0
    cuda = torch.cuda.is_available()

    rank, world_size = rank_and_world_size()
    where = f" (rank {rank} of {world_size})" if world_size > 1 else ""

    def on_sigterm(signum: int, frame: types.FrameType | None) -> None:
        print(f"SIGTERM received{where}: saving a checkpoint at the end of this step, then stopping", flush=True)
        stop["sigterm"] = True

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    if resume is not None and rank == 0:
        print(f"resuming from {resume}", flush=True)
    tokens_before = _tokens_seen_in(resume) if resume else 0  # read now: the checkpoint may be rotated away
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
    base_loss = _base_eval_loss(trainer.state)
    best, early = best_and_stop(trainer.state, context["keep_best"], cfg.early_stopping_patience, base_loss)
    if best is not None:  # the adapter handed on is that step's (load_best_model_at_end), its eval loss already known
        final["eval_loss"] = best["eval_loss"]
        final["base_eval_loss"] = base_loss
    elif has_eval:
        last_eval = summary["eval_curve"][-1] if summary["eval_curve"] else None
        if last_eval is None or last_eval["step"] != trainer.state.global_step:
            trainer.evaluate()  # the callback prints and records it
        final["eval_loss"] = summary["eval_curve"][-1]["eval_loss"]
        final["base_eval_loss"] = base_loss

    world_size = trainer.args.world_size
    peaks = _gather_floats(jobkit.peak_memory_gb(cuda))  # a collective: every rank, before rank 0 writes
    tokens = int(trainer.state.num_input_tokens_seen or 0)  # all ranks' tokens
    runtime = float(final.get("train_runtime") or 0.0)
    summary.update(
        {
            "final_metrics": final,
            "global_step": trainer.state.global_step,
            "best_checkpoint": best,
            "early_stopping": early,
            "tokens_seen": tokens,
            "tokens_per_second": round((tokens - tokens_before) / runtime, 3) if runtime > 0 else None,
            "world_size": world_size,
            "train_examples": context["train_examples"],
            "eval_examples": context["eval_examples"],
            "wall_time_s": round(time.monotonic() - started, 3),
            "peak_memory_gb": round(max(peaks), 4),
            "peak_memory_gb_per_rank": [round(peak, 4) for peak in peaks],
            "peak_memory_kind": "cuda_max_allocated" if cuda else "process_max_rss",
            "resumed_from": resume.name if resume else None,
            "precision": context["precision"],
            "attn_implementation": context["attn_implementation"],
            "liger_kernels": context["liger_kernels"],
            "gradient_checkpointing": cfg.gradient_checkpointing == "true",  # settled by resolve_batch
            "batch_plan": context["batch_plan"],
            "config": dataclasses.asdict(cfg),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "trl": trl.__version__,
            },
        }
    )
    if not trainer.is_world_process_zero():
        return summary  # rank 0 writes the outputs
    if best is not None or early is not None:  # for SageMaker's MetricDefinitions: the Train stage's event shows them
        ended: dict[str, float] = {"last_step": trainer.state.global_step}
        ended |= {"best_step": best["step"], "best_eval_loss": best["eval_loss"]} if best else {}
        ended |= {"steps_saved": early["steps_saved"]} if early else {}
        print(" ".join(f"{name}={value};" for name, value in ended.items()), flush=True)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _tokens_seen_in(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state.get("num_input_tokens_seen") or 0)


def failure_reason(exc: BaseException, cfg: TrainConfig | None) -> str:
    """One line for SageMaker's FailureReason: the cause and what to do."""
    if jobkit.is_out_of_memory(exc):
        where = f" at seq len {cfg.max_seq_length}, batch {cfg.per_device_batch_size}" if cfg else ""
        reason = (
            f"CUDA out of memory{where}: lower per_device_batch_size or max_seq_length"
            " (or set gradient_checkpointing=true or qlora=true)"
        )
    elif isinstance(exc, WorkerFailedError):  # already a rank's reason
        reason = str(exc)
    elif isinstance(exc, ConfigError):
        reason = f"invalid hyperparameters: {exc}"
    elif isinstance(exc, NonFiniteLossError | InterruptedError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return jobkit.one_line(reason)


# ---------------------------------------------------------------------------------------------------------------------
# Entry: one process, or a launcher of one rank per GPU


def launch(cfg: TrainConfig, argv: list[str], processes: int) -> None:
    """Run this script under torchrun with `processes` ranks on this instance and wait; raise WorkerFailedError with
    the first failing rank's reason (from the failure file, which that rank created) if any rank fails.

    SIGTERM (a spot interruption, StopTrainingJob) is forwarded to torchrun, which forwards it to the ranks and waits
    SHUTDOWN_TIMEOUT_S for their checkpoint; Ctrl-C reaches torchrun directly (same process group)."""
    failure = Path(cfg.failure_file)
    failure.unlink(missing_ok=True)  # the first rank to fail creates it
    env = dict(os.environ)
    for name, value in LAUNCH_ENV_DEFAULTS.items():
        env.setdefault(name, value)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        f"--shutdown_timeout={SHUTDOWN_TIMEOUT_S}",
        str(Path(__file__).resolve()),
        *argv,
    ]
    print(f"launching {processes} training processes: {' '.join(command)}", flush=True)
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, frame: types.FrameType | None) -> None:
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward), signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    if code == 0:
        return
    reason = failure.read_text(encoding="utf-8").strip() if failure.is_file() else ""
    if not reason:
        raise WorkerFailedError(
            f"a training process failed without writing a reason (torchrun exit code {code}): see the job's log; "
            "a process killed by signal 9 usually ran out of host memory"
        )
    raise (WorkerConfigError if reason.startswith("invalid hyperparameters:") else WorkerFailedError)(reason)


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_or_launch(cfg: TrainConfig, argv: list[str]) -> dict[str, Any] | None:
    """Train in this process (a rank already, or one process with at most one GPU), or launch nproc_per_node ranks
    on the first GPUs and wait for them. (One process that sees several GPUs is launched too: in-process, the Trainer
    would spread each batch over all of them with DataParallel.)"""
    if is_distributed_worker():
        return main(cfg)
    gpus = visible_gpus()
    processes = cfg.processes(gpus)
    if processes == 1 and gpus <= 1:
        return main(cfg)
    launch(cfg, argv, processes)
    return None


def write_first_failure(path: Path, reason: str) -> bool:
    """Create the failure file with `reason` unless a rank that failed earlier created it; whether this one did."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as file:
            file.write(reason + "\n")
    except FileExistsError:
        return False
    except OSError as write_error:
        print(f"could not write {path}: {write_error}", file=sys.stderr)
        return False
    return True


def run_rank(argv: list[str]) -> int:
    """One rank of a torchrun launch: jobkit.run_job, except that of all the ranks that fail (one raises, the others
    then lose their peer) only the first writes its reason, with its rank, to the failure file."""
    rank, world_size = rank_and_world_size()
    cfg: TrainConfig | None = None
    try:
        cfg = load_config(argv)
        main(cfg)
    except BaseException as exc:  # every failure must reach the failure file
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        traceback.print_exc()
        suffix = f" (rank {rank} of {world_size})"
        reason = failure_reason(exc, cfg)[: jobkit.FAILURE_REASON_LIMIT - len(suffix)] + suffix
        path = Path(cfg.failure_file) if cfg else jobkit.failure_file_of(argv, _default_failure_file())
        first = write_first_failure(path, reason)
        print(f"training failed: {reason}{'' if first else ' (another rank failed first)'}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _default_failure_file() -> str:
    return os.environ.get(PATH_ENV["failure_file"], SM_DEFAULTS["failure_file"])


def run(argv: list[str] | None = None) -> int:
    """Load the config, train (here or in one rank per GPU); on failure write the reason to the failure file and
    return 1 (2: bad config)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if is_distributed_worker():
        return run_rank(argv)
    return jobkit.run_job(
        argv,
        load_config=load_config,
        main=lambda cfg: train_or_launch(cfg, argv),
        failure_reason=failure_reason,
        default_failure_file=_default_failure_file(),
        what="training",
    )


if __name__ == "__main__":
    sys.exit(run())
