"""Merge a LoRA adapter into its base model under the SageMaker Processing contract (the Merge stage's entrypoint).

SageMaker Processing mounts the inputs under /opt/ml/processing/input/{model,adapter,eval} (the base model's
full-precision safetensors + tokenizer, the Train stage's adapter directory, the eval split as chat JSONL) and
uploads /opt/ml/processing/output/merged; a one-line cause of any failure goes to the failure file
(/opt/ml/output/message by default: SageMaker Processing reports it as the job's ExitMessage; the job exits
non-zero). The adapter input may be the training job's `model.tar.gz` as uploaded (it is unpacked safely first).
Never onto 4-bit weights: a QLoRA adapter is merged onto the original full-precision base it was trained against,
and the report records that.

Two methods (`method`; `auto`, the default, streams when the base is sharded safetensors and the adapter is plain
LoRA, else merges in memory; the report's `method` and `method_reason` say which ran and why):

- `streaming` (containers/merge/streaming.py): the base's safetensors files are read one tensor at a time; each
  weight a LoRA module targets becomes W + scaling * (B @ A) in fp32 (PEFT's own mapping and scaling: rslora,
  rank_pattern / alpha_pattern, fan_in_fan_out; modules_to_save replace base tensors), is cast to `dtype` and written
  into an output file of the same name (same shard layout, a new model.safetensors.index.json; `max_shard_size` is
  not used). The merge itself holds one tensor (in fp32 while merging) plus the adapter: the report's
  `phases.merge.peak_host_rss_gb` (0.59 GiB, torch included, for a 1B model on a CPU; bench/merge.py measures 7B).
  DoRA and other features whose merge is not W + s * B @ A are refused with the reason (auto merges those in memory).
  Then the verification, one model at a time: (1) base+adapter (PEFT) loaded in the verification precision gives
  the reference logits, and every tensor the adapter changes is compared with PEFT's own merge of it
  (base_layer.weight + get_delta_weight(): within one rounding of the output dtype; this is the sharp check); (2) the
  written model, loaded in plain transformers in that precision, gives logits that must match the reference within
  `tolerance` (0: by `dtype`, as the shipped weights are rounded to it). The verification precision is
  `verify_precision`: `auto`/`dtype` (default: the output dtype, about 2 bytes per parameter, 14.5 GB for 7B in bf16;
  slow on CPUs without native bf16 matmuls) or `fp32` (about 4 bytes per parameter, 29 GB for 7B: less rounding
  noise in the logits). So the job's peak is the verification's, not the merge's: about one model in `dtype`.
  `verify_prompts=0` skips the verification (the report says so): only for a base too large for that.
- `in_memory`: loads the base (in fp32 by default, `merge_precision`, so that the check is sharp; the output is cast
  to `dtype`, bf16 by default), applies the adapter with PEFT, computes the base+adapter logits on up to
  `verify_prompts` eval conversations, `merge_and_unload()`, checks the merged model's logits against them (max abs
  diff <= `tolerance`, else the job fails with the numbers), writes sharded safetensors (`max_shard_size`), reloads
  the output with plain transformers (no PEFT) and checks it again. Peak memory: the whole base in `merge_precision`
  and more.

Both write the tokenizer, chat template, a generation_config.json whose eos ids include the chat template's
end-of-turn token, and `merge_report.json` (method, logit diffs, time, peak memory per phase, size, Bedrock Custom
Model Import verdict with reasons).

Outside SageMaker give the paths explicitly (any field of `MergeConfig` is a `--name value` argument):

```bash
python containers/merge/merge.py \
    --model_dir /tmp/tiny-base --adapter_dir /tmp/tiny-adapter --eval_dir runs/demo/data/eval.jsonl \
    --output_dir /tmp/tiny-merged --failure_file /tmp/tiny-merge-failure --dtype fp32 --max_shard_size 200KB
```

(add `--method streaming` to stream: the base must then be safetensors whose names are the model's.)

(`containers/train/train.py`'s docstring shows how to make /tmp/tiny-base and /tmp/tiny-adapter.) On a CPU, bf16
works but is slow and its rounding is coarse; `--dtype fp32` is what the tests use.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the directory holding containers/ (the repository, /opt/program in the image)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from containers.common import jobkit
from containers.common.jobkit import END_OF_TURN_TOKENS, ConfigError, read_chat_jsonl
from containers.merge import streaming
from containers.merge.streaming import AdapterMismatchError, StreamingUnsupported

SM_DEFAULTS = {
    "model_dir": "/opt/ml/processing/input/model",
    "adapter_dir": "/opt/ml/processing/input/adapter",
    "eval_dir": "/opt/ml/processing/input/eval",
    "output_dir": "/opt/ml/processing/output/merged",
    "failure_file": jobkit.PROCESSING_FAILURE_FILE,
}
PATH_FIELDS = tuple(SM_DEFAULTS)
DTYPES = ("bf16", "fp16", "fp32")
METHODS = ("auto", "streaming", "in_memory")
# Max |merged - (base+adapter)| over the verified logits when `tolerance` is 0 ("auto"). Merging folds B@A into W and
# rounds the sum to the storage dtype once; the unmerged path rounds W@x and B@(A@x) separately, so the gap is of
# the order of the dtype's epsilon times the logits' scale (3e-5 was seen in fp32 on the tests' tiny model).
# A 7B-shaped random model merged in bf16 differed by up to 0.64 (argmax agreement 80%): that is why the default
# merge_precision is fp32, where the check is sharp, and the cast to bf16 is measured and reported, not gated.
AUTO_TOLERANCE = {"fp32": 1e-3, "fp16": 0.25, "bf16": 1.0}

# Bedrock Custom Model Import takes Hugging Face safetensors (bf16/fp16; Llama, Mistral, Mixtral, Qwen, Flan,
# GPTBigCode), as its documentation read in 2026-11; the names below are that list as transformers classes. Not
# re-checked against the AWS page from this machine: check docs.aws.amazon.com/bedrock (model-customization-import)
# before relying on a new architecture.
BEDROCK_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3ForCausalLM",
        "GPTBigCodeForCausalLM",
        "T5ForConditionalGeneration",
    }
)
BEDROCK_DTYPES = frozenset({"bfloat16", "float16"})


class MergeVerificationError(RuntimeError):
    """The merged model's logits differ from base+adapter by more than the tolerance."""


