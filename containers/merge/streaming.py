"""The streaming LoRA merge: the base's safetensors files are read one tensor at a time, every weight that a LoRA
module targets becomes W + scaling * (B @ A) in fp32, every floating tensor is cast to the output dtype and written
straight into an output file of the same name and layout. The merge holds one base tensor plus the adapter, never the
model (a 7B Mistral's largest tensor, the 32000x4096 embedding, is 0.5 GB in fp32).

Which base weight each adapter module lands on, its scaling (lora_alpha / r, or lora_alpha / sqrt(r) with
use_rslora; rank_pattern / alpha_pattern) and its orientation (fan_in_fan_out: GPT-2's Conv1D stores [in, out];
embeddings: (B @ A)^T) are PEFT's own: the adapter config is injected into an empty (meta-device) copy of the base
model, as PeftModel.from_pretrained injects it, and the LoRA layers that PEFT creates are read back. The arithmetic
is PEFT's merge (`W + transpose(B @ A, fan_in_fan_out) * scaling`, fp32). Adapter tensors that are not LoRA weights
replace base tensors: modules_to_save (e.g. a full lm_head) and the `base_layer` copy that PEFT saves with a LoRA on
an embedding.

Refused (StreamingUnsupported, a ConfigError: method=auto then merges in memory with PEFT instead): DoRA and other
LoRA variants, LoRA bias, trained base biases, trainable tokens, inits that rewrite the base at injection (PiSSA,
OLoRA, CorDA, LoftQ, LoRA-GA), LoRA on layers other than Linear / Conv1D / Embedding, targets whose weight is tied to
another (the checkpoint stores one of them), checkpoints whose tensor names are not the model's, fp8 weights.

Reads are `safe_open` per tensor (the file's mapping, and the pages read through it, go away with each tensor);
writes use a small safetensors writer that puts the header first (sizes are known from the input's header) and then
each tensor's bytes as it comes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers.common.jobkit import ConfigError, torch_dtype

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_PREFIX = "base_model.model."
ADAPTER_NAME = "default"
LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight|(?P<emodule>.+)\.(?P<epart>lora_embedding_[AB])"
)

# safetensors dtype names: bytes per element. Floating ones are cast to the output dtype; fp8 is refused.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
OUTPUT_DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}

# LoraConfig fields that streaming honours (through PEFT's injection) or that do not change the merged weights.
HANDLED_FIELDS = frozenset(
    """task_type peft_type auto_mapping peft_version base_model_name_or_path revision inference_mode r lora_alpha
    use_rslora rank_pattern alpha_pattern target_modules exclude_modules layers_to_transform layers_pattern
    fan_in_fan_out modules_to_save lora_dropout runtime_config megatron_core qalora_group_size
    ensure_weight_tying""".split()
)
# init_lora_weights values that only initialise A and B; pissa*, olora, corda, loftq and lora_ga rewrite the base.
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


class StreamingUnsupported(ConfigError):
    """The adapter or the checkpoint needs more than W + scaling * B @ A per stored tensor: merge in memory."""


class AdapterMismatchError(ValueError):
    """The adapter does not fit the base model (wrong shapes, missing modules, other tokenizer, non-finite values)."""


# ---------------------------------------------------------------------------------------------------------------------
# What can be streamed


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def unsupported_features(adapter_config: dict[str, Any]) -> list[str]:
    """The adapter_config.json settings that streaming cannot merge exactly, each with why; [] for plain LoRA."""
    from peft import LoraConfig

    defaults = {f.name: _field_default(f) for f in dataclasses.fields(LoraConfig)}
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type={adapter_config.get('peft_type')!r} (only LoRA)")
    if adapter_config.get("use_dora"):
        problems.append("use_dora=true (DoRA rescales each merged column by its magnitude vector, not W + s*B@A)")
    init = adapter_config.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        problems.append(f"init_lora_weights={init!r} (rewrites the base weights when the adapter is injected)")
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"bias={adapter_config.get('bias')!r} (the adapter trained base biases)")
    for name, value in sorted(adapter_config.items()):
        if name in HANDLED_FIELDS or name in ("use_dora", "init_lora_weights", "bias"):
            continue
        if value in (None, False, {}, []) or value == defaults.get(name):
            continue
        problems.append(f"{name}={value!r}")
    return problems


def checkpoint_files(model_dir: Path) -> tuple[list[str], dict[str, str], bool]:
    """(file names in order, tensor name -> file, sharded?) of the base's safetensors weights."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        if not weight_map:
            raise StreamingUnsupported(f"{index} has no weight_map")
        missing = sorted(name for name in set(weight_map.values()) if not (model_dir / name).is_file())
        if missing:
            raise StreamingUnsupported(f"{INDEX_FILE} lists {missing[0]}, which is not in {model_dir}")
        return sorted(set(weight_map.values())), dict(weight_map), True
    if (model_dir / SINGLE_FILE).is_file():
        return [SINGLE_FILE], {key: SINGLE_FILE for key in _file_header(model_dir / SINGLE_FILE)[0]}, False
    raise StreamingUnsupported(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}")