def _path_default(name: str) -> Any:
    return jobkit.path_field(SM_DEFAULTS[name])


@dataclass
class MergeConfig:
    model_dir: str = _path_default("model_dir")
    adapter_dir: str = _path_default("adapter_dir")
    eval_dir: str = _path_default("eval_dir")
    output_dir: str = _path_default("output_dir")
    failure_file: str = _path_default("failure_file")

    dtype: str = field(
        default="bf16", metadata={"help": "Weights of the merged model: bf16 (Bedrock, vLLM) | fp16 | fp32 (tests)."}
    )
    method: str = field(
        default="auto",
        metadata={
            "help": "streaming: tensor by tensor from the base's safetensors (memory: one tensor + the adapter); "
            "in_memory: PEFT merge_and_unload on the loaded base; auto: streaming when the base is sharded "
            "safetensors and the adapter plain LoRA, else in_memory."
        },
    )
    merge_precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32: load the base in fp32, merge and check there (tolerance 1e-3), then cast to dtype (2x the "
            "memory of bf16: 28 GB for 7B); same: merge in dtype (coarse tolerance: rounding, not bugs, dominates). "
            "Streaming always merges in fp32 (see verify_precision)."
        },
    )
    verify_precision: str = field(
        default="auto",
        metadata={
            "help": "Streaming: the precision its verification loads base+adapter and the written model in. auto | "
            "dtype: the output dtype (half the memory of fp32); fp32. In memory: merge_precision."
        },
    )
    max_shard_size: str = field(
        default="5GB", metadata={"help": "Largest safetensors shard, e.g. 5GB or 200KB (streaming keeps the base's)."}
    )
    verify_prompts: int = field(
        default=8,
        metadata={
            "help": "Eval conversations whose logits are compared (a built-in one if none); 0 (streaming only): no "
            "verification, for a base whose verification does not fit in memory."
        },
    )
    verify_max_tokens: int = field(default=256, metadata={"help": "Tokens per verified conversation (>= 8)."})
    tolerance: float = field(
        default=0.0,
        metadata={"help": f"Max abs logit diff allowed (> 0); 0: by dtype {AUTO_TOLERANCE}."},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available, else cpu) | cpu | cuda."})

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)} (never 4-bit: merge onto full weights)"),
            (re.fullmatch(r"\d+(\.\d+)?\s*[KMG]?i?B", self.max_shard_size.strip()) is not None, "max_shard_size",
             "a size like 5GB or 200KB"),
            (self.method in METHODS, "method", ", ".join(METHODS)),
            (self.merge_precision in ("fp32", "same"), "merge_precision", "fp32 or same"),
            (self.verify_precision in ("auto", "dtype", "fp32"), "verify_precision", "auto, dtype or fp32"),
            (self.verify_prompts >= 0, "verify_prompts", ">= 0 (0: no verification, streaming only)"),
            (self.verify_max_tokens >= 8, "verify_max_tokens", ">= 8"),
            (self.tolerance >= 0 and math.isfinite(self.tolerance), "tolerance", ">= 0 (0: automatic)"),
            (self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda"),
        ]  # fmt: skip
        jobkit.check_config(self, checks)

    def max_abs_tolerance(self) -> float:
        return self.tolerance or AUTO_TOLERANCE["fp32" if self.merge_precision == "fp32" else self.dtype]

    def streamed_tolerance(self) -> float:
        """Streaming checks the written (rounded) weights: the output dtype's tolerance."""
        return self.tolerance or AUTO_TOLERANCE[self.dtype]


def load_config(argv: list[str] | None = None) -> MergeConfig:
    """`--name value` arguments, one per MergeConfig field."""
    return jobkit.load_options(MergeConfig, argv, __doc__)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs and checks


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterMismatchError(f"cannot read the adapter's {path.name}: {exc}") from None
    if not isinstance(value, dict):
        raise AdapterMismatchError(f"the adapter's {path.name} must hold a JSON object")
    return value


def check_inputs(cfg: MergeConfig, adapter_dir: Path | None = None) -> dict[str, Any]:
    """Refuse a quantized base or an unusable adapter directory (cfg.adapter_dir, or where its model.tar.gz was
    unpacked); returns facts for the report."""
    model_dir, adapter_dir = Path(cfg.model_dir), adapter_dir or Path(cfg.adapter_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no base model in {model_dir} (config.json missing)")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}: only safetensors are loaded")
    base_config = json.loads((model_dir / "config.json").read_text())
    quantization = base_config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise ConfigError(
            f"the base model in {model_dir} is quantized (quantization_config: {method}): a LoRA/QLoRA adapter must "
            "be merged onto the original full-precision (bf16) weights of the same base, never 4-bit ones"
        )
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"no adapter in {adapter_dir} (adapter_config.json missing, and no {jobkit.MODEL_ARCHIVE} to unpack)"
        )
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"no adapter_model.safetensors in {adapter_dir}")
    adapter_config = _read_json(adapter_dir / "adapter_config.json")
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(f"adapter is {adapter_config.get('peft_type')}, only LoRA adapters are merged")
    # QLoRA: the Train stage records it in training_summary.json; bitsandbytes-trained adapters may also name it.
    summary_path = adapter_dir / "training_summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else {}
    qlora = bool(summary.get("config", {}).get("qlora")) or "bnb" in json.dumps(adapter_config).lower()
    return {
        "base_architecture": (base_config.get("architectures") or ["?"])[0],
        "adapter_rank": adapter_config.get("r"),
        "adapter_alpha": adapter_config.get("lora_alpha"),
        "adapter_base_model_name_or_path": adapter_config.get("base_model_name_or_path"),
        "adapter_trained_on_quantized_base": qlora,
        "merged_onto": "original full-precision base weights loaded in " + cfg.dtype,
    }


def _lora_module(key: str) -> tuple[str, str] | None:
    """'base_model.model.x.y.lora_A.weight' -> ('x.y', 'lora_A'); None for a non-LoRA key."""
    match = re.fullmatch(r"base_model\.model\.(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?", key)
    return (match.group(1), match.group(2)) if match else None


def _adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in adapter_model.safetensors; a NaN or infinite value is an error."""
    import torch
    from safetensors import safe_open

    tensors: dict[str, tuple[int, ...]] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # safe_open has no __iter__
            tensor = handle.get_tensor(key)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise AdapterMismatchError(f"adapter tensor {key} holds NaN or infinite values (corrupted adapter)")
            tensors[key] = tuple(tensor.shape)
    if not tensors:
        raise AdapterMismatchError("adapter_model.safetensors holds no tensors")
    return tensors


def _check_saved_module(base: Any, key: str, shape: tuple[int, ...]) -> None:
    """A modules_to_save tensor (a full copy of e.g. lm_head), or the base_layer copy that PEFT saves with an
    embedding LoRA, must match the base parameter's shape."""
    name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
    try:
        param = base.get_parameter(name)
    except AttributeError:
        raise AdapterMismatchError(f"adapter holds {name}, which the base model does not have") from None
    if tuple(param.shape) != shape:
        raise AdapterMismatchError(
            f"adapter tensor {name} has shape {list(shape)} but the base's is {list(param.shape)}: "
            "an adapter for a different base model (hidden size or vocabulary differ)"
        )


def _check_lora_module(base: Any, name: str, parts: dict[str, tuple[int, ...]]) -> int:
    """The A/B pair of one module fits the base layer; returns its rank."""
    try:
        module = base.get_submodule(name)
    except AttributeError:
        raise AdapterMismatchError(
            f"adapter targets module {name}, which the base model does not have: an adapter for a different "
            "architecture or number of layers"
        ) from None
    embedding = "lora_A" not in parts and "lora_B" not in parts
    a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    a, b = parts.get(a_name), parts.get(b_name)
    if a is None or b is None:
        raise AdapterMismatchError(f"adapter module {name} lacks its {a_name if a is None else b_name} weight")
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        raise AdapterMismatchError(f"adapter targets {name}, which is not a linear or embedding layer in the base")
    rows, cols = (int(n) for n in weight.shape)
    if type(module).__name__ == "Conv1D":  # GPT-2's Conv1D stores [in, out] (PEFT: fan_in_fan_out)
        rows, cols = cols, rows
    # Linear: weight [out, in], A [r, in], B [out, r]. Embedding: weight [num, dim], A [r, num], B [dim, r].
    want_a, want_b = ((a[0], rows), (cols, a[0])) if embedding else ((a[0], cols), (rows, a[0]))
    if len(a) != 2 or len(b) != 2 or a != want_a or b != want_b:
        raise AdapterMismatchError(
            f"adapter does not fit the base at {name}: lora A {list(a)} / B {list(b)}, the base layer needs "
            f"A [r, {want_a[1]}] / B [{want_b[0]}, r] with the same r: wrong shapes (corrupted adapter) or an "
            "adapter for a different base model (hidden size or vocabulary differ)"
        )
    return a[0]


def check_adapter_fits(base: Any, adapter_dir: Path, adapter_config: dict[str, Any]) -> int:
    """Every adapter tensor is finite and fits the base module it targets; returns the number of LoRA modules.

    Catches an adapter trained for another base (other hidden size, vocabulary, layer count) or a corrupted file
    before PEFT does, with the module and both shapes in the message.
    """
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in _adapter_shapes(adapter_dir).items():
        parsed = _lora_module(key)
        if parsed is None:
            _check_saved_module(base, key, shape)
        else:
            modules.setdefault(parsed[0], {})[parsed[1]] = shape
    ranks = {_check_lora_module(base, name, parts) for name, parts in sorted(modules.items())}
    rank = adapter_config.get("r")
    if isinstance(rank, int) and not adapter_config.get("rank_pattern") and ranks - {rank}:
        raise AdapterMismatchError(f"adapter_config.json says r={rank} but the weights have rank(s) {sorted(ranks)}")
    return len(modules)