def stored_dtypes(model_dir: Path, files: list[str]) -> dict[str, str]:
    """tensor name -> its safetensors dtype (F32, BF16, ...) in the base's files (headers only)."""
    return {key: dtype for name in files for key, (dtype, _) in _file_header(model_dir / name)[0].items()}


def tensor_names(path: Path) -> list[str]:
    """The tensor names of one safetensors file (its header only)."""
    return list(_file_header(path)[0])


def _file_header(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """{tensor: (safetensors dtype, shape)} in name order, and the file's __metadata__."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        entries = {}
        for key in handle.keys():  # safe_open has no __iter__
            tensor_slice = handle.get_slice(key)
            entries[key] = (str(tensor_slice.get_dtype()), list(tensor_slice.get_shape()))
        return entries, dict(handle.metadata() or {})


# ---------------------------------------------------------------------------------------------------------------------
# The plan: which stored tensor gets which LoRA delta or replacement


@dataclass(frozen=True)
class LoraTarget:
    module: str  # e.g. model.layers.0.self_attn.q_proj
    a_key: str  # adapter tensor names
    b_key: str
    scaling: float
    rank: int
    transpose: bool  # delta = (B @ A)^T: fan_in_fan_out (Conv1D) or an embedding


@dataclass
class Plan:
    files: list[str]
    weight_map: dict[str, str]  # stored tensor -> file
    sharded: bool
    stored_dtypes: dict[str, str] = field(default_factory=dict)  # stored tensor -> safetensors dtype in the base
    lora: dict[str, LoraTarget] = field(default_factory=dict)  # stored tensor -> its LoRA delta
    replace: dict[str, str] = field(default_factory=dict)  # stored tensor -> adapter tensor that replaces it
    modules_to_save: list[str] = field(default_factory=list)


def meta_skeleton(model_dir: Path) -> Any:
    """The base model's architecture on the meta device: names, shapes and module types, no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def tied_parameters(model: Any) -> set[str]:
    """Names of parameters that share their tensor with another name (e.g. lm_head.weight and the embedding)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {name for group in names.values() if len(group) > 1 for name in group}


def peft_layers(skeleton: Any, adapter_dir: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Inject the adapter's config into the meta skeleton as PEFT does; returns {module: LoRA layer} and
    {modules_to_save module: its parameter names}. The skeleton is modified."""
    from peft import PeftConfig, get_peft_model
    from peft.tuners.lora import Embedding, Linear, LoraLayer
    from peft.utils import ModulesToSaveWrapper

    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    peft_config.inference_mode = True
    peft_config.base_model_name_or_path = None  # where it was trained is not where it is merged: no rename warning
    model: Any = get_peft_model(skeleton, peft_config, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True)
    layers: dict[str, Any] = {}
    saved: dict[str, list[str]] = {}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            if type(module) not in (Linear, Embedding):
                raise StreamingUnsupported(
                    f"LoRA on {name} is a {type(module).__name__} layer: only Linear, Conv1D "
                    "and Embedding layers are streamed"
                )
            if module.lora_variant.get(ADAPTER_NAME) is not None or module.lora_bias.get(ADAPTER_NAME):
                raise StreamingUnsupported(f"LoRA on {name} is a LoRA variant or has a LoRA bias")
            layers[name] = module
        elif isinstance(module, ModulesToSaveWrapper):
            saved[name] = [p for p, _ in module.original_module.named_parameters()]
    return layers, saved


def _lora_parts(adapter_keys: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{module: {'A'|'B': adapter key}} of the LoRA tensors, and the other adapter keys (full tensors)."""
    parts: dict[str, dict[str, str]] = {}
    others = []
    for key in adapter_keys:
        if not key.startswith(ADAPTER_PREFIX):
            raise AdapterMismatchError(
                f"adapter tensor {key} does not start with {ADAPTER_PREFIX!r}: not a PEFT adapter"
            )
        match = LORA_KEY.fullmatch(key.removeprefix(ADAPTER_PREFIX))
        if match is None:
            others.append(key)
            continue
        module = match.group("module") or match.group("emodule")
        part = (match.group("part") or match.group("epart"))[-1]
        kind = "embedding" if match.group("epart") else "linear"
        entry = parts.setdefault(module, {"kind": kind})
        if entry["kind"] != kind or part in entry:
            raise AdapterMismatchError(f"adapter module {module} has both lora_{part} and lora_embedding_{part}")
        entry[part] = key
    return parts, others


def _lora_target(module: str, entry: dict[str, str], layer: Any) -> LoraTarget:
    from peft.tuners.lora import Embedding

    embedding = isinstance(layer, Embedding)
    if (entry["kind"] == "embedding") != embedding:
        raise AdapterMismatchError(
            f"adapter module {module} holds {entry['kind']} LoRA weights but the base layer is a "
            f"{type(layer.base_layer).__name__}"
        )
    missing = [f"lora_{p}" for p in "AB" if p not in entry]
    if missing:
        raise AdapterMismatchError(f"adapter module {module} lacks its {missing[0]} weight")
    return LoraTarget(
        module=module,
        a_key=entry["A"],
        b_key=entry["B"],
        scaling=float(layer.scaling[ADAPTER_NAME]),
        rank=int(layer.r[ADAPTER_NAME]),
        transpose=embedding or bool(getattr(layer, "fan_in_fan_out", False)),
    )


def _stored_name(name: str, plan: Plan, tied: set[str], what: str) -> str:
    if name in tied:
        raise StreamingUnsupported(
            f"{what} is {name}, which is tied to another weight (tie_word_embeddings?): "
            "the checkpoint stores one tensor for both"
        )
    if name not in plan.weight_map:
        raise StreamingUnsupported(
            f"{what} is {name}, which the base checkpoint does not store under that name "
            "(its tensor names differ from the model's)"
        )
    return name


def plan_merge(model_dir: Path, adapter_dir: Path, skeleton: Any, adapter_keys: list[str]) -> Plan:
    """Map every adapter tensor to exactly one stored base tensor, as PEFT maps it onto the model."""
    files, weight_map, sharded = checkpoint_files(model_dir)
    plan = Plan(files=files, weight_map=weight_map, sharded=sharded, stored_dtypes=stored_dtypes(model_dir, files))
    tied = tied_parameters(skeleton)
    layers, saved = peft_layers(skeleton, adapter_dir)
    parts, others = _lora_parts(adapter_keys)
    for module in sorted(parts):
        if module not in layers:
            raise AdapterMismatchError(
                f"adapter module {module} matches no base weight that the adapter's "
                "target_modules select: PEFT would not apply it"
            )
        weight = _stored_name(f"{module}.weight", plan, tied, f"the weight of adapter module {module}")
        plan.lora[weight] = _lora_target(module, parts[module], layers[module])
    unloaded = sorted(set(layers) - set(parts))
    if unloaded:
        raise AdapterMismatchError(
            f"adapter_config.json targets {unloaded[0]} ({len(unloaded)} module(s) in all) but "
            f"{ADAPTER_FILE} has no LoRA weights for it: an incomplete adapter"
        )
    for key in others:
        name = key.removeprefix(ADAPTER_PREFIX)
        module, _, param = name.rpartition(".")
        if module.endswith(".base_layer") and module.removesuffix(".base_layer") in layers:
            name = f"{module.removesuffix('.base_layer')}.{param}"  # the copy PEFT saves with an embedding LoRA
        elif module not in saved:
            raise AdapterMismatchError(
                f"adapter tensor {key} is neither a LoRA weight nor a weight of modules_to_save "
                f"({sorted(saved)}): it matches no base weight"
            )
        plan.replace[_stored_name(name, plan, tied, f"adapter tensor {key}")] = key
    plan.modules_to_save = sorted(saved)
    return plan


# ---------------------------------------------------------------------------------------------------------------------
# Reading and writing safetensors one tensor at a time


def read_tensor(path: Path, key: str) -> Any:
    """One tensor, through a mapping that is closed again at once (pages read do not pile up in RSS)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(key)


class SafetensorsWriter:
    """One safetensors file written tensor by tensor: the header (names, dtypes, shapes, offsets: all known up front)
    first, then each tensor's bytes in header order."""

    def __init__(self, path: Path, entries: list[tuple[str, str, list[int]]], metadata: dict[str, str]) -> None:
        if sys.byteorder != "little":  # pragma: no cover - safetensors is little-endian
            raise RuntimeError("the streaming merge writes raw little-endian tensors: not on this machine")
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for name, dtype, shape in entries:
            size = math.prod(shape) * DTYPE_BYTES[dtype]
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path, self.data_bytes, self._pending = path, offset, iter(entries)
        self._file = path.open("wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, tensor: Any) -> None:
        import torch

        expected = next(self._pending, None)
        if expected is None or expected[0] != name or list(tensor.shape) != expected[2]:
            raise RuntimeError(f"{self.path.name}: tensor {name} {list(tensor.shape)} is not the next one {expected}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))

    def close(self) -> None:
        self._file.close()
        if next(self._pending, None) is not None:
            raise RuntimeError(f"{self.path.name}: closed before every tensor was written")

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()


# ---------------------------------------------------------------------------------------------------------------------
# The merge


@dataclass
class Adapter:
    """The adapter's tensors: LoRA A/B in fp32 on the merge device, replacements as saved (on the CPU)."""

    lora: dict[str, Any]
    replacements: dict[str, Any]
    bytes: int

    @classmethod
    def load(cls, adapter_dir: Path, plan: Plan, device: str) -> Adapter:
        import torch
        from safetensors.torch import load_file

        tensors = load_file(str(adapter_dir / ADAPTER_FILE))
        replaced = set(plan.replace.values())
        return cls(
            lora={k: t.to(device=device, dtype=torch.float32) for k, t in tensors.items() if k not in replaced},
            replacements={k: t for k, t in tensors.items() if k in replaced},
            bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        )


def lora_delta(target: LoraTarget, adapter: Adapter) -> Any:
    """PEFT's delta weight: transpose(B @ A, fan_in_fan_out) * scaling, in fp32."""
    a, b = adapter.lora[target.a_key], adapter.lora[target.b_key]
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != target.rank or b.shape[1] != target.rank:
        raise AdapterMismatchError(
            f"adapter module {target.module}: lora A {list(a.shape)} / B {list(b.shape)} do "
            f"not have the rank r={target.rank} that its config gives it"
        )
    delta = (b @ a).mul_(target.scaling)  # in place: the same rounding as PEFT's (B @ A) * scaling
    return delta.T if target.transpose else delta


def merged_tensor(key: str, tensor: Any, plan: Plan, adapter: Adapter, dtype: Any, device: str) -> Any:
    """The output value of one stored tensor: replaced and/or W + delta (fp32), floating tensors cast to dtype."""
    import torch

    original_shape = list(tensor.shape)
    if key in plan.replace:
        tensor = adapter.replacements[plan.replace[key]]
        if list(tensor.shape) != original_shape:
            raise AdapterMismatchError(
                f"adapter tensor {plan.replace[key]} has shape {list(tensor.shape)} but the "
                f"base's {key} is {original_shape}: an adapter for a different base model"
            )
    target = plan.lora.get(key)
    if target is not None:
        delta = lora_delta(target, adapter)
        if list(delta.shape) != original_shape:
            raise AdapterMismatchError(
                f"adapter does not fit the base at {target.module}: its delta is "
                f"{list(delta.shape)}, the base weight {original_shape}"
            )
        # delta (fp32) += W: W upcast exactly inside the add, as PEFT adds delta to the fp32-loaded W (a + b == b + a)
        tensor = delta.add_(tensor.to(device=device))
        # One reduction instead of isfinite(): any NaN or inf makes the sum non-finite (real weights never overflow it)
        if not bool(torch.isfinite(tensor.sum())):
            raise AdapterMismatchError(f"the merged weight {key} holds NaN or infinite values: a broken adapter")
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _output_entries(header: dict[str, tuple[str, list[int]]], out_dtype: str, path: Path) -> list[Any]:
    entries = []
    for key, (dtype, shape) in header.items():
        if dtype not in DTYPE_BYTES:
            raise StreamingUnsupported(f"{path.name} holds {key} as {dtype}: only {sorted(DTYPE_BYTES)} are streamed")
        entries.append((key, out_dtype if dtype in FLOAT_DTYPES else dtype, shape))
    return entries


def _stream_file(src: Path, dst: Path, plan: Plan, adapter: Adapter, dtype_name: str, device: str) -> dict[str, Any]:
    started = time.monotonic()
    header, metadata = _file_header(src)
    listed = {key for key, name in plan.weight_map.items() if name == src.name}
    if set(header) != listed:
        odd = sorted(set(header) ^ listed)[0]
        raise StreamingUnsupported(f"{src.name} and {INDEX_FILE} disagree about {odd}: a broken checkpoint")
    out_dtype = OUTPUT_DTYPES[dtype_name]
    dtype = torch_dtype(dtype_name)
    counts = {"lora": 0, "replaced": 0}
    with SafetensorsWriter(dst, _output_entries(header, out_dtype, src), {**metadata, "format": "pt"}) as writer:
        for key in header:
            tensor = merged_tensor(key, read_tensor(src, key), plan, adapter, dtype, device)
            writer.write(key, tensor)
            counts["lora"] += key in plan.lora
            counts["replaced"] += key in plan.replace
            del tensor
    return {
        "file": src.name,
        "tensors": len(header),
        "lora_merged": counts["lora"],
        "replaced": counts["replaced"],
        "bytes_written": dst.stat().st_size,
        "seconds": round(time.monotonic() - started, 3),
    }


def stream_merge(
    model_dir: Path,
    adapter_dir: Path,
    out: Path,
    plan: Plan,
    dtype_name: str,
    device: str = "cpu",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write every weight file of `plan` into `out` in `dtype_name` (bf16 | fp16 | fp32; plus the index when
    sharded); returns per-file timings and sizes. Every LoRA target and replacement is applied exactly once."""
    out.mkdir(parents=True, exist_ok=True)
    adapter = Adapter.load(adapter_dir, plan, device)
    files = []
    for name in plan.files:
        files.append(_stream_file(model_dir / name, out / name, plan, adapter, dtype_name, device))
        if progress:
            progress(files[-1])
    applied = (sum(f["lora_merged"] for f in files), sum(f["replaced"] for f in files))
    if applied != (len(plan.lora), len(plan.replace)):  # pragma: no cover - each file is checked against the index
        raise AdapterMismatchError(f"{applied} LoRA merges / replacements for {len(plan.lora)} / {len(plan.replace)}")
    data_bytes = sum(_file_data_bytes(out / name) for name in plan.files)
    if plan.sharded:
        index = {"metadata": {"total_size": data_bytes}, "weight_map": dict(sorted(plan.weight_map.items()))}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return {"files": files, "adapter_bytes": adapter.bytes, "data_bytes": data_bytes}


def _file_data_bytes(path: Path) -> int:
    with path.open("rb") as handle:
        header_size = int(struct.unpack("<Q", handle.read(8))[0])
    return path.stat().st_size - 8 - header_size


# ---------------------------------------------------------------------------------------------------------------------
# The check against PEFT's own merge, layer by layer


# A tensor stored in the first dtype loads exactly into the second.
EXACT_LOADS = {"F64": ("float64",), "F32": ("float32", "float64"), "BF16": ("bfloat16", "float32", "float64"),
               "F16": ("float16", "float32", "float64")}  # fmt: skip


def _peft_expectations(name: str, module: Any) -> tuple[dict[str, tuple[Any, Any]], Any]:
    """{stored tensor: (PEFT's merged value in fp32, the base weight it started from or None)} of one module, and the
    dtype the module was loaded in; {} if the adapter does not change it."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    if isinstance(module, LoraLayer):
        layer: Any = module
        weight = layer.get_base_layer().weight
        merged = weight.float() + layer.get_delta_weight(ADAPTER_NAME).float()
        return {f"{name}.weight": (merged, weight)}, weight.dtype
    if isinstance(module, ModulesToSaveWrapper):
        params = dict(module.modules_to_save[ADAPTER_NAME].named_parameters())
        loaded = next(iter(params.values())).dtype if params else torch.float32
        return {f"{name}.{p}": (t.float(), None) for p, t in params.items()}, loaded
    return {}, torch.float32


def compare_with_peft(peft_model: Any, out: Path, plan: Plan) -> dict[str, Any]:
    """Every written tensor that the adapter changes vs what PEFT's merge gives for it, from the loaded base+adapter:
    base_layer.weight + get_delta_weight() for each LoRA layer, the saved copy for modules_to_save. Each element may
    differ by one rounding to the written dtype (eps * |expected|; a correct merge stays within half of it) plus, where
    the base weight did not load exactly (e.g. fp32 weights loaded in bf16), one rounding of it (eps * |W|); the worst
    ratio of error to that bound is `max_error_in_eps`, <= 1 passes."""
    import torch

    checked, max_abs, worst = 0, 0.0, 0.0
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for name, module in peft_model.base_model.model.named_modules():
            expected, loaded = _peft_expectations(name, module)
            for key, (want, weight) in expected.items():
                got = read_tensor(out / plan.weight_map[key], key).to(want.device)
                bound = torch.finfo(got.dtype).eps * want.abs() + tiny
                exact = str(loaded).removeprefix("torch.") in EXACT_LOADS.get(plan.stored_dtypes.get(key, ""), ())
                if weight is not None and not exact:
                    bound += torch.finfo(loaded).eps * weight.float().abs()
                err = (got.float() - want).abs()
                worst = max(worst, float((err / bound).max()))
                max_abs = max(max_abs, float(err.max()))
                checked += 1
    return {"tensors": checked, "max_abs": max_abs, "max_error_in_eps": worst, "passed": worst <= 1.0}