def _check_tokenizers(base_tokenizer: Any, adapter_dir: Path) -> Any:
    """The adapter's tokenizer files (the Train stage saves them) must equal the base's; returns the one to ship."""
    from transformers import AutoTokenizer

    if not (adapter_dir / "tokenizer_config.json").is_file():
        return base_tokenizer
    adapter_tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True, trust_remote_code=False)
    base_vocab, adapter_vocab = base_tokenizer.get_vocab(), adapter_tokenizer.get_vocab()
    if base_vocab != adapter_vocab:
        raise AdapterMismatchError(
            f"the adapter was trained with a different tokenizer ({len(adapter_vocab)} tokens, the base's has "
            f"{len(base_vocab)}, {len(set(adapter_vocab.items()) ^ set(base_vocab.items()))} entries differ): "
            "an adapter for a different base model"
        )
    return adapter_tokenizer if adapter_tokenizer.chat_template else base_tokenizer


def translate_error(exc: BaseException) -> BaseException:
    """PEFT/torch errors of an adapter that does not fit, as one clear AdapterMismatchError; others unchanged."""
    text = str(exc)
    size = re.search(
        r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[^\]]*\])\)",
        text,
    )
    if size:
        return AdapterMismatchError(
            f"adapter does not fit the base: {size.group(1)} has shape {size.group(2)} in the adapter but "
            f"{size.group(3)} in the model (wrong shapes or an adapter for a different base model)"
        )
    if "Target modules" in text and "not found" in text:
        return AdapterMismatchError(f"adapter targets modules the base model does not have: {text.splitlines()[0]}")
    return exc


# ---------------------------------------------------------------------------------------------------------------------
# Logits, output, Bedrock


def render_prompts(tokenizer: Any, conversations: list[list[dict[str, Any]]], max_tokens: int) -> list[Any]:
    """Token id tensors ([1, n]) of each conversation rendered with the chat template (answers included)."""
    import torch

    if not conversations:
        conversations = [[{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there."}]]
    rendered = []
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        ids = list(ids[:max_tokens]) or [tokenizer.eos_token_id]
        rendered.append(torch.tensor([ids], dtype=torch.long))
    return rendered


def compute_logits(model: Any, prompts: list[Any], device: str) -> list[Any]:
    import torch

    out = []
    with torch.inference_mode():
        for ids in prompts:
            out.append(model(input_ids=ids.to(device), use_cache=False).logits[0].float().cpu())
    return out


def logit_diff(a: list[Any], b: list[Any]) -> dict[str, float]:
    """Max and mean abs difference over all logits, and the share of positions with the same argmax."""
    import torch

    diffs = [(x - y).abs() for x, y in zip(a, b, strict=True)]
    positions = sum(int(x.shape[0]) for x in a)
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    return {
        "max_abs": float(max(float(d.max()) for d in diffs)),
        "mean_abs": float(torch.cat([d.flatten() for d in diffs]).mean()),
        "argmax_agreement": same / positions,
        "positions": positions,
    }


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's eos id plus any known end-of-turn marker that the chat template emits and the vocab has."""
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template or ""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab and vocab[token] not in ids:
            ids.append(int(vocab[token]))
    return ids


def write_generation_config(model_dir: Path, out: Path, tokenizer: Any, model_config: Any) -> list[int]:
    """generation_config.json: the base's (if any) with eos_token_id a list including the end-of-turn ids."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:
        generation = GenerationConfig.from_model_config(model_config)
    existing = generation.eos_token_id
    eos: list[int] = [existing] if isinstance(existing, int) else list(existing or [])
    for token_id in end_of_turn_ids(tokenizer):
        if token_id not in eos:
            eos.append(token_id)
    if not eos:
        raise ValueError("no end-of-turn token: the tokenizer has no eos_token and the chat template no known marker")
    generation.eos_token_id = eos
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(out)
    return eos


def bedrock_verdict(out: Path) -> dict[str, Any]:
    """Whether the output directory fits Bedrock Custom Model Import's format, with a reason for each check."""
    reasons: list[str] = []
    ok = True
    config_path = out / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if not config:
        ok = False
        reasons.append("config.json missing")
    else:
        reasons.append("config.json present")
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture in BEDROCK_ARCHITECTURES:
        reasons.append(f"architecture {architecture} is supported")
    else:
        ok = False
        reasons.append(f"architecture {architecture} is not in the supported list {sorted(BEDROCK_ARCHITECTURES)}")
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "?")
    if dtype in BEDROCK_DTYPES:
        reasons.append(f"dtype {dtype} is supported")
    else:
        ok = False
        reasons.append(f"dtype {dtype} is not bf16/fp16 (merge with --dtype bf16)")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    if shards:
        reasons.append(f"{len(shards)} safetensors file(s)")
    else:
        ok = False
        reasons.append("no *.safetensors weights")
    if (out / "tokenizer.json").is_file() or (out / "tokenizer.model").is_file():
        reasons.append("tokenizer files present")
    else:
        ok = False
        reasons.append("no tokenizer.json / tokenizer.model")
    return {
        "compatible": ok,
        "reasons": reasons,
        "source": "the architectures and dtypes (bf16, fp16) Bedrock Custom Model Import's documentation listed in"
        " 2026-11; not re-checked against the AWS documentation since",
    }


# ---------------------------------------------------------------------------------------------------------------------
# Memory, phases, the choice of method


def host_peak_rss_gb() -> float:
    """This process's peak resident set size in GiB: Linux's VmHWM (reset by reset_host_peak; a child process does
    not inherit its parent's as getrusage's ru_maxrss can after fork + exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        pass
    return jobkit.peak_memory_gb(False)


def reset_host_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: /proc/self/clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Phases:
    """Seconds, peak host RSS and (on a GPU) peak CUDA memory allocated of each named phase of the job. The peaks are
    reset at the start of each phase (`resettable` False: they could not be, and each is the peak so far)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.results: dict[str, dict[str, float]] = {}
        self.resettable = True

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        import torch

        self.resettable = reset_host_peak() and self.resettable
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.monotonic()
        try:
            yield
        finally:
            result = {
                "seconds": round(time.monotonic() - started, 3),
                "peak_host_rss_gb": round(host_peak_rss_gb(), 4),
            }
            if self.cuda:
                result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 4)
            self.results[name] = result

    def peak(self, key: str) -> float:
        return max((r.get(key, 0.0) for r in self.results.values()), default=0.0)


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def choose_method(
    cfg: MergeConfig, adapter_dir: Path, adapter_config: dict[str, Any]
) -> tuple[str, str, streaming.Plan | None]:
    """(method, why, the streaming plan or None). method=streaming on an input it cannot stream raises
    StreamingUnsupported with the reason; auto then merges in memory. An adapter that does not fit the base raises
    AdapterMismatchError whatever the method."""
    model_dir = Path(cfg.model_dir)
    if cfg.method == "in_memory":
        return "in_memory", "method=in_memory", None
    if cfg.method == "auto" and not (model_dir / streaming.INDEX_FILE).is_file():
        return "in_memory", f"auto: the base is not sharded safetensors (no {streaming.INDEX_FILE})", None
    try:
        problems = streaming.unsupported_features(adapter_config)
        if problems:
            raise StreamingUnsupported("the adapter uses " + "; ".join(problems))
        skeleton = streaming.meta_skeleton(model_dir)
        check_adapter_fits(skeleton, adapter_dir, adapter_config)
        adapter_keys = streaming.tensor_names(adapter_dir / streaming.ADAPTER_FILE)
        plan = streaming.plan_merge(model_dir, adapter_dir, skeleton, adapter_keys)
    except StreamingUnsupported as exc:
        if cfg.method == "streaming":
            raise
        return "in_memory", f"auto: cannot stream: {exc}", None
    layout = f"{len(plan.files)} safetensors file(s)"
    return "streaming", f"{'auto' if cfg.method == 'auto' else 'method=streaming'}: {layout}, plain LoRA", plan


# ---------------------------------------------------------------------------------------------------------------------
# The merge


@dataclass
class Job:
    """What both methods share: config, inputs, device, tokenizer, phases."""

    cfg: MergeConfig
    adapter_dir: Path
    facts: dict[str, Any]
    device: str
    tokenizer: Any
    adapter_config: dict[str, Any]
    phases: Phases
    started: float

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def model_dir(self) -> Path:
        return Path(self.cfg.model_dir)

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)


def main(cfg: MergeConfig) -> dict[str, Any]:
    """Merge, verify, write cfg.output_dir (model + merge_report.json); returns the report.

    An adapter directory that holds the Train stage's `model.tar.gz` (what a training job uploads from SM_MODEL_DIR;
    Processing inputs are not unpacked) is extracted safely into a temporary directory first.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tuneplane-merge-") as scratch:
        adapter_dir, archive = jobkit.unpack_model_archive(Path(cfg.adapter_dir), Path(scratch) / "adapter")
        return _merge(cfg, adapter_dir, archive, started)


def _merge(cfg: MergeConfig, adapter_dir: Path, archive: Path | None, started: float) -> dict[str, Any]:
    from transformers import AutoTokenizer

    facts = check_inputs(cfg, adapter_dir)
    facts["adapter_archive"] = str(archive) if archive else None
    device = jobkit.resolve_device(cfg.device)
    phases = Phases(device == "cuda")
    model_dir = Path(cfg.model_dir)
    with phases.phase("prepare"):
        base_tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        tokenizer = _check_tokenizers(base_tokenizer, adapter_dir)
        if not tokenizer.chat_template:
            raise ValueError(f"the tokenizer in {model_dir} has no chat template")
        adapter_config = _read_json(adapter_dir / "adapter_config.json")
        method, reason, plan = choose_method(cfg, adapter_dir, adapter_config)
    print(f"merge method: {method} ({reason})", flush=True)
    facts.update(method=method, method_reason=reason)
    job = Job(cfg, adapter_dir, facts, device, tokenizer, adapter_config, phases, started)
    if plan is not None:
        return _merge_streaming(job, plan)
    if cfg.verify_prompts == 0:
        raise ConfigError(
            f"verify_prompts=0 (no verification) is for the streaming method only; this merge runs in "
            f"memory ({reason})"
        )
    return _merge_in_memory(job)


def _merge_in_memory(job: Job) -> dict[str, Any]:
    with job.phases.phase("in_memory"):
        report = _in_memory(job)
    report.update(_report_tail(job))
    report["phases"] = job.phases.results
    report["load_seconds"] = round(report.pop("loaded_at") - job.started, 3)
    return _finish(job, report)


def _in_memory(job: Job) -> dict[str, Any]:
    """Load in fp32 (merge_precision), PEFT merge_and_unload, check, cast, save, reload and check again."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, device, tokenizer, model_dir, out = job.cfg, job.device, job.tokenizer, job.model_dir, job.out
    dtype = jobkit.torch_dtype(cfg.dtype)
    work_dtype = torch.float32 if cfg.merge_precision == "fp32" else dtype
    base: Any = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=work_dtype,
        device_map=device,
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    )
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        raise ConfigError("the base loaded quantized: merge needs the original full-precision weights")
    lora_modules = check_adapter_fits(base, job.adapter_dir, job.adapter_config)
    base.eval()
    loaded_at = time.monotonic()
    try:
        model = PeftModel.from_pretrained(base, job.adapter_dir, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise translate_error(exc) from exc

    conversations = read_chat_jsonl(cfg.eval_dir, cfg.verify_prompts)
    prompts = render_prompts(tokenizer, conversations, cfg.verify_max_tokens)
    reference = compute_logits(model, prompts, device)
    with model.disable_adapter():
        adapter_effect = logit_diff(compute_logits(model, prompts, device), reference)

    merge_started = time.monotonic()
    merged = model.merge_and_unload(progressbar=False, safe_merge=True)
    merge_seconds = time.monotonic() - merge_started
    del model
    tolerance = cfg.max_abs_tolerance()
    merged_diff = logit_diff(compute_logits(merged, prompts, device), reference)
    if not merged_diff["max_abs"] <= tolerance:  # NaN fails too
        raise MergeVerificationError(
            f"merged logits differ from base+adapter: max abs diff {merged_diff['max_abs']:.6g} > tolerance "
            f"{tolerance:.6g} (mean {merged_diff['mean_abs']:.3g}, argmax agreement "
            f"{merged_diff['argmax_agreement']:.4f} over {merged_diff['positions']} positions)"
        )

    # The shipped weights: the merge rounded once to dtype. Their logits are the reference for the saved files.
    cast_diff = None
    shipped = merged
    if work_dtype != dtype:
        # Parameters only: buffers such as RoPE's inv_freq stay fp32, as from_pretrained(dtype=...) leaves them.
        for param in merged.parameters():
            param.data = param.data.to(dtype)
        merged.config.dtype = dtype
    shipped_logits = compute_logits(shipped, prompts, device)
    if work_dtype != dtype:
        cast_diff = logit_diff(shipped_logits, reference)

    eos_ids = save_output(shipped, tokenizer, model_dir, out, cfg.max_shard_size)
    del merged, base, shipped
    _free(job.cuda)
    reloaded_diff = check_reload(out, dtype, device, prompts, shipped_logits, tolerance)
    return {
        **job.facts,
        "dtype": cfg.dtype,
        "device": device,
        "lora_modules": lora_modules,
        "verification": {
            "prompts": len(prompts),
            "prompts_source": "eval split" if conversations else "built-in conversation (no eval rows found)",
            "tolerance_max_abs": tolerance,
            "merge_precision": "fp32" if work_dtype == torch.float32 else cfg.dtype,
            "merged_vs_base_plus_adapter": merged_diff,
            "cast_to_dtype_vs_base_plus_adapter": cast_diff,
            "reloaded_vs_merged_in_memory": reloaded_diff,
            "adapter_effect_vs_base": adapter_effect,
            "passed": True,
        },
        "eos_token_id": eos_ids,
        "end_of_turn_token": tokenizer.eos_token,
        "loaded_at": loaded_at,
        "merge_seconds": round(merge_seconds, 3),
    }


def _merge_streaming(job: Job, plan: streaming.Plan) -> dict[str, Any]:
    """Stream the weights, write the other files, verify; on any failure the written model files are removed."""
    cfg, out = job.cfg, job.out
    fresh = not (out.exists() and any(out.iterdir()))
    load_seconds = round(time.monotonic() - job.started, 3)
    try:
        with job.phases.phase("merge"):
            streamed = streaming.stream_merge(
                job.model_dir, job.adapter_dir, out, plan, cfg.dtype, job.device, progress=_print_file
            )
            eos_ids = write_model_files(job.model_dir, out, job.tokenizer, _output_config(job.model_dir, cfg.dtype))
        verification = verify_streamed(job, plan) if cfg.verify_prompts else _skipped_verification()
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for name in [*plan.files, streaming.INDEX_FILE]:
                (out / name).unlink(missing_ok=True)
        raise
    report = {
        **job.facts,
        "merged_onto": "the original full-precision base weights, read tensor by tensor from its safetensors files "
        "and merged in fp32",
        "dtype": cfg.dtype,
        "device": job.device,
        "lora_modules": len(plan.lora),
        "modules_to_save": plan.modules_to_save,
        "replaced_tensors": len(plan.replace),
        "verification": verification,
        "streaming": {**streamed, "peak_host_rss_gb": job.phases.results["merge"]["peak_host_rss_gb"]},
        "eos_token_id": eos_ids,
        "end_of_turn_token": job.tokenizer.eos_token,
        "load_seconds": load_seconds,
        "phases": job.phases.results,
    }
    report.update(_report_tail(job), merge_seconds=job.phases.results["merge"]["seconds"])
    return _finish(job, report)


def _print_file(stats: dict[str, Any]) -> None:
    print(
        f"{stats['file']}: {stats['tensors']} tensors, {stats['lora_merged']} LoRA merged, {stats['replaced']} "
        f"replaced, {stats['bytes_written'] / 2**30:.2f} GiB in {stats['seconds']:.1f}s",
        flush=True,
    )


def _skipped_verification() -> dict[str, Any]:
    return {
        "skipped": True,
        "passed": None,
        "reason": "verify_prompts=0: the written weights were not checked against base+adapter",
    }


def verify_streamed(job: Job, plan: streaming.Plan) -> dict[str, Any]:
    """Base+adapter (PEFT) gives the reference logits and PEFT's merge of every changed tensor, which the written
    tensors must match within one rounding; then the written model's logits must match the reference within the
    output dtype's tolerance. One model in memory at a time, in dtype (verify_precision auto | dtype) or fp32."""
    import torch

    cfg = job.cfg
    verify_dtype = torch.float32 if cfg.verify_precision == "fp32" else jobkit.torch_dtype(cfg.dtype)
    conversations = read_chat_jsonl(cfg.eval_dir, cfg.verify_prompts)
    prompts = render_prompts(job.tokenizer, conversations, cfg.verify_max_tokens)
    with job.phases.phase("verify_reference"):
        reference, adapter_effect, weights = _streamed_reference(job, plan, prompts, verify_dtype)
    if not weights["passed"]:
        raise MergeVerificationError(
            f"the written weights differ from PEFT's merge: up to {weights['max_error_in_eps']:.3g} x eps of the "
            f"value (allowed 1), max abs diff {weights['max_abs']:.6g}, over {weights['tensors']} tensors"
        )
    tolerance = cfg.streamed_tolerance()
    with job.phases.phase("verify_output"):
        merged_diff = _written_model_diff(job, prompts, reference, verify_dtype)
    if not merged_diff["max_abs"] <= tolerance:  # NaN fails too
        raise MergeVerificationError(
            f"the written model's logits differ from base+adapter: max abs diff {merged_diff['max_abs']:.6g} > "
            f"tolerance {tolerance:.6g} (mean {merged_diff['mean_abs']:.3g}, argmax agreement "
            f"{merged_diff['argmax_agreement']:.4f} over {merged_diff['positions']} positions)"
        )
    return {
        "prompts": len(prompts),
        "prompts_source": "eval split" if conversations else "built-in conversation (no eval rows found)",
        "tolerance_max_abs": tolerance,
        "merge_precision": "fp32",
        "verify_precision": str(verify_dtype).removeprefix("torch."),
        "merged_vs_base_plus_adapter": merged_diff,
        "weights_vs_peft_merge": weights,
        "adapter_effect_vs_base": adapter_effect,
        "passed": True,
        "what": "merged_vs_base_plus_adapter: the written model (weights rounded to dtype) vs base+adapter, both "
        "loaded in verify_precision; weights_vs_peft_merge: each tensor the adapter changes vs PEFT's merge of it",
    }


def _streamed_reference(job: Job, plan: streaming.Plan, prompts: list[Any], dtype: Any) -> tuple[Any, Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base: Any = AutoModelForCausalLM.from_pretrained(
        job.model_dir,
        dtype=dtype,
        device_map=job.device,
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    )
    base.eval()
    try:
        model = PeftModel.from_pretrained(base, job.adapter_dir, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise translate_error(exc) from exc
    reference = compute_logits(model, prompts, job.device)
    with model.disable_adapter():
        adapter_effect = logit_diff(compute_logits(model, prompts, job.device), reference)
    weights = streaming.compare_with_peft(model, job.out, plan)
    del model, base
    _free(job.cuda)
    return reference, adapter_effect, weights


def _written_model_diff(job: Job, prompts: list[Any], reference: list[Any], dtype: Any) -> dict[str, float]:
    """The written directory loads in plain transformers (no PEFT, no adapter files), says it is `dtype` in its
    config.json, and gives logits close to the reference."""
    from transformers import AutoModelForCausalLM

    out = job.out
    if (out / "adapter_config.json").exists():
        raise RuntimeError("the output holds adapter_config.json: it would load as a PEFT adapter, not a model")
    written = json.loads((out / "config.json").read_text())
    want = str(jobkit.torch_dtype(job.cfg.dtype)).removeprefix("torch.")
    if (written.get("dtype") or written.get("torch_dtype")) != want:
        raise RuntimeError(f"the output's config.json says dtype {written.get('dtype')!r}, expected {want}")
    model: Any = AutoModelForCausalLM.from_pretrained(
        out, dtype=dtype, device_map=job.device, local_files_only=True, trust_remote_code=False
    )
    model.eval()
    diff = logit_diff(compute_logits(model, prompts, job.device), reference)
    del model
    _free(job.cuda)
    return diff


def _report_tail(job: Job) -> dict[str, Any]:
    """Sizes, times, peak memory, the Bedrock verdict, config and versions: the same for both methods."""
    import peft
    import torch
    import transformers

    out = job.out
    return {
        "shards": sorted(p.name for p in out.glob("*.safetensors")),
        "output_bytes": jobkit.directory_bytes(out),
        "wall_time_s": round(time.monotonic() - job.started, 3),
        "peak_memory_gb": job.phases.peak("peak_gpu_gb" if job.cuda else "peak_host_rss_gb"),
        "peak_memory_kind": "cuda_max_allocated" if job.cuda else "process_max_rss",
        "peak_host_rss_gb": job.phases.peak("peak_host_rss_gb"),
        "peak_memory_reset_per_phase": job.phases.resettable,
        "bedrock_custom_model_import": bedrock_verdict(out),
        "config": dataclasses.asdict(job.cfg),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }


def _finish(job: Job, report: dict[str, Any]) -> dict[str, Any]:
    """Warnings, merge_report.json, one line on stdout."""
    verification = report["verification"]
    warnings = []
    if verification.get("skipped"):
        warnings.append("verification skipped (verify_prompts=0): the merged weights were not checked")
    elif verification["adapter_effect_vs_base"]["max_abs"] == 0.0:
        warnings.append("the adapter does not change the logits (all lora_B zero?): the merge equals the base")
    if warnings:
        report["warnings"] = warnings
    (job.out / "merge_report.json").write_text(json.dumps(report, indent=2, default=str))
    diff = (verification.get("merged_vs_base_plus_adapter") or {}).get("max_abs")
    print(
        f"merged {report['lora_modules']} LoRA modules ({report['method']}) in {report['merge_seconds']:.2f}s; max "
        f"abs logit diff {diff if diff is None else f'{diff:.3g}'} (tolerance "
        f"{verification.get('tolerance_max_abs')}); peak host RSS {report['peak_host_rss_gb']:.2f} GiB; Bedrock "
        f"compatible: {report['bedrock_custom_model_import']['compatible']}",
        flush=True,
    )
    return report


def _output_config(model_dir: Path, dtype_name: str) -> Any:
    """The base's config as the merged model's: dtype set, use_cache on (as save_pretrained of the merge writes it)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    config.dtype = jobkit.torch_dtype(dtype_name)
    config.use_cache = True
    return config


def write_model_files(model_dir: Path, out: Path, tokenizer: Any, config: Any) -> list[int]:
    """config.json, tokenizer, chat template, generation_config.json next to the weights; returns the eos ids."""
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    return _write_tokenizer_files(model_dir, out, tokenizer, config)


def _write_tokenizer_files(model_dir: Path, out: Path, tokenizer: Any, config: Any) -> list[int]:
    tokenizer.save_pretrained(out)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    if not (out / "chat_template.jinja").is_file() and not tokenizer_config.get("chat_template"):
        (out / "chat_template.jinja").write_text(tokenizer.chat_template)
    return write_generation_config(model_dir, out, tokenizer, config)


def save_output(model: Any, tokenizer: Any, model_dir: Path, out: Path, max_shard_size: str) -> list[int]:
    """Sharded safetensors, tokenizer, chat template, generation_config.json; returns the eos ids written."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(out, max_shard_size=max_shard_size.replace(" ", ""))
    return _write_tokenizer_files(model_dir, out, tokenizer, model.config)


def check_reload(
    out: Path, dtype: Any, device: str, prompts: list[Any], expected: list[Any], tolerance: float
) -> dict[str, float]:
    """The output loads in plain transformers (no PEFT, no adapter files) in `dtype` and gives the same logits."""
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").exists():
        raise RuntimeError("the output holds adapter_config.json: it would load as a PEFT adapter, not a model")
    reloaded: Any = AutoModelForCausalLM.from_pretrained(
        out, device_map=device, local_files_only=True, trust_remote_code=False
    )
    if reloaded.dtype != dtype:
        raise RuntimeError(f"the output reloads as {reloaded.dtype}, expected {dtype}")
    reloaded.eval()
    diff = logit_diff(compute_logits(reloaded, prompts, device), expected)
    del reloaded
    gc.collect()
    if not diff["max_abs"] <= tolerance:
        raise MergeVerificationError(
            f"the saved model's logits differ from the merged model's in memory: max abs diff "
            f"{diff['max_abs']:.6g} > tolerance {tolerance:.6g}"
        )
    return diff


def failure_reason(exc: BaseException, cfg: MergeConfig | None = None) -> str:
    """One line for SageMaker's ExitMessage: the cause and what to do."""
    if jobkit.is_out_of_memory(exc):
        reason = "CUDA out of memory while merging: use a larger GPU instance or device=cpu on a 64 GB+ instance"
    elif isinstance(exc, StreamingUnsupported):
        reason = f"cannot merge by streaming: {exc} (method=auto or in_memory merges it in memory with PEFT)"
    elif isinstance(exc, ConfigError):
        reason = f"invalid merge request: {exc}"
    elif isinstance(exc, AdapterMismatchError | MergeVerificationError | jobkit.UnsafeArchiveError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return jobkit.one_line(reason)


def run(argv: list[str] | None = None) -> int:
    """Load the config, merge; on failure write the reason to the failure file and return 1 (2: bad config)."""
    return jobkit.run_job(
        argv,
        load_config=load_config,
        main=main,
        failure_reason=failure_reason,
        default_failure_file=SM_DEFAULTS["failure_file"],
        what="merge",
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(run())
